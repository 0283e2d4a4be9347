"""The French web shell: login page, home page, static assets."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from relay.http.context import runtime, session_token
from relay.http.route import Route
from relay.policy import Action

WEB = Path(__file__).resolve().parent.parent / "web"


async def _signed_in(request: web.Request) -> bool:
    token = session_token(request)
    if not token:
        return False
    rt = runtime(request)
    idle = rt.config.accounts.session_idle_minutes * 60
    return await rt.accounts.session(token, rt.clock(), idle) is not None


def _page(name: str) -> web.FileResponse:
    return web.FileResponse(WEB / name, headers={"Content-Type": "text/html; charset=utf-8"})


async def login_page(request: web.Request) -> web.StreamResponse:
    if await _signed_in(request):
        raise web.HTTPSeeOther("/accueil")
    return _page("login.html")


async def signed_in_page(request: web.Request, name: str) -> web.StreamResponse:
    """A page of the web shell, or a redirect to the login page without a live session.

    The page's own API calls do the authorization; this only spares a blank page.
    """
    if not await _signed_in(request):
        raise web.HTTPSeeOther("/")
    return _page(name)


async def home_page(request: web.Request) -> web.StreamResponse:
    return await signed_in_page(request, "home.html")


async def journal_page(request: web.Request) -> web.StreamResponse:
    return await signed_in_page(request, "journal.html")


ROUTES = [
    Route("GET", "/", login_page, Action.PUBLIC, "Login page", "web", in_api_document=False),
    Route("GET", "/accueil", home_page, Action.PUBLIC, "Home page", "web", in_api_document=False),
    Route(
        "GET",
        "/journal",
        journal_page,
        Action.PUBLIC,
        "Audit trail page",
        "web",
        in_api_document=False,
    ),
]
STATIC_DIR = WEB / "static"
