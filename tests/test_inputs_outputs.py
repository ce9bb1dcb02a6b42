"""Inputs and outputs across machines, with real processes: uploads, img2img on a node (and
again after a failover), the local store's shared-directory check, and bad input."""

from __future__ import annotations

import hashlib
import io
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import obstore
import pytest
from PIL import Image

from tests.support.processes import wait_until
from tests.support.s3 import S3Server
from tests.support.service import Stack, txt2img_body

KEY_A, KEY_B = "key-a-" + "1" * 20, "key-b-" + "2" * 20


def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return out.getvalue()


def img2img_body(ref: str, steps: int = 2, **params: Any) -> dict[str, Any]:
    return {"workflow": "img2img", "params": {"image": ref, "prompt": "in watercolour",
                                              "steps": steps, **params}}


def node_inputs(stack: Stack, index: int) -> dict[str, bytes]:
    folder = stack.sims[index].base_dir / "input" / "comfy-service"
    return {p.name: p.read_bytes() for p in folder.glob("*")} if folder.is_dir() else {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    service = Stack(tmp_path_factory.mktemp("io"), nodes=1, step_ms=5,
                    env={"API_KEYS": f"{KEY_A},{KEY_B}", "MAX_UPLOAD_BYTES": "300000"})
    yield service
    service.stop()


def upload(stack: Stack, data: bytes, content_type: str = "image/png",
           key: str = KEY_A) -> Any:
    return stack.http.post("/api/v1/uploads", content=data,
                           headers={"Content-Type": content_type,
                                    "Authorization": f"Bearer {key}"})


def test_an_uploaded_image_reaches_the_node_and_img2img_returns_an_output(stack: Stack) -> None:
    # Given an image uploaded as a raw body
    image = png()
    answer = upload(stack, image)
    assert answer.status_code == 201, answer.text
    uploaded = answer.json()
    assert uploaded["content_type"] == "image/png" and uploaded["bytes"] == len(image)
    assert uploaded["sha256"] == hashlib.sha256(image).hexdigest()
    # When an img2img task names it
    task_id = stack.submit(img2img_body(uploaded["ref"]))
    task = stack.wait_task(task_id)
    # Then the task succeeded, the node received exactly that file under a name from the task,
    # and the output comes back through the gateway
    assert task["status"] == "succeeded", task
    assert node_inputs(stack, 0) == {f"{task_id}-0.png": image}
    (output,) = task["outputs"]
    assert (output["kind"], output["content_type"]) == ("image", "image/png")
    served = stack.http.get(f"/api/v1/tasks/{task_id}/outputs/0")
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    assert hashlib.sha256(served.content).hexdigest() == output["sha256"]
    # And the output has the input's size (img2img keeps it)
    assert Image.open(io.BytesIO(served.content)).size == (64, 48)


def test_a_multipart_upload_is_taken_as_the_browser_sends_it(stack: Stack) -> None:
    image = png(colour=(1, 2, 3))
    answer = stack.http.post("/api/v1/uploads",
                             files={"image": ("photo.png", image, "image/png")})
    assert answer.status_code == 201, answer.text
    assert answer.json()["bytes"] == len(image)


@pytest.mark.parametrize("data,content_type,status,code", [
    (png(600, 600) + b"\0" * 400_000, "image/png", 413, "payload_too_large"),
    (b"GIF89a" + b"\0" * 100, "image/gif", 415, "unsupported_media_type"),
    (b"<html><script>alert(1)</script>", "image/png", 415, "unsupported_media_type"),
    (b"", "image/png", 422, "validation_error"),
])
def test_bad_uploads_are_refused_with_stable_codes(stack: Stack, data: bytes, content_type: str,
                                                   status: int, code: str) -> None:
    answer = upload(stack, data, content_type)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code


def test_a_broken_multipart_body_is_a_400(stack: Stack) -> None:
    answer = stack.http.post("/api/v1/uploads", content=b"--x\r\nnot a part",
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert answer.status_code in (400, 422), answer.text
    assert answer.json()["error"]["code"] in ("invalid_multipart", "validation_error")


def test_an_unknown_or_foreign_upload_is_a_422_naming_the_field(stack: Stack) -> None:
    # Given an upload of key B
    foreign = upload(stack, png(), key=KEY_B).json()["ref"]
    unknown = "upload:" + "0" * 32
    for ref in (unknown, foreign):
        # When key A names it in a template parameter
        answer = stack.http.post("/api/v1/generate", json=img2img_body(ref))
        # Then 422, naming params.image
        assert answer.status_code == 422, answer.text
        fields = answer.json()["error"]["details"]["fields"]
        assert [f["field"] for f in fields] == ["params.image"], fields
    # And in a LoadImage input of workflow_json, the field names the node input
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": unknown}},
             "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    answer = stack.http.post("/api/v1/generate", json={"workflow_json": graph})
    assert answer.status_code == 422, answer.text
    assert [f["field"] for f in answer.json()["error"]["details"]["fields"]] == [
        "workflow_json.1.inputs.image"]


def test_an_input_is_uploaded_again_to_the_node_a_task_fails_over_to(
        tmp_path: pathlib.Path) -> None:
    # Steps of 300 ms: the task runs for seconds on its first node, long enough to kill it there
    service = Stack(tmp_path / "failover", nodes=2, step_ms=300)
    try:
        image = png(32, 32, (200, 0, 0))
        ref = service.http.post("/api/v1/uploads", content=image,
                                headers={"Content-Type": "image/png"}).json()["ref"]
        task_id = service.submit(img2img_body(ref, steps=20))
        running = service.wait_task(task_id, ("running",))
        first = next(i for i, s in enumerate(service.sims) if s.url == _node_url(service, running))
        assert node_inputs(service, first) == {f"{task_id}-0.png": image}
        # When the node running it dies
        service.sims[first].kill()
        task = service.wait_task(task_id, timeout=90)
        # Then the task succeeded on the other node, which received the input too
        assert task["status"] == "succeeded" and task["attempts"] == 2, task
        assert node_inputs(service, 1 - first) == {f"{task_id}-0.png": image}
    finally:
        service.stop()


def _node_url(stack: Stack, task: dict[str, Any]) -> str:
    nodes = {n["name"]: n["url"] for n in stack.http.get("/api/v1/nodes").json()["nodes"]}
    return nodes[task["node"]]


def test_local_outputs_in_different_directories_refuse_to_start(tmp_path: pathlib.Path) -> None:
    # Given a gateway and a worker sharing Redis but each with its own OUTPUT_DIR, as on two
    # machines without a shared volume
    service = Stack(tmp_path / "two-dirs", nodes=1, workers=0)
    try:
        worker = service.start_worker({"OUTPUT_DIR": str(tmp_path / "other-machine")})
        # Then the worker exits at once, saying why, instead of storing outputs nobody serves
        wait_until(lambda: not worker.alive(), 20, "the worker to refuse to start")
        assert "OUTPUT_STORE=s3" in worker.log_tail(20)
        # And a worker given the gateway's directory starts
        good = service.start_worker()
        service.wait_nodes_healthy(1)
        assert good.alive()
    finally:
        service.stop()



def test_every_output_kind_is_collected_and_served_with_its_type(stack: Stack) -> None:
    # Given a graph that saves an animated WebP, a WEBM video and a FLAC sound
    graph = {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 64, "height": 48, "batch_size": 3, "color": 255}},
        "2": {"class_type": "SaveAnimatedWEBP",
              "inputs": {"images": ["1", 0], "filename_prefix": "anim", "fps": 6.0,
                         "lossless": False, "quality": 80, "method": "default"}},
        "3": {"class_type": "SaveWEBM",
              "inputs": {"images": ["1", 0], "filename_prefix": "clip", "codec": "vp9",
                         "fps": 24.0, "crf": 32.0}},
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "juggernautXL_v8Rundiffusion.safetensors"}},
        "5": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 1.0, "batch_size": 1}},
        "6": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
        "7": {"class_type": "SaveAudio", "inputs": {"audio": ["6", 0],
                                                    "filename_prefix": "audio/sound"}},
    }
    # When it runs as a task
    task = stack.wait_task(stack.submit({"workflow_json": graph}))
    assert task["status"] == "succeeded", task
    # Then each file is an output with its kind and type, served with its type and bytes
    kinds = [(o["node_id"], o["kind"], o["content_type"]) for o in task["outputs"]]
    assert kinds == [("2", "image", "image/webp"), ("3", "video", "video/webm"),
                     ("7", "audio", "audio/flac")]
    magic = {"image/webp": b"RIFF", "video/webm": bytes.fromhex("1a45dfa3"),
             "audio/flac": b"fLaC"}
    for output in task["outputs"]:
        served = stack.http.get(f"/api/v1/tasks/{task['task_id']}/outputs/{output['index']}")
        assert served.status_code == 200
        assert served.headers["content-type"] == output["content_type"]
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.content.startswith(magic[output["content_type"]])
        assert hashlib.sha256(served.content).hexdigest() == output["sha256"]

