"""Outputs, inputs and retention decisions: the pure parts (no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from actors.retention import next_check_ms
from comfy_service.inputs import find_refs, node_file_name, upload_id_of, with_node_files
from comfy_service.media import output_type, sniff_image
from comfy_service.outputs import output_files, output_key

REF = "upload:" + "ab" * 16


@pytest.mark.parametrize("head,expected", [
    (b"\x89PNG\r\n\x1a\n\0\0\0\r", ("image/png", ".png")),
    (b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01", ("image/jpeg", ".jpg")),
    (b"RIFF\x24\0\0\0WEBPVP8 ", ("image/webp", ".webp")),
    (b"RIFF\x24\0\0\0WAVEfmt ", None),
    (b"GIF89a\x01\0\x01\0\0\0", None),
    (b"<svg xmlns=", None),
    (b"", None),
])
def test_uploads_are_recognised_by_their_first_bytes(head: bytes, expected: Any) -> None:
    assert sniff_image(head) == expected


@pytest.mark.parametrize("name,content_type,kind", [
    ("a_00001_.png", "image/png", "image"), ("clip.WEBM", "video/webm", "video"),
    ("v.mp4", "video/mp4", "video"), ("s.flac", "audio/flac", "audio"),
    ("m.glb", "model/gltf-binary", "model"), ("page.html", "application/octet-stream", "file"),
    ("noext", "application/octet-stream", "file"),
])
def test_outputs_get_an_allowlisted_type_by_extension(name: str, content_type: str,
                                                      kind: str) -> None:
    assert (output_type(name).content_type, output_type(name).kind) == (content_type, kind)


def test_every_output_file_of_a_history_entry_is_collected_in_graph_order() -> None:
    outputs = {
        "12": {"audio": [{"filename": "a_00001_.flac", "subfolder": "audio", "type": "output"}]},
        "9": {"images": [{"filename": "i_00001_.png", "subfolder": "", "type": "output"},
                         {"filename": "i_00002_.png", "subfolder": "", "type": "output"}]},
        "10": {"images": [{"filename": "v_00001_.webm", "subfolder": "", "type": "output"}],
               "animated": [True]},
        "11": {"images": [{"filename": "p_temp_00001_.png", "subfolder": "", "type": "temp"}]},
        "13": {"text": ["not a file"]},
    }
    files = output_files(outputs, ["9", "10", "11", "12", "13"])
    assert [(f["node_id"], f["filename"], f["group"]) for f in files] == [
        ("9", "i_00001_.png", "images"), ("9", "i_00002_.png", "images"),
        ("10", "v_00001_.webm", "images"), ("12", "a_00001_.flac", "audio")]
    assert files[3]["subfolder"] == "audio"


def test_output_keys_derive_from_task_and_index_so_a_retry_overwrites() -> None:
    assert output_key("t1", 0, "x_00007_.PNG") == output_key("t1", 0, "x_00001_.png") \
        == "outputs/t1/0.png"
    assert output_key("t1", 2, "noext") == "outputs/t1/2.bin"


def test_references_are_found_and_swapped_for_node_files_in_a_copy() -> None:
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": REF}},
             "2": {"class_type": "LoadImage", "inputs": {"image": REF}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "upload:nope"}}}
    refs = find_refs(graph)
    assert [(r.node_id, r.input_name) for r in refs] == [("1", "image"), ("2", "image")]
    swapped = with_node_files(graph, {"ab" * 16: "comfy-service/t-0.png"})
    assert swapped["1"]["inputs"]["image"] == swapped["2"]["inputs"]["image"] \
        == "comfy-service/t-0.png"
    assert graph["1"]["inputs"]["image"] == REF  # the record keeps the reference
    assert upload_id_of("upload:" + "AB" * 16) is None and upload_id_of(3) is None
    assert node_file_name("task", 1, ".jpg") == "task-1.jpg"


@pytest.mark.parametrize("pttl,expected", [
    (-2, None),               # the record is gone: delete its objects now
    (-1, 1_000 + 60_000),     # no expiry yet (a task still running): look again after a TTL
    (5_000, 1_000 + 6_000),   # expires in 5 s: look again just after
])
def test_when_retention_looks_again(pttl: int, expected: int | None) -> None:
    assert next_check_ms(1_000, pttl, ttl_s=60) == expected
