"""schemas/gateway.openapi.yaml: generated from the code (drift is tested with the other contract
files in test_schema_drift.py), a valid OpenAPI 3.1 document, naming every route the gateway serves."""

from __future__ import annotations

from pathlib import Path

import yaml
from openapi_spec_validator import validate

from worker.gateway.app import Gateway, build_app
from worker.gateway.auth import TokenSigner
from worker.gateway.openapi import openapi, render_openapi
from worker.schema import job_schema
from worker.settings import Settings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_the_document_is_valid_openapi() -> None:
    validate(yaml.safe_load((SCHEMAS / "gateway.openapi.yaml").read_text("utf-8")))
    validate(openapi(job_schema()))


def test_the_committed_file_is_the_rendered_one() -> None:
    assert yaml.safe_load((SCHEMAS / "gateway.openapi.yaml").read_text("utf-8")) == yaml.safe_load(
        render_openapi(job_schema())
    )


def test_every_route_of_the_app_is_documented_and_nothing_else() -> None:
    import fakeredis

    redis = fakeredis.FakeAsyncRedis()
    gateway = Gateway(Settings(), redis=redis, reader=redis, signer=TokenSigner(b"s" * 32))
    app = build_app(gateway)
    served = set()
    for route in app.router.routes():
        if route.method == "OPTIONS":
            continue
        path = route.resource.canonical if route.resource is not None else ""
        served.add((route.method.lower(), path.replace("{id:.+}", "{id}").replace("{id}", "{id}")))
    documented = {(method, path) for path, ops in openapi(job_schema())["paths"].items() for method in ops}
    assert served == documented


def test_the_job_body_is_the_job_schema_and_errors_share_one_shape() -> None:
    doc = openapi(job_schema())
    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/Job"}
    assert "if" in doc["components"]["schemas"]["Job"], "the api rule of the job schema is kept"
    for ops in doc["paths"].values():
        for op in ops.values():
            for status, answer in op["responses"].items():
                if int(status) >= 400:
                    assert answer["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorBody"
                    }
    assert "#/$defs/" not in render_openapi(job_schema())
