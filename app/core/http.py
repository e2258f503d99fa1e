"""HTTP conventions the native routes share, so generic clients, gateways and caches work unaided:
`Location` on what a request created or started, `ETag` with `If-None-Match` -> 304 on what is polled,
and `Link: <...>; rel="next"` on every cursor-paged list.

An ETag here is a strong validator: a hash of the exact bytes sent, so it changes whenever any field of the
body does (a job's step, its queue position) and never otherwise. Hashing the body costs far less than the
queries that made it and needs no bookkeeping of what changed. `Cache-Control: private, no-cache`: a client
may keep a copy but revalidates it on each use, and no shared cache stores one tenant's answer.
"""

import hashlib
import json
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel

CACHE_CONTROL = "private, no-cache"
NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {"description": "Not modified: the `ETag` sent in `If-None-Match` is still current (no body)."}
}


def etag_of(body: bytes) -> str:
    """A strong entity tag for these exact bytes."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def none_match(request: Request, etag: str) -> bool:
    """Whether the request's `If-None-Match` names `etag` (weak comparison, as RFC 9110 asks of this header)."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    return etag in {tag.strip().removeprefix("W/") for tag in header.split(",")}


def conditional(
    request: Request, body: bytes, media_type: str = "application/json", headers: dict[str, str] | None = None
) -> Response:
    """`body` with its ETag; 304 with no body (and the same headers) when the client already holds it."""
    etag = etag_of(body)
    headers = {**(headers or {}), "ETag": etag, "Cache-Control": CACHE_CONTROL}
    if none_match(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def json_bytes(content: BaseModel | dict[str, Any]) -> bytes:
    """JSON as FastAPI would send it for a response model (compact, UTF-8, no NaN)."""
    data = content.model_dump(mode="json", by_alias=True) if isinstance(content, BaseModel) else content
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def conditional_json(
    request: Request, content: BaseModel | dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    """A JSON body with its ETag, or 304 (see conditional)."""
    return conditional(request, json_bytes(content), headers=headers)


def next_link(request: Request, next_cursor: str | None) -> dict[str, str]:
    """`{"Link": '<this URL with cursor=next_cursor>; rel="next"'}`, or nothing on the last page."""
    if not next_cursor:
        return {}
    return {"Link": f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'}


def link_next_page(request: Request, response: Response, next_cursor: str | None) -> None:
    """Set the `Link` header of a cursor-paged list (see next_link)."""
    response.headers.update(next_link(request, next_cursor))


def locate(request: Request, response: Response, route: str, **path_params: str) -> str:
    """Set `Location` to the absolute URL of route `route` (what a 201 created, what a 202 is polled at)."""
    url = str(request.url_for(route, **path_params))
    response.headers["Location"] = url
    return url
