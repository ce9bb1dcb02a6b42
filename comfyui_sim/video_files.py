"""WebM/Matroska and MP4 files with real container structure but no real video stream.

ComfyUI encodes its frames with ffmpeg (VP9/AV1/H.264); the simulator has no encoder, so each
frame is stored as a short placeholder packet. The boxes and elements around them are real
(EBML header and Segment with Info, Tracks, Tags and Clusters; ISO BMFF ftyp, mdat and a moov
with one sample-table track and the prompt as an mdta key, as ffmpeg writes it with `movflags
use_metadata_tags`), so container readers (ffprobe) report the codec, size, frame count,
duration and prompt, and the size grows with the frame count; no decoder can show a picture.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

WRITING_APP = "comfyui-sim"
PACKET_BYTES = 32  # per frame: a placeholder, not a coded picture
_TIMESTAMP_SCALE_NS = 1_000_000  # Matroska timestamps in milliseconds
_CLUSTER_SPAN_MS = 30_000  # a SimpleBlock's relative timestamp is a signed 16-bit number
_EMPTY_AVCC = bytes([1, 66, 0, 30, 0xFF, 0xE0, 0])  # avcC v1, profile/level, 0 SPS, 0 PPS


def frame_packets(frame_keys: Sequence[object]) -> list[bytes]:
    """One placeholder packet per frame, derived from the frame so equal frames match."""
    return [hashlib.sha256(f"{n}|{key!r}".encode()).digest()[:PACKET_BYTES]
            for n, key in enumerate(frame_keys)]


# --- EBML (Matroska, WebM) ---------------------------------------------------------------------

def _size(length: int) -> bytes:
    for octets in range(1, 9):
        if length < (1 << (7 * octets)) - 1:  # all ones is reserved for "unknown size"
            return (length | 1 << (7 * octets)).to_bytes(octets, "big")
    raise ValueError(f"EBML element too large: {length} bytes")


def _el(element_id: int, *children: bytes) -> bytes:
    body = b"".join(children)
    return element_id.to_bytes((element_id.bit_length() + 7) // 8, "big") + _size(len(body)) + body


def _uint(element_id: int, value: int) -> bytes:
    return _el(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _float(element_id: int, value: float) -> bytes:
    return _el(element_id, struct.pack(">d", value))


def _text(element_id: int, value: str) -> bytes:
    return _el(element_id, value.encode())


def matroska(doc_type: str, codec_id: str, width: int, height: int, fps: float,
             packets: Sequence[bytes], tags: dict[str, str]) -> bytes:
    """A Matroska (`doc_type` "matroska") or WebM ("webm") file with one video track."""
    header = _el(0x1A45DFA3, _uint(0x4286, 1), _uint(0x42F7, 1), _uint(0x42F2, 4),
                 _uint(0x42F3, 8), _text(0x4282, doc_type), _uint(0x4287, 4), _uint(0x4285, 2))
    frame_ms = 1000.0 / fps
    info = _el(0x1549A966, _uint(0x2AD7B1, _TIMESTAMP_SCALE_NS), _text(0x4D80, WRITING_APP),
               _text(0x5741, WRITING_APP), _float(0x4489, frame_ms * len(packets)))
    # An H.264 track must carry its decoder configuration for readers to accept the file; an
    # empty one (baseline profile, no parameter sets) is the least that parses.
    private = [_el(0x63A2, _EMPTY_AVCC)] if codec_id == "V_MPEG4/ISO/AVC" else []
    track = _el(0xAE, _uint(0xD7, 1), _uint(0x73C5, 1), _uint(0x9C, 0), _text(0x86, codec_id),
                *private, _uint(0x83, 1), _uint(0x23E383, round(1_000_000 * frame_ms)),
                _el(0xE0, _uint(0xB0, width), _uint(0xBA, height)))
    simple_tags = [_el(0x67C8, _text(0x45A3, key), _text(0x4487, value))
                   for key, value in tags.items()]
    clusters: list[bytes] = []
    blocks: list[bytes] = []
    start = 0
    for n, packet in enumerate(packets):
        at = round(n * frame_ms)
        if blocks and at - start > _CLUSTER_SPAN_MS:
            clusters.append(_el(0x1F43B675, _uint(0xE7, start), *blocks))
            blocks = []
        if not blocks:
            start = at
        # track 1, timestamp relative to the cluster, keyframe flag
        blocks.append(_el(0xA3, b"\x81" + struct.pack(">hB", at - start, 0x80) + packet))
    if blocks:
        clusters.append(_el(0x1F43B675, _uint(0xE7, start), *blocks))
    segment = _el(0x18538067, info, _el(0x1654AE6B, track),
                  _el(0x1254C367, _el(0x7373, _el(0x63C0), *simple_tags)), *clusters)
    return header + segment


# --- ISO base media (MP4) ----------------------------------------------------------------------

def _box(kind: bytes, *children: bytes) -> bytes:
    body = b"".join(children)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *children: bytes) -> bytes:
    return _box(kind, struct.pack(">I", version << 24 | flags), *children)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)  # identity


def _mvhd(duration_ms: int) -> bytes:
    return _full_box(b"mvhd", 0, 0, struct.pack(">IIIIIH", 0, 0, 1000, duration_ms, 0x10000,
                                                0x100), bytes(10), _MATRIX, bytes(24),
                     struct.pack(">I", 2))


def _video_trak(width: int, height: int, fps: float, duration_ms: int, count: int,
                data_offset: int) -> bytes:
    """One H.264 track whose samples are the packets, one chunk at `data_offset`."""
    timescale, delta = round(fps * 1000), 1000  # integral sample durations for any fps
    tkhd = _full_box(b"tkhd", 0, 3, struct.pack(">IIIII", 0, 0, 1, 0, duration_ms), bytes(16),
                     _MATRIX, struct.pack(">II", width << 16, height << 16))
    mdhd = _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, count * delta,
                                                0x55C4, 0))  # language "und"
    hdlr = _full_box(b"hdlr", 0, 0, bytes(4), b"vide", bytes(12), b"VideoHandler\0")
    avc1 = _box(b"avc1", bytes(6), struct.pack(">H", 1), bytes(16),
                struct.pack(">HHIIIH", width, height, 0x480000, 0x480000, 0, 1), bytes(32),
                struct.pack(">Hh", 0x18, -1), _box(b"avcC", _EMPTY_AVCC))
    stbl = _box(b"stbl", _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
                _full_box(b"stts", 0, 0, struct.pack(">III", 1, count, delta)),
                _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, count, 1)),
                _full_box(b"stsz", 0, 0, struct.pack(">II", PACKET_BYTES, count)),
                _full_box(b"stco", 0, 0, struct.pack(">II", 1, data_offset)))
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    minf = _box(b"minf", _full_box(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    return _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, minf))


def _mdta_meta(tags: dict[str, str]) -> bytes:
    handler = _full_box(b"hdlr", 0, 0, bytes(4), b"mdta", bytes(12), b"\x00")
    keys = _full_box(b"keys", 0, 0, struct.pack(">I", len(tags)),
                     *(struct.pack(">I", 8 + len(k.encode())) + b"mdta" + k.encode()
                       for k in tags))
    items = [_box(struct.pack(">I", n), _box(b"data", struct.pack(">II", 1, 0), v.encode()))
             for n, v in enumerate(tags.values(), start=1)]  # data type 1: UTF-8
    return _full_box(b"meta", 0, 0, handler, keys, _box(b"ilst", *items))


def mp4(width: int, height: int, fps: float, packets: Sequence[bytes],
        tags: dict[str, str]) -> bytes:
    """An MP4 laid out as ffmpeg writes it: ftyp, free, mdat, then moov with one video track."""
    head = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41") + _box(b"free")
    duration_ms = round(1000.0 * len(packets) / fps)
    trak = _video_trak(width, height, fps, duration_ms, len(packets), len(head) + 8)
    moov = _box(b"moov", _mvhd(duration_ms), trak, _box(b"udta", _mdta_meta(tags)))
    return head + _box(b"mdat", *packets) + moov
