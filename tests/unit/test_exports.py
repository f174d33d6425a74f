"""The public surface of `worker` is deliberate: every exported name exists and nothing public is
left out of it (ruff's RUF022 keeps the list sorted)."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

import worker

HEAVY = ("aiohttp", "httpx", "httpx_aiohttp", "httpx_sse", "prometheus_client", "structlog")
"""What a producer or subscriber does not need: the worker's HTTP clients, metrics and logging."""


def test_all_is_complete() -> None:
    exported = [name for name in worker.__all__ if name != "__version__"]
    assert len(exported) == len(set(exported))
    public = {
        name
        for name in dir(worker)
        if not name.startswith("_") and not isinstance(getattr(worker, name), types.ModuleType)
    }
    assert public == set(exported)
    for name in worker.__all__:
        assert getattr(worker, name) is not None


def _fresh(code: str) -> dict[str, list[str]]:
    """Run ``code`` in a fresh interpreter; the heavy and the worker modules it then has loaded."""
    probe = f"""
import json, sys
{code}
loaded = sorted(sys.modules)
print(json.dumps({{
    "heavy": sorted({{m.split(".")[0] for m in loaded}} & set({HEAVY!r})),
    "worker": [m for m in loaded if m == "worker" or m.startswith("worker.")],
}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_a_producer_imports_neither_http_nor_metrics_nor_logging() -> None:
    loaded = _fresh("from worker import Client, Done, InvalidJob, Job, JobConflict, Token, UnknownEvent")
    assert loaded["heavy"] == []
    assert "worker.service" not in loaded["worker"] and "worker.settings" not in loaded["worker"]
    # building a client from a URL (no connection is made) loads no HTTP client, metrics or logging
    loaded = _fresh("from worker import Client\nClient.from_url('redis://127.0.0.1:1/0')")
    assert loaded["heavy"] == []


def test_the_worker_names_still_import_from_the_package() -> None:
    loaded = _fresh("from worker import Provider, Settings, SettingsError, Worker, load_settings")
    assert "worker.service" in loaded["worker"] and "httpx" in loaded["heavy"]
    with_all = _fresh("from worker import *")
    assert "worker.service" in with_all["worker"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        worker.NoSuchThing  # noqa: B018
