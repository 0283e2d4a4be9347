"""The served OpenAPI document stays in step with the routes the server really has."""

from __future__ import annotations

import re

import aiohttp

from relay.http.app import all_routes


async def test_openapi_lists_exactly_the_api_routes(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    assert document["openapi"] == "3.1.0"
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = {(r.method, r.path) for r in all_routes() if r.in_api_document}
    assert documented == served
    # Every documented route answers something other than 404/405 on the live server.
    for method, path in sorted(documented):
        url = re.sub(r"\{[^}]+\}", "x", path)
        async with http.request(method, url) as answer:
            # A 404 for an unknown id is a JSON error of ours, not the router's.
            assert answer.status != 405, (method, path)
            if answer.status == 404:
                assert "{" in path, (method, path)
    for path, operations in document["paths"].items():
        for operation in operations.values():
            assert operation["responses"], path
            assert operation["x-policy-action"]


def test_operation_ids_are_unique() -> None:
    from relay.http.openapi import build_document

    document = build_document(all_routes(), "test")
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


async def test_the_guest_answer_documents_both_bodies(http: aiohttp.ClientSession) -> None:
    async with http.get("/api/openapi.json") as response:
        document = await response.json()
    content = document["paths"]["/api/guest/messages"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    files = content["multipart/form-data"]["schema"]["properties"]["files"]
    assert files["items"]["format"] == "binary"
