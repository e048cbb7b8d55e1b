"""The page scripts, bundled by esbuild (`make setup`) and served from memory.

noVNC alone is 55 ES modules; loaded one by one, a thin client spends most of its time to
first pixel walking that import graph. The bundles are one file per page, addressed with
their content digest (``?v=``) so browsers keep them without asking again, and sent
gzipped to clients that accept it.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from web.access import PUBLIC

DIST = Path(__file__).parent / "static" / "dist"
ENTRY_POINTS = ("desktop.js", "login.js", "portal.js", "helpdesk.js", "audit.js",
                "security.js", "tokens.js", "admin.js")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".map": "application/json"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    digest: str
    media_type: str


class Assets:
    """The built bundles (and their source maps), read once at start-up."""

    def __init__(self, directory: Path = DIST) -> None:
        missing = [name for name in ENTRY_POINTS if not (directory / name).is_file()]
        if missing:
            raise RuntimeError(f"the page scripts are not built ({', '.join(missing)} missing "
                               f"in {directory}): run 'make setup'")
        self._files: dict[str, Asset] = {}
        for path in sorted(directory.iterdir()):
            if path.suffix in MEDIA_TYPES and path.is_file():
                body = path.read_bytes()
                self._files[path.name] = Asset(body, gzip.compress(body, 9, mtime=0),
                                               hashlib.sha256(body).hexdigest()[:12],
                                               MEDIA_TYPES[path.suffix])

    def url(self, name: str) -> str:
        """The address of a bundle, versioned by content."""
        return f"/static/dist/{name}?v={self._files[name].digest}"

    def response(self, request: Request) -> Response:
        asset = self._files.get(request.path_params["name"])
        if asset is None:
            return Response("not found", status_code=404, media_type="text/plain")
        etag = f'"{asset.digest}"'
        headers = {"ETag": etag, "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff",
                   "Cache-Control": IMMUTABLE if request.query_params.get("v") == asset.digest
                   else REVALIDATE}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        body = asset.body
        if "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=asset.media_type, headers=headers)


def routes(assets: Assets) -> list[Route]:
    async def serve(request: Request) -> Response:
        return assets.response(request)

    serve.access = PUBLIC  # type: ignore[attr-defined]  # read by the route table test
    return [Route("/static/dist/{name}", serve, methods=["GET", "HEAD"])]
