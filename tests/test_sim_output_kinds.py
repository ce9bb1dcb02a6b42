"""The simulator's media output nodes: animated images, video and audio, as ComfyUI saves them.

What each node reports (WebSocket `executed`, /history outputs) is what ComfyUI 0.3.64's node
source returns; the files are served by /view with the real server's Content-Type rules.
"""

from __future__ import annotations

import asyncio
import io
import mimetypes
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.support.comfy_client import run_prompt
from tests.support.processes import SimNodeProcess, wait_until

CHECKPOINT = "model.safetensors"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pictures(count: int, width: int = 48, height: int = 32, seed: int = 5) -> dict[str, Any]:
    """Nodes 1-5 of a graph whose node 5 gives `count` different pictures."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "2": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": count}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["1", 1]}},
        "4": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["1", 0], "positive": ["3", 0], "negative": ["3", 0],
            "latent_image": ["2", 0]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
    }


def sound(seconds: float = 1.0) -> dict[str, Any]:
    """Nodes of a graph whose node 7 gives AUDIO without a model: an empty latent, decoded."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "6": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": seconds, "batch_size": 1}},
        "7": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
    }


def with_saver(graph: dict[str, Any], class_type: str, **inputs: Any) -> dict[str, Any]:
    return {**graph, "9": {"class_type": class_type, "inputs": inputs}}


def video_graph(count: int, prefix: str, container: str = "auto") -> dict[str, Any]:
    graph = {**pictures(count),
             "8": {"class_type": "CreateVideo", "inputs": {"images": ["5", 0], "fps": 24.0}}}
    return with_saver(graph, "SaveVideo", video=["8", 0], filename_prefix=prefix,
                      format=container, codec="auto")


def host_content_type(filename: str) -> str:
    """What ComfyUI's /view sends for a type the host's mime.types decides (.flac, .mkv)."""
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _saved(name: str, subfolder: str = "", kind: str = "output") -> dict[str, str]:
    return {"filename": name, "subfolder": subfolder, "type": kind}


def _mp3_frame_follows_tag(data: bytes) -> bool:
    size = sum(b << (7 * (3 - n)) for n, b in enumerate(data[6:10]))  # syncsafe tag size
    return data[:3] == b"ID3" and data[10 + size] == 0xFF and data[11 + size] & 0xE0 == 0xE0


@dataclass(frozen=True)
class Case:
    graph: dict[str, Any]
    output: dict[str, Any]  # the node's UI output: in `executed` and in /history
    looks_right: Callable[[bytes], bool]  # the file's leading bytes
    content_type: str


CASES = {
    "SaveAnimatedWEBP": Case(
        with_saver(pictures(3), "SaveAnimatedWEBP", images=["5", 0], filename_prefix="anim",
                   fps=6.0, lossless=False, quality=80, method="fastest"),
        {"images": [_saved("anim_00001_.webp")], "animated": [True]},
        lambda d: d[:4] == b"RIFF" and d[8:12] == b"WEBP" and b"ANIM" in d[:64], "image/webp"),
    "SaveAnimatedPNG": Case(
        with_saver(pictures(3), "SaveAnimatedPNG", images=["5", 0], filename_prefix="apng",
                   fps=6.0, compress_level=4),
        {"images": [_saved("apng_00001_.png")], "animated": [True]},
        lambda d: d[:8] == PNG_SIGNATURE and b"acTL" in d, "image/png"),
    "SaveWEBM": Case(
        with_saver(pictures(3), "SaveWEBM", images=["5", 0], filename_prefix="clip",
                   codec="vp9", fps=24.0, crf=32.0),
        {"images": [_saved("clip_00001_.webm")], "animated": [True]},
        lambda d: d[:4] == bytes.fromhex("1A45DFA3") and b"webm" in d[:64], "video/webm"),
    "SaveVideo": Case(
        video_graph(3, "video/ComfyUI"),
        {"images": [_saved("ComfyUI_00001_.mp4", "video")], "animated": [True]},
        lambda d: d[4:8] == b"ftyp", "video/mp4"),
    "SaveAudio": Case(
        with_saver(sound(), "SaveAudio", audio=["7", 0], filename_prefix="audio/flac"),
        {"audio": [_saved("flac_00001_.flac", "audio")]},
        lambda d: d[:4] == b"fLaC", host_content_type("x.flac")),
    "SaveAudioMP3": Case(
        with_saver(sound(), "SaveAudioMP3", audio=["7", 0], filename_prefix="audio/mp3",
                   quality="V0"),
        {"audio": [_saved("mp3_00001_.mp3", "audio")]},
        _mp3_frame_follows_tag, "audio/mpeg"),
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimNodeProcess]:
    node = SimNodeProcess(tmp_path_factory.mktemp("sim"), "--checkpoints", CHECKPOINT, step_ms=1)
    yield node
    node.stop()


