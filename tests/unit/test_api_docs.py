"""The OpenAPI schema teaches: summaries, descriptions, the bearer key, the error shape."""

from __future__ import annotations

from typing import Any

import pytest

from app.api.main import create_app

ERROR_REF = "#/components/schemas/ErrorResponse"
OPENAI_ERROR_REF = "#/components/schemas/OpenAIErrorResponse"
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return create_app().openapi()


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if method in METHODS
    ]


def test_the_schema_has_a_bearer_scheme_on_every_v1_call(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearerAuth"].items()
    for _, path, op in _operations(schema):
        if path.startswith("/v1/"):
            assert op["security"] == [{"bearerAuth": []}], path
            names = [p["name"].lower() for p in op.get("parameters", [])]
            assert "authorization" not in names, path


def test_every_operation_has_a_summary_and_a_description(schema: dict[str, Any]) -> None:
    missing = [
        f"{method} {path}"
        for method, path, op in _operations(schema)
        if not op.get("summary") or not op.get("description")
    ]
    assert missing == []


def test_error_answers_are_documented_with_the_error_shape(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    detail = schema["components"]["schemas"]["ErrorDetail"]
    assert set(detail["properties"]) == {"code", "message"}
    seen: set[str] = set()
    for method, path, op in _operations(schema):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                seen.add(status)
                ref = response["content"]["application/json"]["schema"]["$ref"]
                # /openai/v1 answers in OpenAI's error shape, which its client reads.
                expected = OPENAI_ERROR_REF if path.startswith("/openai/") else ERROR_REF
                assert ref == expected, f"{method} {path} {status}"
        if path.startswith("/v1/"):
            assert {"401", "422", "429", "503"} <= set(op["responses"]), path
    assert {"401", "404", "409", "413", "422", "429", "503"} <= seen


def _openai_shapes() -> set[str]:
    """The /openai/v1 bodies are OpenAI's objects, field for field: OpenAI's API reference
    documents them, so the farm does not describe each field again."""
    import inspect

    from pydantic import BaseModel

    from app.schemas import openai

    return {
        name
        for name, value in vars(openai).items()
        if inspect.isclass(value) and issubclass(value, BaseModel)
    }


def test_fields_have_descriptions_and_requests_have_examples(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    openai_shapes = _openai_shapes()
    undescribed = [
        f"{name}.{field}"
        for name, component in components.items()
        if not name.startswith("HTTPValidationError") and name != "ValidationError"
        if name.split("-")[0] not in openai_shapes
        for field, spec in component.get("properties", {}).items()
        if field != "object" and "description" not in spec
    ]
    assert undescribed == []
    job_create = components["JobCreate"]["properties"]
    assert job_create["model"]["examples"] == ["minilm"]
    assert "examples" in components["JobInput"]["properties"]["items"]


def test_docs_pages_name_only_local_assets() -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app()) as client:
        for page in ("/docs", "/redoc"):
            html = client.get(page)
            assert html.status_code == 200, page
            assert "http://" not in html.text and "https://" not in html.text, page
        swagger = client.get("/docs").text
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert f"/docs-assets/{asset}" in swagger
        assert "/docs-assets/redoc.standalone.js" in client.get("/redoc").text
