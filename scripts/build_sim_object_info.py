"""Assembles comfyui_sim/data/object_info.json from the captured transcripts and plugin specs.

Run from the repository root with ../shared beside it:  python scripts/build_sim_object_info.py
Sources, in order of precedence: /object_info answers captured from a real ComfyUI 0.3.64
(shared/comfyui-protocol/server_info.json), the StoryDiffusion specs
(shared/storydiffusion/object_info.json) and, for the few core classes no transcript holds,
comfyui_sim/data/object_info_supplement.json (written from ComfyUI 0.3.64's nodes.py).
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


def main() -> int:
    merged: dict[str, dict] = {}
    merged.update(json.loads((DATA / "object_info_supplement.json").read_text()))
    merged.update(json.loads((SHARED / "storydiffusion" / "object_info.json").read_text()))
    merged.update(captured_object_info())
    out = DATA / "object_info.json"
    out.write_text(json.dumps(dict(sorted(merged.items())), indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}: {len(merged)} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
