"""POST /prompt validation with the rules, order and error bodies of ComfyUI 0.3.64.

The one body that changed in 0.33.0 (an unknown class_type) is chosen by the caller through
`missing_node` (comfy_service.comfyui.versions picks it per server version).

Pure: takes the submitted graph and the known node classes, returns what the server answers.
Like the real server it normalises constant inputs in place (8 -> 8.0 for a FLOAT), which is why
history shows converted values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from comfy_service.comfyui.object_info import InputSpec, NodeClass


class PromptCrash(Exception):
    """A graph that makes the real server raise: it answers a bare 500."""


class _InnerFailure(Exception):
    """A Python error the real validator would hit while following a link."""

    def __init__(self, exception_type: str, message: str, code_line: str) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message
        self.traceback = [
            '  File "<comfyui>/execution.py", line 808, in validate_inputs\n'
            "    r = await validate_inputs(prompt_id, prompt, o_id, validated)\n",
            f'  File "<comfyui>/execution.py", line 790, in validate_inputs\n    {code_line}\n',
        ]


@dataclass(frozen=True)
class Validation:
    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any] = field(default_factory=dict)


def _prompt_error(kind: str, message: str, details: str) -> Validation:
    error = {"type": kind, "message": message, "details": details, "extra_info": {}}
    return Validation(ok=False, error=error, outputs=[], node_errors={})


def missing_node_invalid_prompt(node_id: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """ComfyUI 0.3.64's error for a class_type it does not know."""
    return {"type": "invalid_prompt",
            "message": f"Cannot execute because node {node['class_type']} does not exist.",
            "details": f"Node ID '#{node_id}'", "extra_info": {}}


def missing_node_type(node_id: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """ComfyUI 0.33.0's error for a class_type it does not know (a custom node not installed)."""
    class_type = node["class_type"]
    meta = node.get("_meta")
    title = meta.get("title", class_type) if isinstance(meta, dict) else class_type
    return {"type": "missing_node_type",
            "message": f"Node '{class_type}' not found. The custom node may not be installed.",
            "details": f"Node ID '#{node_id}'",
            "extra_info": {"node_id": str(node_id), "class_type": class_type, "node_title": title}}


def _input_error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _types_compatible(received: Any, expected: Any) -> bool:
    if received == expected or received == "*" or expected == "*":
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool(set(received.split(",")) & set(expected.split(",")))


_CONVERTERS: dict[str, Any] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
# ComfyUI 0.33.0's V3 dynamic inputs: the server expands them into other inputs (autogrow
# `images.image0`..., a dynamic combo's sub-inputs) or resolves their type from a link, by
# rules no /object_info answer states fully. They are left for the server to check.
DYNAMIC_V3_TYPES = frozenset({"COMFY_AUTOGROW_V3", "COMFY_DYNAMICCOMBO_V3", "COMFY_MATCHTYPE_V3"})


class _Validator:
    def __init__(self, prompt: dict[str, Any], classes: Mapping[str, NodeClass],
                 file_exists: Any) -> None:
        self.prompt = prompt
        self.classes = classes
        self.file_exists = file_exists
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def _linked_type(self, link: list[Any]) -> Any:
        source_id, slot = link
        try:
            source = self.prompt[source_id]
        except (KeyError, TypeError) as exc:
            raise _InnerFailure("KeyError", repr(str(source_id)) if isinstance(source_id, str)
                                else repr(source_id),
                                "o_class_type = prompt[o_id]['class_type']") from exc
        outputs = self.classes[source["class_type"]].outputs
        try:
            return outputs[slot]
        except IndexError as exc:
            raise _InnerFailure("IndexError", "tuple index out of range",
                                "received_type = r[val[1]]") from exc
        except TypeError as exc:
            raise _InnerFailure("TypeError", str(exc), "received_type = r[val[1]]") from exc

    def _check_constant(self, inputs: dict[str, Any], spec: InputSpec,
                        class_name: str) -> dict[str, Any] | None:
        name, value = spec.name, inputs[spec.name]
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        convert = _CONVERTERS.get(spec.type) if isinstance(spec.type, str) else None
        if convert is not None:
            try:
                value = inputs[name] = convert(value)
            except Exception as exc:  # exactly what int()/float() raise is echoed back
                return _input_error(
                    "invalid_input_type", f"Failed to convert an input value to a {spec.type} value",
                    f"{name}, {value}, {exc}", input_name=name, input_config=spec.config,
                    received_value=value, exception_message=str(exc))
        if class_name == "LoadImage" and name == "image":
            # LoadImage declares VALIDATE_INPUTS, which replaces the combo check.
            if self.file_exists(value):
                return None
            return _input_error("custom_validation_failed", "Custom validation failed for node",
                                f"image - Invalid image file: {value}", input_name="image")
        try:
            if "min" in spec.options and value < spec.options["min"]:
                return _input_error(
                    "value_smaller_than_min",
                    f"Value {value} smaller than min of {spec.options['min']}", name,
                    input_name=name, input_config=spec.config, received_value=value)
            if "max" in spec.options and value > spec.options["max"]:
                return _input_error(
                    "value_bigger_than_max",
                    f"Value {value} bigger than max of {spec.options['max']}", name,
                    input_name=name, input_config=spec.config, received_value=value)
        except TypeError as exc:
            raise PromptCrash(str(exc)) from exc
        if isinstance(spec.type, tuple) and value not in spec.type:
            choices = list(spec.type)
            big = len(choices) > 20
            listed = f"(list of length {len(choices)})" if big else str(choices)
            return _input_error(
                "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}",
                input_name=name, input_config=None if big else spec.config, received_value=value)
        return None

    def validate_node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.prompt[node_id]
        node_class = self.classes[node["class_type"]]
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            raise PromptCrash("inputs is not an object")
        errors: list[dict[str, Any]] = []
        valid = True
        for spec in node_class.inputs.values():
            if isinstance(spec.type, str) and spec.type in DYNAMIC_V3_TYPES:
                continue
            if spec.name not in inputs:
                if spec.required:
                    errors.append(_input_error("required_input_missing", "Required input is missing",
                                               spec.name, input_name=spec.name))
                continue
            value = inputs[spec.name]
            if not isinstance(value, list):
                error = self._check_constant(inputs, spec, node_class.name)
                if error is not None:
                    errors.append(error)
                continue
            if len(value) != 2:
                errors.append(_input_error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    spec.name, input_name=spec.name, input_config=spec.config,
                    received_value=value))
                continue
            received = self._linked_type(value)
            if not _types_compatible(received, spec.type):
                errors.append(_input_error(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{spec.name}, received_type({received}) mismatch input_type({spec.type})",
                    input_name=spec.name, input_config=spec.config, received_type=received,
                    linked_node=value))
                continue
            try:
                upstream_ok, _ = self.validate_node(value[0])
            except _InnerFailure as exc:
                valid = False
                self.validated[value[0]] = (False, [_input_error(
                    "exception_during_inner_validation", "Exception when validating inner node",
                    exc.message, input_name=spec.name, input_config=spec.config,
                    exception_message=exc.message, exception_type=exc.exception_type,
                    traceback=exc.traceback, linked_node=value)])
                continue
            if not upstream_ok:
                valid = False
        result = (valid and not errors, errors)
        self.validated[node_id] = result
        return result


