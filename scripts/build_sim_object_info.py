"""Assembles comfyui_sim/data/object_info.json from the captured transcripts and plugin specs.

Run from the repository root with ../shared beside it:  python scripts/build_sim_object_info.py
Sources, in order of precedence: /object_info answers captured from a real ComfyUI 0.3.64
(shared/comfyui-protocol/server_info.json), the StoryDiffusion specs
(shared/storydiffusion/object_info.json) and, for the few core classes no transcript holds,
comfyui_sim/data/object_info_supplement.json (written from ComfyUI 0.3.64's nodes.py).

It also writes comfyui_sim/data/object_info_v0.33.0.json, what `--comfyui-version 0.33.0` serves:
the whole /object_info of a real ComfyUI 0.33.0 (shared/comfyui-protocol/newer/v0.33.0/
object_info_full.json, 634 classes) plus the custom nodes the simulator also runs (probe and
StoryDiffusion classes), given the keys 0.33.0 adds to every node.
"""

from __future__ import annotations

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA = ROOT / "comfyui_sim" / "data"


def captured_object_info() -> dict[str, dict]:
    server_info = json.loads((SHARED / "comfyui-protocol" / "server_info.json").read_text())
    found: dict[str, dict] = {}
    for exchange in server_info["http"]:
        body = exchange.get("response_body")
        if not isinstance(body, dict) or not exchange["path"].startswith("/object_info"):
            continue
        for name, spec in body.items():
            if not name.startswith("_") and isinstance(spec, dict) and spec:
                found.setdefault(name, spec)
    return found


# Keys ComfyUI 0.33.0 gives every node class, with the values a plain (V1) custom node gets.
V0_33_0_NODE_KEYS = {"is_input_list": False, "has_intermediate_output": False,
                     "search_aliases": []}


def object_info_v0_33_0(v0_3_64: dict[str, dict]) -> dict[str, dict]:
    full = SHARED / "comfyui-protocol" / "newer" / "v0.33.0" / "object_info_full.json"
    info: dict[str, dict] = json.loads(full.read_text())
    for name, spec in v0_3_64.items():
        if name not in info:  # a custom node of the simulated server, not a core class
            info[name] = {**spec, **V0_33_0_NODE_KEYS}
    return info


def write(name: str, info: dict[str, dict], indent: int | None, sort: bool) -> None:
    out = DATA / name
    out.write_text(json.dumps(dict(sorted(info.items())) if sort else info, indent=indent) + "\n")
    print(f"wrote {out.relative_to(ROOT)}: {len(info)} classes")


def main() -> int:
    merged: dict[str, dict] = {}
    merged.update(json.loads((DATA / "object_info_supplement.json").read_text()))
    merged.update(json.loads((SHARED / "storydiffusion" / "object_info.json").read_text()))
    merged.update(captured_object_info())
    write("object_info.json", merged, 1, sort=True)
    # The real server's order (registration order) is kept: clients may show it.
    write("object_info_v0.33.0.json", object_info_v0_33_0(merged), None, sort=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