def history_outputs(sim: SimNodeProcess, prompt_id: str) -> dict[str, Any]:
    # The entry is written just after the run's last message, as in the real server.
    entry = wait_until(lambda: httpx.get(f"{sim.url}/history/{prompt_id}").json().get(prompt_id),
                       10, f"the history entry of {prompt_id}")
    outputs: dict[str, Any] = entry["outputs"]
    return outputs


def view(sim: SimNodeProcess, saved: dict[str, str]) -> httpx.Response:
    answer = httpx.get(f"{sim.url}/view", params=saved)
    answer.raise_for_status()
    return answer


@pytest.mark.parametrize("class_type", list(CASES))
def test_a_media_node_reports_its_file_as_comfyui_does_and_view_serves_it(
        sim: SimNodeProcess, class_type: str) -> None:
    case = CASES[class_type]
    # Given a graph ending in the node
    # When it runs
    run = asyncio.run(run_prompt(sim.url, case.graph))
    assert run.terminal == "execution_success"
    # Then `executed` and the history entry carry exactly the real node's UI output
    (executed,) = run.of_type("executed")
    assert executed["node"] == "9" and executed["output"] == case.output
    assert history_outputs(sim, run.prompt_id) == {"9": case.output}
    # And /view serves the file: the container's leading bytes, the real Content-Type
    (saved,) = case.output.get("images") or case.output["audio"]
    answer = view(sim, saved)
    assert case.looks_right(answer.content), answer.content[:64]
    assert answer.headers["content-type"] == case.content_type


def test_animated_images_hold_every_frame_and_the_prompt_where_comfyui_puts_it(
        sim: SimNodeProcess) -> None:
    # Given three different pictures saved as animated WebP and as animated PNG
    webp = asyncio.run(run_prompt(sim.url, with_saver(
        pictures(3, seed=21), "SaveAnimatedWEBP", images=["5", 0], filename_prefix="frames",
        fps=4.0, lossless=True, quality=80, method="default")))
    apng = asyncio.run(run_prompt(sim.url, with_saver(
        pictures(3, seed=21), "SaveAnimatedPNG", images=["5", 0], filename_prefix="frames",
        fps=4.0, compress_level=1)))
    # When both files are read back
    files = [view(sim, r.of_type("executed")[0]["output"]["images"][0]).content
             for r in (webp, apng)]
    # Then each has the three frames, 250 ms apart, and the prompt: in EXIF Model for WebP,
    # in the private `comf` chunk after the image data for PNG
    for data in files:
        with Image.open(io.BytesIO(data)) as picture:
            picture.seek(1)  # a frame's duration is known once the frame is read
            picture.load()
            assert (picture.n_frames, picture.size, picture.info["duration"]) == (3, (48, 32), 250)
    with Image.open(io.BytesIO(files[0])) as picture:
        assert picture.getexif()[0x0110].startswith('prompt:{"1": ')
    assert b"comfprompt\x00{" in files[1]
    # And the two files share the prefix's counter, as every file in a folder does
    assert [r.of_type("executed")[0]["output"]["images"][0]["filename"] for r in (webp, apng)] \
        == ["frames_00001_.webp", "frames_00002_.png"]


def test_a_single_frame_webp_is_reported_as_not_animated(sim: SimNodeProcess) -> None:
    # Given one picture saved by SaveAnimatedWEBP
    run = asyncio.run(run_prompt(sim.url, with_saver(
        pictures(1), "SaveAnimatedWEBP", images=["5", 0], filename_prefix="still", fps=6.0,
        lossless=False, quality=80, method="fastest")))
    # Then, as 0.3.64's `animated = num_frames != 1` says, it is not animated
    assert run.of_type("executed")[0]["output"] == {
        "images": [_saved("still_00001_.webp")], "animated": [False]}


