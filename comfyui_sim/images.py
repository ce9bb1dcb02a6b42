"""Deterministic pictures for simulated IMAGE values, and the PNG files ComfyUI writes.

An IMAGE travels through the simulated graph as a recipe (how to draw it), not as pixels, so
sampling stays cheap; pixels are drawn only when an output node writes a picture (SaveImage,
PreviewImage here; the animated WebP and PNG savers in comfyui_sim.media).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import pathlib
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageOps, PngImagePlugin

from comfyui_sim.save_path import save_path


@dataclass(frozen=True)
class Frame:
    """One image of a batch: its size and the steps that draw it."""

    width: int
    height: int
    recipe: tuple[Any, ...]


def generated(width: int, height: int, seed: int, text: str, index: int) -> Frame:
    return Frame(width, height, (("generate", seed, text, index),))


def solid(width: int, height: int, color: int) -> Frame:
    return Frame(width, height, (("solid", color),))


def loaded(path: pathlib.Path) -> Frame:
    with Image.open(path) as img:
        width, height = img.size
    return Frame(width, height, (("file", str(path)),))


def with_step(frame: Frame, step: tuple[Any, ...], size: tuple[int, int] | None = None) -> Frame:
    width, height = size or (frame.width, frame.height)
    return Frame(width, height, frame.recipe + (step,))


def _draw_generated(width: int, height: int, seed: int, text: str, index: int) -> Image.Image:
    digest = hashlib.sha256(f"{seed}|{text}|{index}".encode()).digest()
    top = tuple(digest[0:3])
    bottom = tuple(digest[3:6])
    gradient = Image.linear_gradient("L").resize((width, height))
    img = Image.composite(Image.new("RGB", (width, height), bottom),
                          Image.new("RGB", (width, height), top), gradient)
    draw = ImageDraw.Draw(img)
    for i in range(4):
        chunk = digest[6 + i * 6: 12 + i * 6]
        x0, y0 = chunk[0] * width // 256, chunk[1] * height // 256
        radius = max(1, (chunk[2] + 32) * min(width, height) // 1024)
        draw.ellipse((x0 - radius, y0 - radius, x0 + radius, y0 + radius), fill=tuple(chunk[3:6]))
    return img


def render(frame: Frame) -> Image.Image:
    img: Image.Image | None = None
    for step in frame.recipe:
        kind = step[0]
        if kind == "generate":
            img = _draw_generated(frame.width, frame.height, *step[1:])
        elif kind == "solid":
            color = step[1]
            rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
            img = Image.new("RGB", (frame.width, frame.height), rgb)
        elif kind == "file":
            with Image.open(step[1]) as source:
                img = source.convert("RGB")
        elif kind == "invert" and img is not None:
            img = ImageOps.invert(img)
        elif kind == "blur" and img is not None:
            img = img.filter(ImageFilter.GaussianBlur(radius=step[2]))
        elif kind == "scale" and img is not None:
            img = img.resize((step[1], step[2]))
    assert img is not None, f"recipe without a source: {frame.recipe}"
    return img


@functools.cache
def tiny_png() -> bytes:
    """What every image output is with --cheap-images: one grey pixel, no text chunks."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1), (128, 128, 128)).save(out, format="PNG")
    return out.getvalue()


def save_frames(frames: list[Frame], base_dir: pathlib.Path, filename_prefix: str,
                kind: str, prompt: dict[str, Any] | None, compress_level: int = 4,
                cheap: bool = False) -> list[dict[str, str]]:
    """Write each frame as <prefix>_<counter>_.png; answer the `images` list of the UI output.
    `cheap`: the same names and answer, but each file is tiny_png(), nothing drawn."""
    where = save_path(filename_prefix, base_dir, frames[0].width, frames[0].height)
    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    results = []
    for number, frame in enumerate(frames):
        name = where.name("png", number, batch_number=number)
        if cheap:
            (where.folder / name).write_bytes(tiny_png())
        else:
            render(frame).save(where.folder / name, pnginfo=info, compress_level=compress_level)
        results.append({"filename": name, "subfolder": where.subfolder, "type": kind})
    return results


def converted_for_view(path: pathlib.Path, preview: str | None, channel: str | None,
                       ) -> tuple[bytes, str] | None:
    """The /view variants: `preview=webp;50` and `channel=a|rgb`; None means the file as is."""
    if preview:
        fmt, _, quality = preview.partition(";")
        fmt = fmt.lower() if fmt.lower() in ("webp", "jpeg") else "webp"
        with Image.open(path) as img:
            out = io.BytesIO()
            img.convert("RGB").save(out, format=fmt.upper(), quality=int(quality or 90))
        return out.getvalue(), f"image/{fmt}"
    if channel in ("a", "rgb", "rgba"):
        with Image.open(path) as img:
            if channel == "a":
                rgba = img.convert("RGBA")
                alpha = rgba.getchannel("A")
                result = Image.new("RGBA", rgba.size)
                result.putalpha(alpha)
            elif channel == "rgb":
                result = img.convert("RGB")
            else:
                result = img.convert("RGBA")
            out = io.BytesIO()
            result.save(out, format="PNG")
        return out.getvalue(), "image/png"
    return None


def jpeg_preview(seed: int, text: str, step: int, size: int = 512) -> bytes:
    out = io.BytesIO()
    _draw_generated(size, size, seed, text, step).save(out, format="JPEG", quality=95)
    return out.getvalue()
