"""The dashboard (`GET /ui`): one page and its script and style sheet, shipped in the package
(`dsm/api/ui/`), no build step and no third-party code. The page holds no data: it asks the node's API from
the browser (`/health/ready`, `/v1/members`, `/metrics`, `/v1/overlay`), with the token the user types into
it (kept in the tab's sessionStorage, sent as an Authorization header, never put in a URL). So these three
paths are open like the health routes, and everything they show still needs the token. A strict Content
Security Policy allows only this origin's script, style and requests, and no framing.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

#: The page's files: path -> (file in dsm/api/ui, content type).
ASSETS = {
    "/ui": ("index.html", "text/html"),
    "/ui/app.js": ("app.js", "text/javascript"),
    "/ui/app.css": ("app.css", "text/css"),
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class UiRoutes:
    """Serves the dashboard's files, read once from the package."""

    def __init__(self) -> None:
        folder = resources.files("dsm.api") / "ui"
        self._files = {
            path: ((folder / name).read_bytes(), content_type) for path, (name, content_type) in ASSETS.items()
        }

    async def serve(self, request: web.Request) -> web.Response:
        body, content_type = self._files[request.path]
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=HEADERS)
