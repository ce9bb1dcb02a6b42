"""What each simulated node class does: its outputs, its cost in time, its progress reports.

Node values are small stand-ins (a MODEL is its checkpoint name, a LATENT its size and seed) and
IMAGEs are drawing recipes; only the output nodes write real files. The media classes (animated
images, video, audio) are in comfyui_sim.media_nodes.
"""

from __future__ import annotations

import pathlib
import re
import secrets
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from comfy_service.comfyui.object_info import NodeClass
from comfyui_sim import images
from comfyui_sim.images import Frame


class NodeContext(Protocol):
    node_id: str
    node_class: NodeClass  # the spec the server serves for the node's class, version's own
    prompt_id: str
    prompt: dict[str, Any]
    step_seconds: float
    output_dir: pathlib.Path
    temp_dir: pathlib.Path
    input_dir: pathlib.Path
    previews: bool
    cheap_images: bool  # --cheap-images: image outputs cost nothing to make

    async def progress(self, value: int, total: int, preview: bytes | None = None) -> None: ...

    async def pause(self, seconds: float, interruptible: bool = True,
                    pixels: int | None = None) -> None:
        """Wait `seconds`; with `pixels` (what one step samples) that is GPU time as if alone,
        stretched while other nodes sample on a GPU this node shares (--gpu-id)."""

    def on_gpu(self) -> AbstractContextManager[None]:
        """Count as sampling on a shared GPU throughout, between steps too."""


@dataclass(frozen=True)
class NodeOutput:
    values: tuple[Any, ...]
    ui: dict[str, Any] | None = None


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    batch: int
    seed: int | None = None
    texts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conditioning:
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Model:
    name: str
    loras: tuple[str, ...] = ()


Behaviour = Callable[[NodeContext, dict[str, Any]], Awaitable[NodeOutput]]
BEHAVIOURS: dict[str, Behaviour] = {}


def behaviour(*class_names: str) -> Callable[[Behaviour], Behaviour]:
    def register(func: Behaviour) -> Behaviour:
        for name in class_names:
            BEHAVIOURS[name] = func
        return func
    return register


async def _sample(ctx: NodeContext, steps: int, seed: int, positive: Conditioning,
                  latent: Latent, preview: bool) -> Latent:
    pixels = latent.width * latent.height * latent.batch
    with ctx.on_gpu():
        for step in range(1, steps + 1):
            # ComfyUI looks at the interrupt flag in its progress hook, as a step ends: a step
            # under way finishes first (in the captures an interrupt took effect one step, 0.9 s,
            # after its request, and a queue delete sent in that window still caught the next
            # prompt).
            await ctx.pause(ctx.step_seconds, interruptible=False, pixels=pixels)
            text = positive.texts[0] if positive.texts else ""
            frame = images.jpeg_preview(seed, text, step) if preview and ctx.previews else None
            await ctx.progress(step, steps, frame)
    return replace(latent, seed=seed, texts=positive.texts)


