"""POST /api/v1/uploads: an input image in, stored under a new id; the caller refers to it as
`upload:<id>` in a template's image parameter or a LoadImage input of workflow_json."""

from __future__ import annotations

import hashlib
import uuid

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from actors.tasks import utc_now
from actors.uploads import UploadRecord, input_key
from comfy_service.errors import InvalidMultipart, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from comfy_service.media import SNIFF_BYTES, UPLOAD_TYPES, sniff_image
from gateway.body import media_type, read_bounded

MULTIPART_OVERHEAD_BYTES = 64 * 1024  # boundaries and part headers around the file
FILE_FIELDS = ("image", "file")


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The file's bytes: the raw body, or the `image` (or `file`) part of a multipart form."""
    if media_type(request) != "multipart/form-data":
        return await read_bounded(request, max_bytes)
    raw = await read_bounded(request, max_bytes + MULTIPART_OVERHEAD_BYTES)

    async def replay() -> dict[str, object]:
        return {"type": "http.request", "body": raw, "more_body": False}
    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except (HTTPException, MultiPartException) as exc:
        raise InvalidMultipart(f"the multipart body cannot be read: {exc}") from exc
    try:
        part = next((form[name] for name in FILE_FIELDS if name in form), None)
        if part is None or isinstance(part, str):
            raise ValidationFailed("the form has no file", {"fields": [{
                "field": "image", "message": "send the file as the form part `image`"}]})
        data = await part.read()
    finally:
        await form.close()
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the file is larger than {max_bytes} bytes", {"limit": max_bytes})
    return data


def new_upload(data: bytes, owner: str | None) -> UploadRecord:
    """The record of a new upload, once its first bytes show an image we take (415 if not)."""
    if not data:
        raise ValidationFailed("the file is empty", {"fields": [{
            "field": "image", "message": "is empty"}]})
    sniffed = sniff_image(data[:SNIFF_BYTES])
    if sniffed is None:
        raise UnsupportedMediaType("only PNG, JPEG and WebP images can be uploaded",
                                   {"accepted": list(UPLOAD_TYPES)})
    content_type, ext = sniffed
    return UploadRecord(upload_id=uuid.uuid4().hex, owner=owner, content_type=content_type,
                        ext=ext, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                        created_at=utc_now())


def upload_key(record: UploadRecord) -> str:
    return input_key(record.upload_id, record.ext)

