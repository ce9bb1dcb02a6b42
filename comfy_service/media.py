"""Which files the service hands out and takes in: content types by extension, image sniffing.

Pure. Outputs are served with the content type their extension allows here, anything else as
an attachment of type application/octet-stream (a node's file is never served as HTML or
script). Uploads are accepted by their first bytes, not by what the client says they are.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class MediaType:
    content_type: str
    kind: str  # image, video, audio, model or file


# What ComfyUI's save nodes write (SaveImage, SaveAnimatedWEBP/PNG, SaveWEBM, SaveVideo,
# SaveAudio*, SaveGLB), by extension.
OUTPUT_TYPES: dict[str, MediaType] = {
    ".png": MediaType("image/png", "image"),
    ".jpg": MediaType("image/jpeg", "image"),
    ".jpeg": MediaType("image/jpeg", "image"),
    ".webp": MediaType("image/webp", "image"),
    ".gif": MediaType("image/gif", "image"),
    ".webm": MediaType("video/webm", "video"),
    ".mp4": MediaType("video/mp4", "video"),
    ".mov": MediaType("video/quicktime", "video"),
    ".flac": MediaType("audio/flac", "audio"),
    ".mp3": MediaType("audio/mpeg", "audio"),
    ".opus": MediaType("audio/ogg", "audio"),  # Opus in an Ogg container
    ".ogg": MediaType("audio/ogg", "audio"),
    ".wav": MediaType("audio/wav", "audio"),
    ".glb": MediaType("model/gltf-binary", "model"),
}


def output_type(filename: str) -> MediaType:
    return OUTPUT_TYPES.get(pathlib.PurePosixPath(filename).suffix.lower(),
                            MediaType(OCTET_STREAM, "file"))


# Input images ComfyUI's LoadImage reads, recognised by their signature: (content type, ext).
SNIFF_BYTES = 12
UPLOAD_TYPES = ("image/png", "image/jpeg", "image/webp")


def sniff_image(head: bytes) -> tuple[str, str] | None:
    """PNG, JPEG or WebP from the first SNIFF_BYTES bytes; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png", ".png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg", ".jpg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp", ".webp"
    return None
