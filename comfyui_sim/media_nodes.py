"""What the media node classes do: animated images, video and audio, made and saved.

Their UI outputs are exactly what ComfyUI 0.3.64 puts in `executed` and /history (its
comfy_extras nodes_images, nodes_video and nodes_audio, and comfy_api's ui.PreviewVideo).
Importing this module registers the behaviours (comfyui_sim.executor does).
"""

from __future__ import annotations

import secrets
from typing import Any

from comfy_service.comfyui.object_info import NodeClass
from comfyui_sim import media
from comfyui_sim.images import Frame
from comfyui_sim.media import Audio, AudioLatent, Video
from comfyui_sim.nodes import NodeContext, NodeOutput, behaviour

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
AUDIO_SAMPLE_RATE = 44100  # Stable Audio's VAE: 2048 stereo samples per latent frame
AUDIO_SAMPLES_PER_LATENT = 2048
AUDIO_CHANNELS = 2


def _choices(node_class: NodeClass, input_name: str) -> list[str]:
    """The keys a COMBO (0.3.64) or dynamic combo (0.33.0) input offers, from its spec."""
    spec = node_class.inputs.get(input_name)
    options = spec.options.get("options", []) if spec is not None else []
    return [o if isinstance(o, str) else o.get("key") for o in options]


@behaviour("SaveAnimatedWEBP")
async def save_animated_webp(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    frames: list[Frame] = i["images"]
    saved = media.save_animated_webp(frames, ctx.output_dir, i["filename_prefix"], i["fps"],
                                     i["lossless"], i["quality"], WEBP_METHODS[i["method"]],
                                     ctx.prompt)
    # 0.3.64 computes `animated = num_frames != 1`: a single frame is reported as not animated.
    return NodeOutput((frames,), {"images": [saved], "animated": [len(frames) != 1]})


@behaviour("SaveAnimatedPNG")
async def save_animated_png(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    frames: list[Frame] = i["images"]
    saved = media.save_animated_png(frames, ctx.output_dir, i["filename_prefix"], i["fps"],
                                    i["compress_level"], ctx.prompt)
    return NodeOutput((frames,), {"images": [saved], "animated": [True]})


@behaviour("SaveWEBM")
async def save_webm(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    frames: list[Frame] = i["images"]
    # The codec is a V3 COMBO, which validation does not check: an unknown one fails here,
    # with the KeyError of the real node's codec_map lookup.
    codec_id = media.WEBM_CODECS[i["codec"]]
    saved = media.save_video_file(frames, i["fps"], ctx.output_dir, i["filename_prefix"],
                                  "webm", ctx.prompt, codec_id)
    return NodeOutput((frames,), {"images": [saved], "animated": [True]})


@behaviour("CreateVideo")
async def create_video(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    return NodeOutput((Video(tuple(i["images"]), i["fps"], i.get("audio")),))


@behaviour("SaveVideo")
async def save_video(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    video: Video = i["video"]
    # 0.3.64 offers auto/mp4, 0.33.0 adds mkv and webm (as a dynamic combo, unvalidated).
    container = i.get("format", "auto")
    if container not in _choices(ctx.node_class, "format"):
        raise ValueError(f"'{container}' is not a valid VideoContainer")
    saved = media.save_video_file(list(video.frames), video.fps, ctx.output_dir,
                                  i["filename_prefix"], container, ctx.prompt)
    return NodeOutput((video,), {"images": [saved], "animated": [True]})


@behaviour("EmptyLatentAudio")
async def empty_latent_audio(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    length = round((i["seconds"] * AUDIO_SAMPLE_RATE / AUDIO_SAMPLES_PER_LATENT) / 2) * 2
    return NodeOutput((AudioLatent(length, i["batch_size"]),))


@behaviour("VAEDecodeAudio")
async def vae_decode_audio(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    latent = i["samples"]
    if not isinstance(latent, AudioLatent):
        raise RuntimeError("comfyui-sim decodes audio only from an audio latent "
                           "(EmptyLatentAudio)")
    return NodeOutput((Audio(latent.batch, AUDIO_CHANNELS,
                             latent.length * AUDIO_SAMPLES_PER_LATENT, AUDIO_SAMPLE_RATE),))


@behaviour("SaveAudio")
async def save_audio(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    saved = media.save_audio(i["audio"], ctx.output_dir, i["filename_prefix"], "output", "flac",
                             ctx.prompt)
    return NodeOutput((i["audio"],), {"audio": saved})


@behaviour("SaveAudioMP3")
async def save_audio_mp3(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    saved = media.save_audio(i["audio"], ctx.output_dir, i["filename_prefix"], "output", "mp3",
                             ctx.prompt, i["quality"])
    return NodeOutput((i["audio"],), {"audio": saved})


@behaviour("PreviewAudio")
async def preview_audio(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    # ComfyUI's PreviewAudio is SaveAudio into temp/ with "_temp_" and five random letters
    # (from its own alphabet) appended to the default prefix.
    prefix = "ComfyUI_temp_" + "".join(secrets.choice("abcdefghijklmnopqrstupvxyz")
                                       for _ in range(5))
    saved = media.save_audio(i["audio"], ctx.temp_dir, prefix, "temp", "flac", ctx.prompt)
    return NodeOutput((i["audio"],), {"audio": saved})
