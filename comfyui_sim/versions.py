"""What the simulated server looks like in each ComfyUI version it can pretend to be.

Data, not branches: a `SimProfile` per version, looked up once from the settings. The protocol
rules themselves (prompt ids, error bodies) live in comfy_service.comfyui.versions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from comfy_service.comfyui.versions import (
    DEFAULT_VERSION,
    RULES,
    V0_3_64,
    V0_33_0,
    ProtocolRules,
    rules_for,
)

_BASE_FEATURES: Mapping[str, Any] = {"supports_preview_metadata": True,
                                     "max_upload_size": 104857600}


@dataclass(frozen=True)
class SimProfile:
    """One ComfyUI version as the simulator serves it."""

    rules: ProtocolRules
    system: Mapping[str, Any]  # the fixed fields of /system_stats "system", in the real order
    features: Mapping[str, Any]  # GET /features and the WebSocket feature_flags reply
    object_info_file: str  # under comfyui_sim/data/
    cache_keeps_all: bool  # 0.33.0's RAM-pressure cache keeps every result, not only the last

    @property
    def version(self) -> str:
        return self.rules.version

    def queue_stamps(self, now_ms: int) -> dict[str, Any]:
        """What the server adds to a prompt's extra_data when it queues it."""
        return {"create_time": now_ms} if self.rules.stamps_create_time else {}


PROFILES: Mapping[str, SimProfile] = {
    V0_3_64: SimProfile(
        rules=RULES[V0_3_64],
        system={"os": os.name, "comfyui_version": V0_3_64,
                "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95", "required_templates_version": "0.1.95"},
        features=_BASE_FEATURES,
        object_info_file="object_info.json",
        cache_keeps_all=False,
    ),
    V0_33_0: SimProfile(
        rules=RULES[V0_33_0],
        system={"os": sys.platform, "comfyui_version": V0_33_0,
                "required_frontend_version": "1.49.6",
                "installed_templates_version": "0.11.44", "required_templates_version": "0.11.44",
                "comfy_package_versions": [
                    {"name": name, "installed": version, "required": version}
                    for name, version in (("comfyui-frontend-package", "1.49.6"),
                                          ("comfyui-workflow-templates", "0.11.44"),
                                          ("comfyui-embedded-docs", "0.5.10"),
                                          ("comfy-kitchen", "0.2.31"),
                                          ("comfy-aimdo", "0.4.13"))],
                "deploy_environment": "local-git"},
        features={"supports_preview_metadata": True, "supports_model_type_tags": True,
                  "max_upload_size": 104857600, "extension": {"manager": {"supports_v4": True}},
                  "node_replacements": True, "assets": False},
        object_info_file="object_info_v0.33.0.json",
        cache_keeps_all=True,
    ),
}
SUPPORTED_VERSIONS: tuple[str, ...] = tuple(PROFILES)
DEFAULT = DEFAULT_VERSION


def profile(version: str) -> SimProfile:
    rules_for(version)  # an unknown version fails with the protocol rules' own message
    return PROFILES[version]


def system_stats(prof: SimProfile, ram_total: int, ram_free: int,
                 argv: Sequence[str]) -> dict[str, Any]:
    """GET /system_stats of a CPU-only server of this version."""
    fixed = dict(prof.system)
    system: dict[str, Any] = {"os": fixed.pop("os"), "ram_total": ram_total, "ram_free": ram_free}
    deploy = {k: fixed.pop(k) for k in ("deploy_environment",) if k in fixed}
    system.update(fixed)
    system.update({"python_version": sys.version, "pytorch_version": "none (comfyui-sim)",
                   "embedded_python": False, **deploy, "argv": list(argv)})
    return {
        "system": system,
        "devices": [{"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total,
                     "vram_free": ram_free, "torch_vram_total": ram_total,
                     "torch_vram_free": ram_free}],
    }
