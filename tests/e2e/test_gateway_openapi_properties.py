"""Property-based API tests of a real `tokenwire gateway` process from schemas/gateway.openapi.yaml
(schemathesis): for generated requests, valid and invalid, every answer has a documented status,
content type, headers and body, and none is a server error. Bounded: a few examples per operation."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.e2e.clikit import SCHEMAS
from tests.e2e.gatewayproc import GatewayProc, bearer, gateway_env, start_gateway
from worker.redisproc import RedisServer

pytestmark = [pytest.mark.e2e]

SCHEMA = schemathesis.openapi.from_path(SCHEMAS / "gateway.openapi.yaml")


@pytest.fixture(scope="module")
def api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    """A gateway process on its own prefix (no worker: posted jobs stay queued, which is enough)."""
    tmp = tmp_path_factory.mktemp("gateway-api")
    (tmp / "base.toml").write_text("max_payload_bytes = 65536\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "TOKENWIRE_CONFIG": str(tmp / "base.toml"),
        "TOKENWIRE_REDIS_URL": redis_server.url,
        "TOKENWIRE_PREFIX": f"api-{uuid.uuid4().hex[:8]}",
    }
    gw = start_gateway(gateway_env(env, tmp, extra="max_inflight_jobs = 1000"))
    yield gw
    assert gw.stop() == 0
    assert "Traceback" not in gw.log, gw.log


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_gateway_keeps_its_documented_contract(case: schemathesis.Case[Any], api: GatewayProc) -> None:
    response = case.call(base_url=api.url, headers=bearer("acme"), timeout=10)
    # A job valid per the job schema may still be refused by the worker's admission (422: what
    # depends on its settings, or on rules JSON Schema cannot write: schemas/job.schema.json says
    # which), so a schema-valid job is not required to be accepted; everything else is checked.
    excluded: list[CheckFunction] = (
        [positive_data_acceptance] if case.operation.label == "POST /v1/jobs" else []
    )
    case.validate_response(response, excluded_checks=excluded)


def test_the_schema_names_the_operations() -> None:
    assert Path(SCHEMAS / "gateway.openapi.yaml").exists()
    labels = sorted(op.ok().label for op in SCHEMA.get_all_operations())  # type: ignore[union-attr]
    assert labels == [
        "GET /v1/jobs/{id}",
        "GET /v1/jobs/{id}/events",
        "POST /v1/jobs",
        "POST /v1/jobs/{id}/cancel",
    ]
