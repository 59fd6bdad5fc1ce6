"""What file answers share: content sniffing, ETags, safe headers and the links of a document.

The page and the originals are shown in the Airflow origin: an image source holding HTML or
SVG must never be rendered as a document there, hence the sniffing and the sandboxing headers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, Response

#: Headers of every file sent (originals, thumbnails, exports).
FILE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}

#: Leading bytes of the image types the API accepts and serves, with their MIME types.
_MAGIC = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def sniff_image_type(head: bytes) -> str | None:
    """The MIME type of an image from its first bytes; None when it is not a supported one."""
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    return None


def etag(*parts: Any) -> str:
    return '"' + hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:32] + '"'


def not_modified(request: Request, tag: str) -> bool:
    return tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]


def root_of(request: Request) -> str:
    """Where the app is mounted (``/imageindex`` in Airflow), for links back into it."""
    return request.scope.get("root_path", "").rstrip("/")


def links(request: Request, dataset_id: str, doc_id: str) -> dict[str, str]:
    base = f"{root_of(request)}/datasets/{dataset_id}/files/{doc_id}"
    return {"thumbnail_url": f"{base}/thumbnail", "original_url": f"{base}/original"}


def attachment(doc: dict) -> str:
    from urllib.parse import quote

    return f"attachment; filename*=UTF-8''{quote(doc.get('file_name') or 'image')}"


def file_response(path: Path, head: bytes, doc: dict, headers: dict) -> Response:
    """A local file streamed inline when it is a supported image, else as a download."""
    mime = sniff_image_type(head)
    if mime is None:
        headers["Content-Disposition"] = attachment(doc)
        mime = "application/octet-stream"
    return FileResponse(path, media_type=mime, headers=headers, content_disposition_type="inline")
