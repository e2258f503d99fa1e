"""Serving a stored file: from the local disk, streamed from the object store, or a redirect to a presigned URL."""

from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from app import storage
from app.core.config import settings
from app.core.errors import Conflict


def stored_file_response(
    key: str, media_type: str, filename: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    """The response that downloads `key`: 307 to the bucket when FT_S3_PRESIGN_DOWNLOADS, else the bytes.

    The local backend answers with the file itself (ranges, no copy); S3 streams the object through the API.
    A key the store does not hold is a 409.
    """
    headers = dict(headers or {})
    store = storage.store()
    if isinstance(store, storage.LocalStore):
        return FileResponse(store.path(key), media_type=media_type, filename=filename, headers=headers)
    if settings.s3_presign_downloads:
        url = store.presigned_url(key, filename or key.rsplit("/", 1)[-1])
        if url is not None:
            return RedirectResponse(url, status_code=307, headers=headers)
    try:
        chunks, size = store.open_read(key)
    except FileNotFoundError:
        raise Conflict(f"{key.rsplit('/', 1)[-1]} is recorded but missing from storage (deleted meanwhile?)") from None
    headers["Content-Length"] = str(size)
    if filename:
        headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return StreamingResponse(chunks, media_type=media_type, headers=headers)
