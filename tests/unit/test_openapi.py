"""GET /openapi.json: a valid OpenAPI 3.1 document that names every route, code and field (pure)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route

from actors.tasks import TaskRecord
from comfy_service import errors
from comfy_service.settings import Settings
from comfy_service.templates import Template, load_templates, resolve
from gateway import app as gateway_app
from gateway.generate import ALLOWED_KEYS, parse_generate
from gateway.openapi import REQUEST_ID_PATTERN, build_document
from tests.support.service import txt2img_body

TEMPLATES = load_templates()
DOCUMENT = build_document(TEMPLATES, max_body_bytes=1024)
# The least each template needs; a template added without an entry here fails the tests below.
MINIMAL_PARAMS: dict[str, dict[str, Any]] = {
    "txt2img": {"prompt": "a lighthouse"},
    "img2img": {"image": "upload:" + "ab" * 16, "prompt": "a lighthouse"},
    "storydiffusion": {"characters": [{"name": "Ann", "description": "red coat"}],
                       "scenes": [{"character": "Ann", "text": "on a hill"}]},
}


def schema_of(name: str) -> dict[str, Any]:
    """A component schema as a standalone JSON Schema (its $refs resolve in the document)."""
    return {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}


def is_valid(instance: Any, schema: dict[str, Any]) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(instance)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Route], Any]]:
    """The real app's routes and the document it serves (no Redis needed: nothing connects)."""
    settings = Settings(output_dir=tmp_path_factory.mktemp("outputs"), max_body_bytes=1024)
    app = gateway_app.create_app(settings, TEMPLATES)

    async def fetch() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gateway") as client:
            return await client.get("/openapi.json")
    answer = asyncio.run(fetch())
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    yield [r for r in app.routes if isinstance(r, Route)], answer.json()


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    errors_found = [e.message for e in OpenAPIV31SpecValidator(DOCUMENT).iter_errors()]
    assert errors_found == []


def test_the_app_serves_the_document_it_builds(served: tuple[list[Route], Any]) -> None:
    assert served[1] == DOCUMENT


def test_every_route_of_the_app_is_documented_and_nothing_else(
        served: tuple[list[Route], Any]) -> None:
    in_app = {(re.sub(r":\w+}", "}", route.path), method.lower())
              for route in served[0] for method in route.methods or () if method != "HEAD"}
    documented = {(path, method) for path, item in DOCUMENT["paths"].items() for method in item}
    assert documented == in_app


def _coded(base: type[errors.CodedError]) -> Iterator[type[errors.CodedError]]:
    for cls in base.__subclasses__():
        if "code" in vars(cls):
            yield cls
        yield from _coded(cls)


@pytest.mark.parametrize("cls", [errors.ServiceError, *_coded(errors.ServiceError)],
                         ids=lambda cls: cls.__name__)
def test_every_service_error_code_is_in_its_status_enum(cls: type[errors.ServiceError]) -> None:
    responses = DOCUMENT["components"]["responses"]
    (name,) = [name for name, response in responses.items()
               if response["content"]["application/json"]["schema"]["properties"]["error"]
               ["properties"]["code"]["enum"].count(cls.code)]
    assert name == f"Error{cls.status}"
    assert is_valid(cls("message", {"any": "details"}).as_body(),
                    responses[name]["content"]["application/json"]["schema"])
    statuses = {status for item in DOCUMENT["paths"].values() for operation in item.values()
                for status, response in operation["responses"].items()
                if response == {"$ref": f"#/components/responses/{name}"}}
    assert statuses == {str(cls.status)}  # some operation documents it


def test_every_task_failure_code_is_in_the_task_error_enum() -> None:
    enum = DOCUMENT["components"]["schemas"]["Task"]["properties"]["error"]["oneOf"][1][
        "properties"]["code"]["enum"]
    assert set(enum) == {errors.TaskFailure.code} | {cls.code for cls in _coded(errors.TaskFailure)}


def test_the_generate_forms_accept_exactly_the_allowed_keys() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    variants = [schemas[ref["$ref"].rsplit("/", 1)[1]]
                for ref in schemas["GenerateRequest"]["anyOf"]]
    assert set().union(*(variant["properties"] for variant in variants)) == ALLOWED_KEYS
    assert len(variants) == len(TEMPLATES) + 1


