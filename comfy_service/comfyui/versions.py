"""The protocol rules that differ between the ComfyUI server versions we speak to, keyed by version.

Each rule is a small pure function; `RULES[version]` picks the set a server of that version
follows (ComfyUI 0.3.64, the baseline, and 0.33.0: shared/comfyui-protocol/newer/README.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from comfy_service.comfyui.validation import missing_node_invalid_prompt, missing_node_type

V0_3_64 = "0.3.64"
V0_33_0 = "0.33.0"
DEFAULT_VERSION = V0_3_64

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

INVALID_PROMPT_ID_ERROR: Mapping[str, Any] = {
    "type": "invalid_prompt_id",
    "message": "prompt_id must be a valid UUID",
    "details": "prompt_id must be a UUID string in canonical lowercase hyphenated form; "
               "omit it to let the server generate one",
    "extra_info": {},
}


class InvalidPromptId(ValueError):
    """A client-chosen prompt_id the server refuses (400 invalid_prompt_id)."""

    def __init__(self, value: Any) -> None:
        super().__init__(f"not a canonical UUID: {value!r}")
        self.error = dict(INVALID_PROMPT_ID_ERROR)


def is_canonical_uuid(value: Any) -> bool:
    """True for the form str(uuid.UUID(x)) prints: lowercase hex, hyphenated 8-4-4-4-12."""
    return isinstance(value, str) and _CANONICAL_UUID.fullmatch(value) is not None


def prompt_id_stringified(body: Mapping[str, Any]) -> str | None:
    """0.3.64: any value is taken through str(), null included ("None"); None means mint one."""
    return str(body["prompt_id"]) if "prompt_id" in body else None


def prompt_id_canonical_uuid(body: Mapping[str, Any]) -> str | None:
    """0.33.0: null or absent lets the server mint one; anything but a canonical UUID is refused."""
    value = body.get("prompt_id")
    if value is None:
        return None
    if not is_canonical_uuid(value):
        raise InvalidPromptId(value)
    return str(value)


MissingNodeError = Callable[[str, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class ProtocolRules:
    """What a server of one version does with the same request."""

    version: str
    client_prompt_id: Callable[[Mapping[str, Any]], str | None]
    missing_node_error: MissingNodeError
    has_jobs_api: bool
    stamps_create_time: bool  # extra_data gains the queueing time in epoch ms


RULES: Mapping[str, ProtocolRules] = {
    V0_3_64: ProtocolRules(V0_3_64, prompt_id_stringified, missing_node_invalid_prompt,
                           has_jobs_api=False, stamps_create_time=False),
    V0_33_0: ProtocolRules(V0_33_0, prompt_id_canonical_uuid, missing_node_type,
                           has_jobs_api=True, stamps_create_time=True),
}
SUPPORTED_VERSIONS: tuple[str, ...] = tuple(RULES)


def rules_for(version: str) -> ProtocolRules:
    try:
        return RULES[version]
    except KeyError:
        raise ValueError(f"unsupported ComfyUI version {version!r}; "
                         f"supported: {', '.join(SUPPORTED_VERSIONS)}") from None
