"""A small test client for a ComfyUI-compatible server: submit over HTTP, follow over WebSocket."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets


@dataclass
class Run:
    prompt_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages if m["type"] == kind]

    @property
    def terminal(self) -> str:
        kinds = [m["type"] for m in self.messages]
        for kind in ("execution_success", "execution_error", "execution_interrupted"):
            if kind in kinds:
                return kind
        return "none"


async def run_prompt(base_url: str, prompt: dict[str, Any], timeout: float = 30,
                     on_message: Any = None, **extra: Any) -> Run:
    """Submit `prompt` with a fresh client id and collect its messages until executing(null)."""
    client_id = uuid.uuid4().hex
    ws_url = "ws" + base_url[4:] + f"/ws?clientId={client_id}"
    async with websockets.connect(ws_url, open_timeout=10) as ws:
        await ws.recv()  # the status hello
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            answer = await client.post("/prompt", json={"prompt": prompt, "client_id": client_id,
                                                       **extra})
            answer.raise_for_status()
            run = Run(answer.json()["prompt_id"])

            async def follow() -> None:
                async for frame in ws:
                    if isinstance(frame, bytes):
                        continue
                    message = json.loads(frame)
                    run.messages.append(message)
                    if on_message is not None:
                        await on_message(client, run, message)
                    data = message["data"]
                    if message["type"] == "executing" and data.get("node") is None \
                            and data.get("prompt_id") == run.prompt_id:
                        return
            await asyncio.wait_for(follow(), timeout)
    return run


def txt2img(steps: int = 3, width: int = 320, height: int = 256, seed: int = 7,
            batch: int = 1) -> dict[str, Any]:
    """An API-format txt2img graph for the simulator (SDXL checkpoint, one saved image)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple",
              "inputs": {"ckpt_name": "juggernautXL_v8Rundiffusion.safetensors"}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": width, "height": height, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0],
            "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t2i", "images": ["8", 0]}},
    }