@pytest.mark.parametrize("body,valid", [
    (txt2img_body(), True),
    ({"workflow": "storydiffusion", "params": MINIMAL_PARAMS["storydiffusion"], "priority": 3,
      "timeout_s": 60}, True),
    ({"workflow_json": {"1": {"class_type": "SaveImage", "inputs": {}}}}, True),
    ({"params": {"prompt": "no workflow: txt2img"}}, True),
    ({"workflow": "storydiffusion", "params": {"prompt": "txt2img's params"}}, False),
    ({"workflow_json": {}}, False),
    ({"workflow_json": {"1": {"class_type": "X", "inputs": {}}}, "params": {}}, False),
    ({"workflow": "nope", "params": {}}, False),
    ({**txt2img_body(), "priority": 1001}, False),
    ({**txt2img_body(), "timeout_s": 0}, False),
    ({**txt2img_body(), "extra": 1}, False),
])
def test_generate_request_schema(body: dict[str, Any], valid: bool) -> None:
    assert is_valid(body, schema_of("GenerateRequest")) is valid


def test_a_task_record_matches_the_task_schema() -> None:
    record = TaskRecord(task_id="t", status="failed", graph={}, created_at="2025-01-01T00:00:00Z",
                        workflow="txt2img", params={"seed": 1}, node="n1",
                        progress={"value": 1, "max": 2, "fraction": 0.5}, attempts=2,
                        outputs=({"index": 0, "filename": "a.png", "node_id": "9",
                                  "kind": "image", "url": "/x", "content_type": "image/png",
                                  "bytes": 3, "sha256": "ab"},),
                        error=errors.TaskTimeout("too slow").as_error())
    assert is_valid(record.public(), schema_of("Task"))
    assert is_valid({**record.public(), "error": None, "progress": None}, schema_of("Task"))
    assert not is_valid({**record.public(), "surprise": 1}, schema_of("Task"))


def test_the_workflow_list_matches_its_schema() -> None:
    body = {"workflows": [{"name": t.name, "description": t.description,
                           "params": t.public_params()} for t in TEMPLATES.values()]}
    assert is_valid(body, schema_of("Workflows"))


def test_the_request_id_pattern_is_the_gateways() -> None:
    assert REQUEST_ID_PATTERN == gateway_app._REQUEST_ID.pattern


def _probes(spec: dict[str, Any]) -> list[Any]:
    """Values at and just past a parameter's bounds."""
    kind = spec["type"]
    if kind == "enum":
        return [spec["choices"][0], spec["choices"][-1], "not-a-choice", 1]
    if kind == "string":
        low, high = spec.get("min_length", 0), spec.get("max_length", 50)
        return ["a" * low, "a" * max(low - 1, 0), "a" * high, "a" * (high + 1), "[x]", "a\nb", 5]
    if kind in ("integer", "number"):
        step = spec.get("multiple_of", 1)
        low, high = spec.get("min", -10), spec.get("max", 10)
        return [low, high, low - step, high + step, low + step, low + step / 2, low + 1, "1", True]
    if kind == "list":
        return [[], "x", [{}], [{"extra": 1}]]
    if kind == "image":
        return ["upload:" + "0f" * 16, "upload:" + "0F" * 16, "upload:", "cat.png", 1]
    raise AssertionError(f"no probes for {kind}")


def _params_cases() -> Iterator[tuple[str, str, Any]]:
    for template in TEMPLATES.values():
        for name, spec in template.params.items():
            for value in _probes(dict(spec)):
                yield template.name, name, value


@pytest.mark.parametrize("workflow,param,value", list(_params_cases()))
def test_params_schema_agrees_with_the_templates_checks(workflow: str, param: str,
                                                        value: Any) -> None:
    template: Template = TEMPLATES[workflow]
    params = {**MINIMAL_PARAMS[workflow], param: value}
    values, problems = resolve(template, params, lambda limit: 0)
    accepted = not problems
    assert is_valid(params, schema_of(f"Params.{workflow}")) is accepted, problems


def test_the_document_names_the_body_limit() -> None:
    assert "1024 bytes" in DOCUMENT["components"]["responses"]["Error413"]["description"]


@pytest.mark.parametrize("body,field", [
    ({"params": {"prompt": "x", "cfg": float("nan")}}, "params.cfg"),
    ({"params": {"prompt": "x"}, "timeout_s": float("inf")}, "timeout_s"),
    ({"workflow_json": {"1": {"class_type": "X", "inputs": {"a": [float("-inf")]}}}},
     "workflow_json.1.inputs.a[0]"),
])
def test_nan_and_infinity_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    # The document promises JSON numbers; Python's json also reads NaN and Infinity, and a NaN
    # passed every bound (found while fuzzing: GET of such a task answered 500).
    with pytest.raises(errors.ValidationFailed) as refused:
        parse_generate(body, TEMPLATES, {"X": {}}, lambda limit: 0, "t")
    assert {"field": field, "message": "must be a finite number (NaN and Infinity are not JSON)"} \
        in refused.value.details["fields"]
