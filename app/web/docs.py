"""The API docs pages, /docs (Swagger UI) and /redoc, served from installed packages: no CDN, no inline script.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, on the origin where the dashboard keeps its API key
in localStorage: whoever served those scripts could read the key. Here the scripts come from the
fastapi-offline package (mounted at /static/docs) and Swagger UI is started by our /ui/docs.js, so /docs works
under the strict Content-Security-Policy of app/core/security.py (ReDoc needs inline styles: REDOC_POLICY).
"""

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from app.core.security import PAGE_POLICY
from app.web import STATIC_DIR

DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, .css, redoc.standalone.js
# ReDoc styles itself with <style> elements it writes at run time (styled-components), which no hash can name:
# its page alone allows inline styles (and its search worker, made from a blob). Scripts stay locked to the API's
# own files, so the key is still safe. (Its footer's logo, from Redocly's CDN, is blocked and not shown.)
REDOC_POLICY = f"{PAGE_POLICY}; style-src 'self' 'unsafe-inline'; worker-src 'self' blob:"


def mount_docs(app: FastAPI) -> None:
    """`GET /docs` and `GET /redoc` (pages of our own), `/static/docs/...` the packaged Swagger UI and ReDoc."""

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> FileResponse:
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": REDOC_POLICY}
        return FileResponse(STATIC_DIR / "redoc.html", headers=headers)

    app.mount("/static/docs", StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
