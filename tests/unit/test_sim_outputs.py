"""Pure parts of the simulator's output files: naming, /view types, container bytes."""

from __future__ import annotations

import mimetypes
import pathlib
import struct
import time

import pytest

from comfyui_sim import audio_files, video_files
from comfyui_sim.save_path import SavePath, expand_prefix, next_counter, save_path
from comfyui_sim.view_types import view_content_type


@pytest.mark.parametrize(("names", "expected"), [
    ([], 1),
    (["ComfyUI_00001_.png", "ComfyUI_00002_.webp"], 3),  # every extension shares the counter
    (["ComfyUI_00009_.png", "Other_00020_.png", "ComfyUIx_00030_.png"], 10),
    (["ComfyUI_7"], 8),  # digits run to the next underscore or the end: a folder counts too
    (["ComfyUI_123456_.flac"], 123457),  # more than five digits
    (["ComfyUI_abc.png", "ComfyUI_00003.png"], 1),  # unparsable digits count as 0
])
def test_the_counter_continues_after_the_highest_one_under_the_prefix(
        names: list[str], expected: int) -> None:
    assert next_counter(names, "ComfyUI", len("ComfyUI")) == expected


def test_a_prefix_ending_in_a_slash_never_finds_its_files() -> None:
    # ComfyUI measures the prefix before normalising it: "clips/" is 0 long, its name "clips"
    assert next_counter(["clips_00004_.png"], "clips", 0) == 1


def test_prefix_variables_are_expanded_like_comfyuis() -> None:
    now = time.struct_time((2026, 3, 4, 5, 6, 7, 0, 63, 0))
    assert expand_prefix("%year%-%month%-%day%/%hour%%minute%%second%_%width%x%height%",
                         640, 480, now) == "2026-03-04/050607_640x480"


def test_a_save_path_makes_its_subfolder_and_names_batches(tmp_path: pathlib.Path) -> None:
    where = save_path("video/clip_%batch_num%", tmp_path)
    assert where == SavePath(tmp_path / "video", "clip_%batch_num%", 1, "video")
    assert (tmp_path / "video").is_dir()
    assert where.name("mp4", 2, batch_number=1) == "clip_1_00003_.mp4"


def test_a_prefix_leaving_the_output_folder_is_refused(tmp_path: pathlib.Path) -> None:
    with pytest.raises(Exception, match=r"^\*\*\*\* ERROR: Saving image outside the output"):
        save_path("../elsewhere/x", tmp_path / "output")


@pytest.mark.parametrize(("name", "expected"), [
    ("a.png", "image/png"), ("a.webp", "image/webp"), ("a.webm", "video/webm"),
    ("a.mp4", "video/mp4"), ("a.mp3", "audio/mpeg"), ("a.js", "application/javascript; charset=utf-8"),
    ("a.html", "application/octet-stream"), ("a.css", "application/octet-stream"),
    ("a.unknown-ext", "application/octet-stream"),
    # decided by the host's mime.types, for the real server as for the simulator
    ("a.flac", mimetypes.guess_type("a.flac")[0] or "application/octet-stream"),
])
def test_view_sends_comfyuis_content_type(name: str, expected: str) -> None:
    assert view_content_type(name) == expected


# ffmpeg 5.1's FLAC encoder on 13230 stereo samples of silence at 44.1 kHz (0.3 s): three
# frames of 4608, 4608 and 4014 samples, each a CONSTANT subframe per channel.
FFMPEG_FLAC_FRAMES = bytes.fromhex(
    "fff85918006b000000000000108a" "fff85918016c00000000000087ff"
    "fff87918020fad590000000000006e20")


def test_flac_silence_frames_are_the_ones_ffmpeg_writes() -> None:
    data = audio_files.flac_silence(13230, 2, 44100, {"prompt": "{}"})
    assert data.endswith(FFMPEG_FLAC_FRAMES)


def test_flac_silence_declares_its_stream_and_tags() -> None:
    data = audio_files.flac_silence(45056, 2, 44100, {"prompt": '{"1": {}}'})
    assert data[:4] == b"fLaC" and data[4] == 0  # STREAMINFO first, not last
    fields = int.from_bytes(data[18:26], "big")
    assert (fields >> 44, (fields >> 41 & 7) + 1, (fields >> 36 & 31) + 1,
            fields & (1 << 36) - 1) == (44100, 2, 16, 45056)
    assert data[42] == 0x84  # the last block: a Vorbis comment
    assert b'prompt={"1": {}}' in data


def test_mp3_silence_is_an_id3_tag_then_whole_frames() -> None:
    data = audio_files.mp3_silence(45056, 2, 44100, 128, {"prompt": "{}"})
    tag_size = sum(b << (7 * (3 - n)) for n, b in enumerate(data[6:10]))
    frames = data[10 + tag_size:]
    assert data[:5] == b"ID3\x04\x00" and b"TXXX" in data[:10 + tag_size]
    assert frames[:3] == b"\xff\xfb\x90"  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz
    assert len(frames) == 40 * 417  # ceil(45056 / 1152) frames of 144 * 128000 / 44100 bytes


def _boxes(data: bytes) -> list[tuple[bytes, int]]:
    found, at = [], 0
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        found.append((kind, size))
        at += size
    return found


def test_mp4_has_ffmpegs_top_level_layout_and_one_packet_per_frame() -> None:
    packets = video_files.frame_packets(["a", "b", "c"])
    data = video_files.mp4(64, 48, 24.0, packets, {"prompt": "{}"})
    boxes = _boxes(data)
    assert [kind for kind, _ in boxes] == [b"ftyp", b"free", b"mdat", b"moov"]
    assert dict(boxes)[b"mdat"] == 8 + 3 * video_files.PACKET_BYTES
    assert b"mdtaprompt" in data


def test_matroska_starts_with_an_ebml_header_naming_its_doc_type() -> None:
    packets = video_files.frame_packets(["a", "b"])
    webm = video_files.matroska("webm", "V_VP9", 64, 48, 24.0, packets, {"prompt": "{}"})
    assert webm[:4] == bytes.fromhex("1A45DFA3") and b"\x42\x82\x84webm" in webm[:40]
    assert b"V_VP9" in webm and all(p in webm for p in packets)
