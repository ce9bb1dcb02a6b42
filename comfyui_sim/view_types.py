"""The Content-Type GET /view sends for a file served as is: ComfyUI's mimetypes rules."""

from __future__ import annotations

import mimetypes
import os

# ComfyUI calls mimetypes.init() (the builtin table plus the host's mime.types files), then adds
# these two; like the real server's, the answer for a rarer type (.flac) depends on the host.
_TYPES = mimetypes.MimeTypes([path for path in mimetypes.knownfiles if os.path.isfile(path)])
_TYPES.add_type("application/javascript; charset=utf-8", ".js")
_TYPES.add_type("image/webp", ".webp")
# Served as a download instead of rendered, for safety (the real server's list).
_FORCED_DOWNLOAD = frozenset({"text/html", "text/html-sandboxed", "application/xhtml+xml",
                              "text/javascript", "text/css"})


def view_content_type(filename: str) -> str:
    content_type = _TYPES.guess_type(filename)[0] or "application/octet-stream"
    return "application/octet-stream" if content_type in _FORCED_DOWNLOAD else content_type