# --- the S3 store: gateway and worker on separate disks, presigned URLs, retention ------------

def s3_env(s3_server: S3Server, **extra: str) -> dict[str, str]:
    return {**s3_server.env(), "S3_PREFIX": f"t-{uuid.uuid4().hex[:10]}", **extra}


def bucket_keys(s3_server: S3Server, prefix: str) -> list[str]:
    return sorted(meta["path"] for meta in obstore.list(s3_server.store(prefix)).collect())


def test_outputs_in_s3_download_through_a_gateway_on_another_disk(
        tmp_path: pathlib.Path, s3_server: S3Server) -> None:
    # Given the S3 store, and a worker whose OUTPUT_DIR is not the gateway's (two machines)
    env = s3_env(s3_server)
    service = Stack(tmp_path / "s3", nodes=1, step_ms=5, env=env, workers=0)
    try:
        service.start_worker({"OUTPUT_DIR": str(tmp_path / "worker-machine")})
        service.wait_nodes_healthy(1)
        # When a task runs
        task = service.wait_task(service.submit(txt2img_body(steps=1, batch_size=2)))
        assert task["status"] == "succeeded", task
        # Then its outputs are objects in the bucket, and the gateway streams them back
        assert bucket_keys(s3_server, env["S3_PREFIX"]) == [
            f"outputs/{task['task_id']}/0.png", f"outputs/{task['task_id']}/1.png"]
        for output in task["outputs"]:
            served = service.http.get(f"/api/v1/tasks/{task['task_id']}/outputs/"
                                      f"{output['index']}")
            assert served.status_code == 200, served.text
            assert int(served.headers["content-length"]) == output["bytes"]
            assert hashlib.sha256(served.content).hexdigest() == output["sha256"]
        # And nothing was written to either local directory
        assert not list((tmp_path / "worker-machine").glob("outputs/**/*.png"))
    finally:
        service.stop()


