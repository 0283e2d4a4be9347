"""The French teleconsultation page ``/consultation/{id}`` (patients, guests, professionals).

The page is the same for everyone and holds no data: a professional is recognised by their
session when the socket opens; a patient's join token sits in the URL fragment (``#t=``),
which the browser never sends here, and the page exchanges it with
``POST /api/consultations/{id}/join``. The page itself is therefore public.
"""

from __future__ import annotations

from aiohttp import web

from relay.http.pages import WEB
from relay.http.route import Route
from relay.policy import Action


async def consultation_page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        WEB / "consultation.html",
        headers={"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
    )


ROUTES = [
    Route(
        "GET",
        "/consultation/{id}",
        consultation_page,
        Action.PUBLIC,
        "Teleconsultation page",
        "web",
        in_api_document=False,
    )
]
