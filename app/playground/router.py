"""The chat playground: one static page at `/` and its assets, shipped inside the package.

The files are read once (off the event loop) and then served from memory. Every response carries
a strict Content-Security-Policy: the page runs only our own script and style, talks only to this
origin, and model output it renders can never execute.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import anyio
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.core.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The only files served: name → media type. Nothing else under static/ is reachable.
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str


_cache: dict[str, Asset] = {}


async def load_asset(name: str) -> Asset:
    """The named allow-listed file, read on first use and cached for the life of the process."""
    asset = _cache.get(name)
    if asset is None:
        body = await anyio.Path(STATIC_DIR / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        asset = _cache[name] = Asset(body, ASSETS[name], etag)
    return asset


def asset_response(asset: Asset, request: Request) -> Response:
    # no-cache: the browser revalidates every time, so an upgraded server never runs stale JS.
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.get("/")
async def playground(request: Request) -> Response:
    """The chat playground page."""
    return asset_response(await load_asset("index.html"), request)


@router.get("/static/playground/{name}")
async def playground_asset(name: str, request: Request) -> Response:
    """One of the playground's script, style and icon files."""
    if name not in ASSETS or name == "index.html":
        raise NotFound()
    return asset_response(await load_asset(name), request)