def test_presigned_downloads_redirect_to_the_bucket(tmp_path: pathlib.Path,
                                                     s3_server: S3Server) -> None:
    service = Stack(tmp_path / "presign", nodes=1, step_ms=5,
                    env=s3_env(s3_server, PRESIGN_TTL_S="60"))
    try:
        task = service.wait_task(service.submit(txt2img_body(steps=1)))
        # When the output is asked for
        answer = service.http.get(f"/api/v1/tasks/{task['task_id']}/outputs/0")
        # Then 302 to a short-lived signed URL that serves the file without our credentials
        assert answer.status_code == 302, answer.text
        location = answer.headers["location"]
        assert "X-Amz-Expires=60" in location and location.startswith(s3_server.endpoint)
        fetched = httpx.get(location, timeout=10)
        assert fetched.status_code == 200
        assert hashlib.sha256(fetched.content).hexdigest() == task["outputs"][0]["sha256"]
    finally:
        service.stop()


def test_expired_tasks_lose_their_objects_and_live_uploads_keep_theirs(
        tmp_path: pathlib.Path, s3_server: S3Server) -> None:
    # Given tasks kept 2 s after they end, uploads an hour, and a sweep every 200 ms
    env = s3_env(s3_server, TASK_TTL="2", UPLOAD_TTL="3600", RETENTION_INTERVAL_S="0.2")
    service = Stack(tmp_path / "retention", nodes=1, step_ms=5, env=env)
    try:
        image = png(16, 16)
        ref = service.http.post("/api/v1/uploads", content=image,
                                headers={"Content-Type": "image/png"}).json()["ref"]
        task_id = service.submit(img2img_body(ref, steps=1))
        assert service.wait_task(task_id)["status"] == "succeeded"
        upload_key = f"inputs/{ref.removeprefix('upload:')}/file.png"
        assert bucket_keys(s3_server, env["S3_PREFIX"]) == [
            upload_key, f"outputs/{task_id}/0.png"]
        # When the task's record expires
        wait_until(lambda: service.http.get(f"/api/v1/tasks/{task_id}").status_code == 404, 20,
                   "the task record to expire")
        # Then its objects are deleted, and the upload, still within its TTL, stays
        wait_until(lambda: bucket_keys(s3_server, env["S3_PREFIX"]) == [upload_key], 20,
                   "the expired task's objects to be swept")
        assert service.http.post("/api/v1/generate",
                                 json=img2img_body(ref, steps=1)).status_code == 202
    finally:
        service.stop()
