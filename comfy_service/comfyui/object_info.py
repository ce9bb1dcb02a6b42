"""Typed view of a ComfyUI node's GET /object_info answer: node classes and their inputs.

ComfyUI's own data model, shared by the gateway (which validates custom graphs against a real
node's answer) and the simulator (which serves one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a node class."""

    name: str
    type: str | tuple[Any, ...]  # a type name such as "INT", or the choices of a combo
    options: Mapping[str, Any]
    required: bool

    @property
    def config(self) -> list[Any]:
        """The [type, options] pair ComfyUI echoes back as `input_config` in errors."""
        kind: Any = list(self.type) if isinstance(self.type, tuple) else self.type
        return [kind, dict(self.options)]


@dataclass(frozen=True)
class NodeClass:
    name: str
    inputs: Mapping[str, InputSpec]
    outputs: tuple[str, ...]
    output_node: bool
    spec: Mapping[str, Any] = field(repr=False)


def _input_spec(name: str, entry: list[Any], required: bool) -> InputSpec:
    kind = entry[0]
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    return InputSpec(
        name=name,
        type=tuple(kind) if isinstance(kind, list) else kind,
        options=options,
        required=required,
    )


def parse_object_info(info: dict[str, dict[str, Any]]) -> dict[str, NodeClass]:
    """Typed view of an /object_info answer, as validation and execution use it."""
    classes: dict[str, NodeClass] = {}
    for name, spec in info.items():
        inputs: dict[str, InputSpec] = {}
        for section in ("required", "optional"):
            for input_name, entry in (spec.get("input") or {}).get(section, {}).items():
                inputs[input_name] = _input_spec(input_name, entry, section == "required")
        classes[name] = NodeClass(
            name=name,
            inputs=inputs,
            outputs=tuple(spec.get("output") or ()),
            output_node=bool(spec.get("output_node")),
            spec=spec,
        )
    return classes