@pytest.mark.parametrize("saver", ["SaveWEBM", "SaveVideo"])
def test_a_video_file_grows_with_its_frame_count(sim: SimNodeProcess, saver: str) -> None:
    def size(count: int) -> int:
        if saver == "SaveVideo":
            graph = video_graph(count, f"grow{count}")
        else:
            graph = with_saver(pictures(count), "SaveWEBM", images=["5", 0],
                               filename_prefix=f"grow{count}", codec="av1", fps=12.0, crf=20.0)
        run = asyncio.run(run_prompt(sim.url, graph))
        return len(view(sim, run.of_type("executed")[0]["output"]["images"][0]).content)
    # Given the same video saved with 2 and with 6 frames, Then the longer one is the bigger
    assert size(6) > size(2)


def test_preview_audio_writes_a_temp_file(sim: SimNodeProcess) -> None:
    # Given decoded audio sent to PreviewAudio
    run = asyncio.run(run_prompt(sim.url, with_saver(sound(2.0), "PreviewAudio", audio=["7", 0])))
    # Then it is a FLAC in temp/, under ComfyUI's random temp prefix
    (saved,) = run.of_type("executed")[0]["output"]["audio"]
    assert saved["type"] == "temp" and saved["subfolder"] == ""
    assert saved["filename"].startswith("ComfyUI_temp_") and saved["filename"].endswith("_00001_.flac")
    assert view(sim, saved).content[:4] == b"fLaC"


def test_a_value_outside_a_combo_is_rejected_before_anything_runs(sim: SimNodeProcess) -> None:
    # Given SaveAudioMP3 asked for a quality it does not offer
    graph = with_saver(sound(), "SaveAudioMP3", audio=["7", 0], filename_prefix="audio/bad",
                       quality="V9")
    # When the prompt is posted
    answer = httpx.post(f"{sim.url}/prompt", json={"prompt": graph})
    # Then it is refused with the real server's validation error for that input
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["9"]["errors"] == [{
        "type": "value_not_in_list", "message": "Value not in list",
        "details": "quality: 'V9' not in ['V0', '128k', '320k']",
        "extra_info": {"input_name": "quality",
                       "input_config": [["V0", "128k", "320k"], {"default": "V0"}],
                       "received_value": "V9"}}]


def test_an_unknown_webm_codec_passes_validation_and_fails_in_the_node(
        sim: SimNodeProcess) -> None:
    # Given SaveWEBM with a codec it does not offer: a V3 COMBO, which 0.3.64 does not validate
    graph = with_saver(pictures(2), "SaveWEBM", images=["5", 0], filename_prefix="bad",
                       codec="h265", fps=24.0, crf=32.0)
    # When it runs
    run = asyncio.run(run_prompt(sim.url, graph))
    # Then the node fails as the real one does, on its codec table lookup
    (error,) = run.of_type("execution_error")
    assert (error["node_type"], error["exception_type"], error["exception_message"]) == (
        "SaveWEBM", "KeyError", "'h265'\n")


def test_0_3_64_save_video_refuses_a_container_it_does_not_offer(sim: SimNodeProcess) -> None:
    # Given SaveVideo asked for Matroska, which 0.3.64 lists nowhere (it offers auto and mp4)
    run = asyncio.run(run_prompt(sim.url, video_graph(2, "video/mkv", container="mkv")))
    # Then the node fails with VideoContainer's own error
    (error,) = run.of_type("execution_error")
    assert (error["exception_type"], error["exception_message"]) == (
        "ValueError", "'mkv' is not a valid VideoContainer\n")


def test_0_33_0_save_video_writes_matroska_when_asked(tmp_path: pathlib.Path) -> None:
    # Given a simulator started as 0.33.0, whose SaveVideo offers mkv and webm too
    node = SimNodeProcess(tmp_path / "sim", "--checkpoints", CHECKPOINT,
                          "--comfyui-version", "0.33.0", step_ms=1)
    try:
        # When a video is saved as mkv
        run = asyncio.run(run_prompt(node.url, video_graph(2, "video/ComfyUI", container="mkv")))
        # Then it is a Matroska file in video/, served as the host's type for .mkv
        output = run.of_type("executed")[0]["output"]
        assert output == {"images": [_saved("ComfyUI_00001_.mkv", "video")], "animated": [True]}
        answer = view(node, output["images"][0])
        assert answer.content[:4] == bytes.fromhex("1A45DFA3") and b"matroska" in answer.content[:64]
        assert answer.headers["content-type"] == host_content_type("x.mkv")
    finally:
        node.stop()
