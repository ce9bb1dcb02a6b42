"""Real, decodable FLAC and MP3 files of silence, written without an audio library.

The simulator carries no waveform (an AUDIO value is its length and layout), so what SaveAudio
and SaveAudioMP3 write is silence of the right duration, sample rate and channel count, in the
same container layout ffmpeg (behind ComfyUI's PyAV) writes: FLAC with its STREAMINFO and a
Vorbis comment holding the prompt, MP3 behind an ID3v2.4 tag whose TXXX frame holds it.
"""

from __future__ import annotations

import hashlib
import struct

FLAC_BLOCK_SIZE = 4608  # ffmpeg's FLAC encoder's block size at 44.1/48 kHz
_FLAC_BLOCK_CODES = {192: 0b0001, 576: 0b0010, 1152: 0b0011, 2304: 0b0100, 4608: 0b0101,
                     256: 0b1000, 512: 0b1001, 1024: 0b1010, 2048: 0b1011, 4096: 0b1100}
_FLAC_RATE_CODES = {88200: 0b0001, 176400: 0b0010, 192000: 0b0011, 8000: 0b0100, 16000: 0b0101,
                    22050: 0b0110, 24000: 0b0111, 32000: 0b1000, 44100: 0b1001, 48000: 0b1010,
                    96000: 0b1011}
VENDOR = "comfyui-sim"


def _crc(data: bytes, poly: int, width: int) -> int:
    top, mask, crc = 1 << (width - 1), (1 << width) - 1, 0
    for byte in data:
        crc ^= byte << (width - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
    return crc


def _utf8_number(value: int) -> bytes:
    """FLAC's frame number coding: UTF-8's scheme, extended to 36 bits."""
    if value < 0x80:
        return bytes([value])
    tail: list[int] = []
    while True:
        tail.insert(0, 0x80 | (value & 0x3F))
        value >>= 6
        lead_bits = 6 - len(tail)  # bits left for the value in the first byte
        if value < (1 << lead_bits):
            marker = (0xFF << (7 - len(tail))) & 0xFF
            return bytes([marker | value, *tail])


def _flac_frame(number: int, samples: int, channels: int, sample_rate: int) -> bytes:
    block_code = _FLAC_BLOCK_CODES.get(samples, 0b0111)  # 0111: size follows as 16 bits
    header = bytearray(b"\xff\xf8")  # sync code, fixed block size
    header.append(block_code << 4 | _FLAC_RATE_CODES.get(sample_rate, 0))  # 0: see STREAMINFO
    header.append((channels - 1) << 4 | 0b100 << 1)  # independent channels, 16 bits a sample
    header += _utf8_number(number)
    if block_code == 0b0111:
        header += struct.pack(">H", samples - 1)
    header.append(_crc(bytes(header), 0x07, 8))
    # A CONSTANT subframe per channel: the whole block is one 16-bit value, here 0.
    frame = bytes(header) + b"\x00\x00\x00" * channels
    return frame + struct.pack(">H", _crc(frame, 0x8005, 16))


def _flac_block(kind: int, body: bytes, last: bool) -> bytes:
    return bytes([(0x80 if last else 0) | kind]) + len(body).to_bytes(3, "big") + body


def flac_silence(samples: int, channels: int, sample_rate: int,
                 tags: dict[str, str]) -> bytes:
    """A FLAC stream of `samples` silent 16-bit samples per channel, `tags` as Vorbis comments."""
    frames = [_flac_frame(n, min(FLAC_BLOCK_SIZE, samples - start), channels, sample_rate)
              for n, start in enumerate(range(0, samples, FLAC_BLOCK_SIZE))]
    sizes = [len(f) for f in frames] or [0]
    digest = hashlib.md5(usedforsecurity=False)
    chunk = bytes(2 * channels * FLAC_BLOCK_SIZE)
    for start in range(0, samples, FLAC_BLOCK_SIZE):
        digest.update(chunk[:2 * channels * min(FLAC_BLOCK_SIZE, samples - start)])
    block = min(FLAC_BLOCK_SIZE, samples) or FLAC_BLOCK_SIZE
    stream_info = (struct.pack(">HH", block, block) + min(sizes).to_bytes(3, "big")
                   + max(sizes).to_bytes(3, "big")
                   + (sample_rate << 44 | (channels - 1) << 41 | 15 << 36 | samples)
                   .to_bytes(8, "big") + digest.digest())
    comments = [f"{key}={value}".encode() for key, value in tags.items()]
    vorbis = (struct.pack("<I", len(VENDOR)) + VENDOR.encode() + struct.pack("<I", len(comments))
              + b"".join(struct.pack("<I", len(c)) + c for c in comments))
    return (b"fLaC" + _flac_block(0, stream_info, False) + _flac_block(4, vorbis, True)
            + b"".join(frames))


MP3_FRAME_SAMPLES = 1152  # MPEG-1 Layer III
_MP3_RATE_CODES = {44100: 0b00, 48000: 0b01, 32000: 0b10}
_MP3_KBPS_CODES = {32: 0b0001, 64: 0b0101, 128: 0b1001, 192: 0b1011, 256: 0b1101, 320: 0b1110}
# SaveAudioMP3's quality -> the bitrate LAME gives silence: V0 is variable and drops to its
# lowest rate on silence; 128k and 320k are constant.
MP3_QUALITY_KBPS = {"V0": 32, "128k": 128, "320k": 320}


def _syncsafe(value: int) -> bytes:
    return bytes((value >> shift) & 0x7F for shift in (21, 14, 7, 0))


def _id3v2_4(tags: dict[str, str]) -> bytes:
    frames = b""
    for key, value in tags.items():
        body = b"\x03" + key.encode() + b"\x00" + value.encode() + b"\x00"  # UTF-8 TXXX
        frames += b"TXXX" + _syncsafe(len(body)) + b"\x00\x00" + body
    return b"ID3\x04\x00\x00" + _syncsafe(len(frames)) + frames


def mp3_silence(samples: int, channels: int, sample_rate: int, kbps: int,
                tags: dict[str, str]) -> bytes:
    """MPEG-1 Layer III frames of silence covering `samples`, behind an ID3v2.4 tag."""
    mode = 0b11 if channels == 1 else 0b00  # mono or stereo
    header = bytes([0xFF, 0xFB, _MP3_KBPS_CODES[kbps] << 4 | _MP3_RATE_CODES[sample_rate] << 2,
                    mode << 6 | 0b100])  # no CRC, not padded, "original" set
    size = 144 * kbps * 1000 // sample_rate
    # Zero side information means no main data in either granule: the frame decodes to silence.
    frame = header + bytes(size - len(header))
    count = -(-samples // MP3_FRAME_SAMPLES)
    return _id3v2_4(tags) + frame * count
