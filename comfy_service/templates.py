"""Workflow templates: typed parameters checked against their spec, rendered into a ComfyUI graph.

Pure: `resolve` turns request parameters into complete, valid values (or a list of field
errors); `render` writes them into a copy of the template's graph. Templates are data in
workflows/*.json (see workflows/README.md).
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from comfy_service.inputs import upload_id_of

WORKFLOWS_DIR = pathlib.Path(__file__).resolve().parent.parent / "workflows"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    graph: Mapping[str, Any]
    params: Mapping[str, Mapping[str, Any]]
    output_prefix: tuple[str, str]
    graph_json: str = ""  # the graph serialised once: json.loads copies it faster than deepcopy

    def public_params(self) -> dict[str, dict[str, Any]]:
        """The parameter specs as GET /api/v1/workflows shows them (no graph internals)."""
        shown = {}
        for name, spec in self.params.items():
            entry = {k: v for k, v in spec.items() if k not in ("targets", "line", "random_default")}
            entry["required"] = bool(spec.get("required"))
            entry.setdefault("default", None)
            shown[name] = entry
        return shown


def load_templates(directory: pathlib.Path = WORKFLOWS_DIR) -> dict[str, Template]:
    templates = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        templates[data["name"]] = Template(
            name=data["name"], description=data["description"], graph=data["graph"],
            params=data["params"], output_prefix=(data["output_prefix"][0], data["output_prefix"][1]),
            graph_json=json.dumps(data["graph"]))
    return templates


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_scalar(field: str, value: Any, spec: Mapping[str, Any]) -> tuple[Any, str | None]:
    kind = spec["type"]
    if kind == "string":
        if not isinstance(value, str):
            return None, "must be a string"
        if len(value) < spec.get("min_length", 0):
            return None, f"must be at least {spec['min_length']} characters"
        if "max_length" in spec and len(value) > spec["max_length"]:
            return None, f"must be at most {spec['max_length']} characters"
        if "pattern" in spec and not re.fullmatch(spec["pattern"], value):
            return None, "contains characters that are not allowed here (brackets, newlines, '#')"
        return value, None
    if kind == "image":
        if not isinstance(value, str) or upload_id_of(value) is None:
            return None, "must name an uploaded image as upload:<id> (POST /api/v1/uploads)"
        return value, None
    if kind == "enum":
        if value not in spec["choices"]:
            shown = ", ".join(spec["choices"][:12]) + (", ..." if len(spec["choices"]) > 12 else "")
            return None, f"must be one of: {shown}"
        return value, None
    if kind == "integer":
        if not _is_int(value):
            return None, "must be an integer"
    elif kind == "number":
        if not (_is_int(value) or isinstance(value, float)):
            return None, "must be a number"
        value = float(value)
    else:
        raise ValueError(f"unknown parameter type {kind!r} for {field}")
    if "min" in spec and value < spec["min"]:
        return None, f"must be >= {spec['min']}"
    if "max" in spec and value > spec["max"]:
        return None, f"must be <= {spec['max']}"
    if "multiple_of" in spec and value % spec["multiple_of"]:
        return None, f"must be a multiple of {spec['multiple_of']}"
    return value, None


def _check_list(field: str, value: Any, spec: Mapping[str, Any]) -> tuple[Any, list[FieldError]]:
    if not isinstance(value, list):
        return None, [FieldError(field, "must be a list")]
    errors = []
    if len(value) < spec.get("min_items", 0):
        errors.append(FieldError(field, f"needs at least {spec['min_items']} items"))
    if "max_items" in spec and len(value) > spec["max_items"]:
        errors.append(FieldError(field, f"takes at most {spec['max_items']} items"))
    items = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if not isinstance(item, dict):
            errors.append(FieldError(where, "must be an object"))
            continue
        for unknown in sorted(set(item) - set(spec["item"])):
            errors.append(FieldError(f"{where}.{unknown}", "unknown field"))
        clean = {}
        for key, item_spec in spec["item"].items():
            if key not in item:
                errors.append(FieldError(f"{where}.{key}", "is required"))
                continue
            checked, problem = _check_scalar(f"{where}.{key}", item[key], item_spec)
            if problem:
                errors.append(FieldError(f"{where}.{key}", problem))
            clean[key] = checked
        items.append(clean)
    unique = spec.get("unique")
    if unique:
        seen = [item.get(unique) for item in items]
        for index, name in enumerate(seen):
            if name is not None and seen.index(name) != index:
                errors.append(FieldError(f"{field}[{index}].{unique}", "is used twice"))
    return items, errors


def resolve(template: Template, params: Any, draw_seed: Callable[[int], int]
            ) -> tuple[dict[str, Any], list[FieldError]]:
    """Complete and check request parameters; `draw_seed(max)` picks absent random defaults."""
    if not isinstance(params, dict):
        return {}, [FieldError("params", "must be an object")]
    errors = [FieldError(f"params.{name}", "unknown parameter")
              for name in sorted(set(params) - set(template.params))]
    values: dict[str, Any] = {}
    for name, spec in template.params.items():
        field = f"params.{name}"
        if name not in params or params[name] is None:
            if spec.get("required"):
                errors.append(FieldError(field, "is required"))
            elif spec.get("random_default"):
                values[name] = draw_seed(int(spec["max"]))
            else:
                values[name] = copy.deepcopy(spec.get("default"))
            continue
        if spec["type"] == "list":
            values[name], list_errors = _check_list(field, params[name], spec)
            errors += list_errors
            continue
        values[name], problem = _check_scalar(field, params[name], spec)
        if problem:
            errors.append(FieldError(field, problem))
    if not errors:
        errors += _check_refs(template, values)
    return values, errors


def _check_refs(template: Template, values: Mapping[str, Any]) -> list[FieldError]:
    errors = []
    for name, spec in template.params.items():
        if spec["type"] != "list":
            continue
        for key, item_spec in spec["item"].items():
            if "ref" not in item_spec:
                continue
            ref_list, ref_key = item_spec["ref"].split(".")
            allowed = {item[ref_key] for item in values.get(ref_list) or []}
            for index, item in enumerate(values.get(name) or []):
                if item[key] not in allowed:
                    errors.append(FieldError(f"params.{name}[{index}].{key}",
                                             f"names no entry of {ref_list}"))
    return errors


def render(template: Template, values: Mapping[str, Any], output_prefix: str) -> dict[str, Any]:
    """The API-format graph for these (resolved) values."""
    graph: dict[str, Any] = json.loads(template.graph_json or json.dumps(template.graph))
    for name, spec in template.params.items():
        value = values[name]
        if spec["type"] == "list":
            value = "\n".join(spec["line"].format(**item) for item in value)
        for node_id, input_name in spec["targets"]:
            graph[node_id]["inputs"][input_name] = value
    node_id, input_name = template.output_prefix
    graph[node_id]["inputs"][input_name] = output_prefix
    return graph


def looks_like_ui_format(graph: Any) -> bool:
    """A workflow saved from the editor (nodes/links) rather than exported in API format."""
    return isinstance(graph, dict) and "nodes" in graph and "links" in graph
