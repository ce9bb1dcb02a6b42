"""The simulator's VIDEO and AUDIO values, and the files ComfyUI's media output nodes write.

Animated WebP and PNG are real (drawn frames encoded by Pillow, with the prompt where ComfyUI
puts it); video files are real containers around placeholder packets (comfyui_sim.video_files);
audio files are real, decodable silence (comfyui_sim.audio_files). Each writer names its file
by ComfyUI's rules (comfyui_sim.save_path) and answers the UI entries for it.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin

from comfyui_sim import audio_files, images, video_files
from comfyui_sim.images import Frame
from comfyui_sim.save_path import save_path

SavedResult = dict[str, str]  # {"filename", "subfolder", "type"}: ComfyUI's FileLocator


@dataclass(frozen=True)
class AudioLatent:
    """An audio LATENT: Stable Audio's 64 channels by `length` (2048 samples each), zeros."""

    length: int
    batch: int
    seed: int | None = None  # set by a sampler, like Latent's
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Audio:
    """An AUDIO value: a waveform batch[channels][samples] at sample_rate, known by its shape."""

    batch: int
    channels: int
    samples: int
    sample_rate: int


@dataclass(frozen=True)
class Video:
    """A VIDEO made from components (CreateVideo): frames, a frame rate, maybe audio."""

    frames: tuple[Frame, ...]
    fps: float
    audio: Audio | None = None


def _result(name: str, subfolder: str, kind: str = "output") -> SavedResult:
    return {"filename": name, "subfolder": subfolder, "type": kind}


def _prompt_tags(prompt: dict[str, Any] | None) -> dict[str, str]:
    return {} if prompt is None else {"prompt": json.dumps(prompt)}


def _pictures(frames: list[Frame]) -> list[Image.Image]:
    drawn: dict[Frame, Image.Image] = {}  # a batch often repeats one frame (EmptyImage)
    for frame in frames:
        if frame not in drawn:
            drawn[frame] = images.render(frame)
    return [drawn[frame] for frame in frames]


def save_animated_webp(frames: list[Frame], output_dir: pathlib.Path, prefix: str, fps: float,
                       lossless: bool, quality: int, method: int,
                       prompt: dict[str, Any] | None) -> SavedResult:
    where = save_path(prefix, output_dir, frames[0].width, frames[0].height)
    pictures = _pictures(frames)
    exif = pictures[0].getexif()
    if prompt is not None:
        exif[0x0110] = f"prompt:{json.dumps(prompt)}"  # EXIF Model, where ComfyUI puts it
    name = where.name("webp")
    pictures[0].save(where.folder / name, save_all=True, duration=int(1000.0 / fps),
                     append_images=pictures[1:], exif=exif, lossless=lossless, quality=quality,
                     method=method)
    return _result(name, where.subfolder)


def save_animated_png(frames: list[Frame], output_dir: pathlib.Path, prefix: str, fps: float,
                      compress_level: int, prompt: dict[str, Any] | None) -> SavedResult:
    where = save_path(prefix, output_dir, frames[0].width, frames[0].height)
    pictures = _pictures(frames)
    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        # ComfyUI's private `comf` chunk after the image data, not a tEXt chunk as in SaveImage.
        info.add(b"comf", b"prompt\0" + json.dumps(prompt).encode("latin-1"), after_idat=True)
    name = where.name("png")
    pictures[0].save(where.folder / name, pnginfo=info, compress_level=compress_level,
                     save_all=True, duration=int(1000.0 / fps), append_images=pictures[1:])
    return _result(name, where.subfolder)


# Container -> (extension, Matroska DocType or None for MP4, codec written in the track).
VIDEO_CONTAINERS: dict[str, tuple[str, str | None, str]] = {
    "auto": ("mp4", None, "avc1"), "mp4": ("mp4", None, "avc1"),
    "mkv": ("mkv", "matroska", "V_MPEG4/ISO/AVC"), "webm": ("webm", "webm", "V_AV1"),
}
WEBM_CODECS = {"vp9": "V_VP9", "av1": "V_AV1"}


def save_video_file(frames: list[Frame], fps: float, output_dir: pathlib.Path, prefix: str,
                    container: str, prompt: dict[str, Any] | None,
                    codec_id: str | None = None) -> SavedResult:
    """A video file of the frames: SaveWEBM's ("webm", its codec) or SaveVideo's."""
    extension, doc_type, default_codec = VIDEO_CONTAINERS[container]
    width, height = frames[0].width, frames[0].height
    where = save_path(prefix, output_dir, width, height)
    packets = video_files.frame_packets(frames)
    tags = _prompt_tags(prompt)
    if doc_type is None:
        data = video_files.mp4(width, height, fps, packets, tags)
    else:
        data = video_files.matroska(doc_type, codec_id or default_codec, width, height, fps,
                                    packets, tags)
    name = where.name(extension)
    (where.folder / name).write_bytes(data)
    return _result(name, where.subfolder)


def save_audio(audio: Audio, base_dir: pathlib.Path, prefix: str, kind: str, extension: str,
               prompt: dict[str, Any] | None, mp3_quality: str = "V0") -> list[SavedResult]:
    """One FLAC or MP3 file per waveform of the batch, as ComfyUI's save_audio writes them."""
    where = save_path(prefix, base_dir)
    tags = _prompt_tags(prompt)
    results = []
    for number in range(audio.batch):
        if extension == "mp3":
            data = audio_files.mp3_silence(audio.samples, audio.channels, audio.sample_rate,
                                           audio_files.MP3_QUALITY_KBPS[mp3_quality], tags)
        else:
            data = audio_files.flac_silence(audio.samples, audio.channels, audio.sample_rate,
                                            tags)
        name = where.name(extension, number, batch_number=number)
        (where.folder / name).write_bytes(data)
        results.append(_result(name, where.subfolder, kind))
    return results