@behaviour("CheckpointLoaderSimple")
async def checkpoint_loader(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    model = Model(i["ckpt_name"])
    return NodeOutput((model, model, model))


@behaviour("LoraLoader")
async def lora_loader(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    model = replace(i["model"], loras=i["model"].loras + (i["lora_name"],))
    return NodeOutput((model, i["clip"]))


@behaviour("CLIPTextEncode")
async def clip_text_encode(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    return NodeOutput((Conditioning((i["text"],)),))


@behaviour("EmptyLatentImage")
async def empty_latent(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    return NodeOutput((Latent(i["width"], i["height"], i["batch_size"]),))


@behaviour("KSampler")
async def ksampler(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    latent = await _sample(ctx, i["steps"], i["seed"], i["positive"], i["latent_image"], True)
    return NodeOutput((latent,))


@behaviour("KSamplerAdvanced")
async def ksampler_advanced(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    steps = max(0, min(i["end_at_step"], i["steps"]) - i["start_at_step"])
    latent = await _sample(ctx, steps, i["noise_seed"], i["positive"], i["latent_image"], True)
    return NodeOutput((latent,))


@behaviour("VAEDecode")
async def vae_decode(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    latent: Latent = i["samples"]
    frames = [
        images.generated(latent.width, latent.height, latent.seed or 0,
                         latent.texts[n % len(latent.texts)] if latent.texts else "", n)
        for n in range(latent.batch)
    ]
    return NodeOutput((frames,))


@behaviour("VAEEncode")
async def vae_encode(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    frames: list[Frame] = i["pixels"]
    return NodeOutput((Latent(frames[0].width, frames[0].height, len(frames)),))


async def not_simulated(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    """A class /object_info lists (0.33.0 lists all 634 captured) but the simulator cannot run."""
    raise NotImplementedError(f"comfyui-sim does not simulate {ctx.prompt[ctx.node_id]['class_type']}")


@behaviour("SaveImage")
async def save_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    saved = images.save_frames(i["images"], ctx.output_dir, i["filename_prefix"], "output",
                               ctx.prompt, cheap=ctx.cheap_images)
    # 0.33.0 declares the saved images as an output; 0.3.64 declares none, so nothing links it.
    return NodeOutput((i["images"],), {"images": saved})


@behaviour("PreviewImage")
async def preview_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    prefix = "ComfyUI_temp_" + "".join(secrets.choice("abcdefghijklmnopqrstupvxyz")
                                       for _ in range(5))
    saved = images.save_frames(i["images"], ctx.temp_dir, prefix, "temp", ctx.prompt,
                               compress_level=1, cheap=ctx.cheap_images)
    return NodeOutput((), {"images": saved})


@behaviour("LoadImage")
async def load_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    frame = images.loaded(ctx.input_dir / i["image"])
    return NodeOutput(([frame], ("mask", frame.width, frame.height)))


@behaviour("EmptyImage")
async def empty_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    frame = images.solid(i["width"], i["height"], i["color"])
    return NodeOutput(([frame] * i["batch_size"],))


@behaviour("ImageInvert")
async def image_invert(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    return NodeOutput(([images.with_step(f, ("invert",)) for f in i["image"]],))


# A real 1024x1024 blur with radius 15 took about 350 ms on the capture machine's CPU.
BLUR_PIXEL_RADIUS_PER_S = 1024 * 1024 * 15 / 0.35


@behaviour("ImageBlur")
async def image_blur(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    step = ("blur", i["blur_radius"], i["sigma"])
    pixels = sum(f.width * f.height for f in i["image"])
    await ctx.pause(pixels * i["blur_radius"] / BLUR_PIXEL_RADIUS_PER_S)
    return NodeOutput(([images.with_step(f, step) for f in i["image"]],))


@behaviour("ImageScale")
async def image_scale(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    scaled = []
    for frame in i["image"]:
        width, height = i["width"], i["height"]
        if width == 0 and height == 0:
            scaled.append(frame)
            continue
        width = width or max(1, round(frame.width * height / frame.height))
        height = height or max(1, round(frame.height * width / frame.width))
        scaled.append(images.with_step(frame, ("scale", width, height), (width, height)))
    return NodeOutput((scaled,))


@behaviour("ProbeSleep")
async def probe_sleep(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    # The capture server's probe node: sleeps steps x step_seconds, one progress per step.
    for step in range(1, i["steps"] + 1):
        await ctx.pause(i["step_seconds"])
        await ctx.progress(step, i["steps"])
    return NodeOutput((i["image"],))


@behaviour("ProbeFail")
async def probe_fail(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    raise RuntimeError(i["message"])


# --- StoryDiffusion plugin (story mode, text to image) -------------------------------------

_BRACKETS = re.compile(r"\[([^\]]*)\]")


def story_scenes(role_text: str, scene_text: str) -> list[tuple[str, str]]:
    """(character, prompt) per image, in the plugin's order: grouped by character.

    Only lines naming exactly one defined character give an image in story mode; a two-character
    line gives none; the description replaces the bracketed name; text after '#' is a caption.
    """
    roles: dict[str, str] = {}
    for line in role_text.splitlines():
        match = _BRACKETS.search(line)
        if match and match.group(1) not in roles:
            roles[match.group(1)] = line[match.end():].strip()
    per_role: dict[str, list[str]] = {name: [] for name in roles}
    for line in scene_text.splitlines():
        names = _BRACKETS.findall(line)
        if len(names) != 1 or names[0] not in roles:
            continue
        scene = _BRACKETS.sub(roles[names[0]], line.split("#")[0]).strip()
        per_role[names[0]].append(scene)
    return [(name, scene) for name, scenes in per_role.items() for scene in scenes]


@behaviour("EasyFunction_Lite")
async def easy_function(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    return NodeOutput((None, None, {"lora": i["lora1"], "lora2": i["lora2"]}))


@behaviour("StoryDiffusion_Apply")
async def story_apply(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    pipeline = Model(f"story:{i['model'].name}")
    return NodeOutput((pipeline, {"infer_mode": i["infer_mode"]}))


@behaviour("StoryDiffusion_CLIPTextEncode")
async def story_clip_encode(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    scenes = story_scenes(i["role_text"], i["scene_text"])
    positive = Conditioning(tuple(scene + i["pos_text"] for _, scene in scenes))
    negative = Conditioning((i["neg_text"],))
    return NodeOutput((positive, negative, {"scenes": scenes}, i["width"], i["height"]))


@behaviour("StoryDiffusion_KSampler")
async def story_ksampler(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    positive: Conditioning = i["positive"]
    if not positive.texts:
        raise ValueError("No valid scene line: each scene line must name one defined character.")
    # The plugin samples with a diffusers pipeline whose progress goes to a console tqdm bar,
    # so a real server sends no `progress` message while this node runs.
    latent: Latent = i["latent_image"]
    await ctx.pause(ctx.step_seconds * i["steps"] * len(positive.texts),
                    pixels=latent.width * latent.height)  # one image at a time
    return NodeOutput((Latent(latent.width, latent.height, len(positive.texts), i["seed"],
                              positive.texts),))


@behaviour("Comic_Type")
async def comic_type(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    return NodeOutput((i["image"],))


@behaviour("Pre_Translate_prompt")
async def pre_translate(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    keep = i["keep_character_name"]
    lines = []
    for line in i["scene_prompts"].splitlines():
        text = line.split("#")[-1] if "#" in line else line
        text = text.replace("[NC]", "")
        text = _BRACKETS.sub(r"\1" if keep else "", text)
        lines.append(text.strip())
    return NodeOutput(("".join(lines),))
