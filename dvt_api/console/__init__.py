"""The operator console: static assets served at /ui, and GET /v1/whoami for its role checks.

The assets are plain ES modules and CSS shipped as package data (no build step, no CDN); every
/ui response carries a Content-Security-Policy that allows only this origin's scripts and
styles, so no inline script can run even if hostile data reached the page as markup.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from pydantic import Field
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dvt_api.auth import Principal, principal
from dvt_api.schemas import Out

STATIC = Path(__file__).with_name("static")
PREFIX = "/ui"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = ((b"content-security-policy", CSP.encode()),
           (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY"),
           # A module cached across an upgrade would talk to routes that moved: revalidate.
           (b"cache-control", b"no-cache"))

router = APIRouter(prefix="/v1", tags=["api-keys"])


class WhoAmI(Out):
    """The key a request was sent with: its id, tenant and roles."""

    key_id: str
    tenant_id: str
    roles: list[str] = Field(description="the key's roles, sorted")


@router.get("/whoami", response_model=WhoAmI, summary="The calling key's id, tenant and roles")
async def whoami(who: Principal = Depends(principal)) -> WhoAmI:
    """Any valid key may ask who it is (the console shows the buttons its roles allow)."""
    return WhoAmI(key_id=who.key_id, tenant_id=who.tenant_id,
                  roles=sorted(r.value for r in who.roles))


class _SecurityHeaders:
    """Adds the console's headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {h for h, _ in HEADERS}
                kept = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                message = {**message, "headers": [*kept, *HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI) -> None:
    """Serve the console at /ui (assets from the package) and GET /v1/whoami."""
    app.include_router(router)

    @app.get(PREFIX, include_in_schema=False)
    async def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=308)

    app.mount(PREFIX, _SecurityHeaders(StaticFiles(directory=STATIC, html=True)),
              name="console")