def _node_has_class_type(node: Any) -> bool:
    if isinstance(node, dict):
        return "class_type" in node
    if isinstance(node, (list, str)):
        if "class_type" in node:  # the real server then indexes it and raises
            raise PromptCrash("node is not an object")
        return False
    # `'class_type' in 3` raises TypeError in the real server: a bare 500 (validation case d).
    raise PromptCrash("argument is not iterable")


def validate_prompt(prompt: Any, classes: Mapping[str, NodeClass],
                    partial_targets: list[str] | None = None,
                    file_exists: Any = lambda name: False,
                    missing_node: Callable[[str, Mapping[str, Any]], dict[str, Any]]
                    = missing_node_invalid_prompt) -> Validation:
    """Validate an API-format graph; raises PromptCrash where the real server answers 500."""
    if not isinstance(prompt, dict):
        raise PromptCrash("prompt is not an object")
    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not _node_has_class_type(node):
            return _prompt_error("invalid_prompt",
                                 "Cannot execute because a node is missing the class_type property.",
                                 f"Node ID '#{node_id}'")
        class_type = node["class_type"]
        try:
            node_class = classes.get(class_type)
        except TypeError as exc:
            raise PromptCrash("class_type is not hashable") from exc
        if node_class is None:
            return Validation(ok=False, error=missing_node(node_id, node), outputs=[])
        if node_class.output_node and (partial_targets is None or node_id in partial_targets):
            outputs.append(node_id)
    if not outputs:
        return _prompt_error("prompt_no_outputs", "Prompt has no outputs", "")

    validator = _Validator(prompt, classes, file_exists)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    for output_id in outputs:
        try:
            ok, reasons = validator.validate_node(output_id)
        except _InnerFailure as exc:
            ok, reasons = False, [_input_error(
                "exception_during_validation", "Exception when validating node", exc.message,
                exception_type=exc.exception_type, traceback=exc.traceback)]
            validator.validated[output_id] = (False, reasons)
        if ok:
            good.append(output_id)
            continue
        failed.append((output_id, reasons))
        # Like the real server, every failing node seen so far is charged to this output.
        for node_id, (node_ok, node_reasons) in validator.validated.items():
            if node_ok or not node_reasons:
                continue
            entry = node_errors.setdefault(node_id, {
                "errors": node_reasons, "dependent_outputs": [],
                "class_type": prompt[node_id]["class_type"]})
            entry["dependent_outputs"].append(output_id)

    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, rs in failed for r in rs)
        error = {"type": "prompt_outputs_failed_validation",
                 "message": "Prompt outputs failed validation", "details": details,
                 "extra_info": {}}
        return Validation(ok=False, error=error, outputs=[], node_errors=node_errors)
    return Validation(ok=True, error=None, outputs=good, node_errors=node_errors)
