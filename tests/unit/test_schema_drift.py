"""The files in schemas/ are generated from the code; this fails when they drift."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from worker.schema import render_all

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schema_files_match_the_code() -> None:
    for name, text in render_all().items():
        path = SCHEMAS / name
        assert path.exists(), f"{path} missing: run `tokenwire schema`"
        assert path.read_text("utf-8") == text, f"{name} drifted from the code: run `tokenwire schema`"


def test_schemas_are_valid_json_schema() -> None:
    for name in ("job.schema.json", "event.schema.json"):
        jsonschema.Draft202012Validator.check_schema(json.loads((SCHEMAS / name).read_text()))


def test_asyncapi_names_the_three_channels() -> None:
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {"{P}:jobs", "P:job:{JOB_ID}:events", "{P}:dead"}
    assert doc["asyncapi"].startswith("3.")


def test_job_schema_accepts_what_the_decoder_accepts() -> None:
    schema = json.loads((SCHEMAS / "job.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"model": "m", "input": "hi"})
    assert validator.is_valid(
        {"model": "m", "api": "chat", "messages": [{"role": "user", "content": "hi"}],
         "params": {"max_tokens": 5, "top_logprobs": 3}, "metadata": {"k": "v"}}
    )  # fmt: skip
    assert not validator.is_valid({"input": "no model"})
    assert not validator.is_valid({"model": "m", "input": "x", "params": {"top_logprobs": 21}})
    assert not validator.is_valid({"model": "m", "input": "x", "url": "http://evil"})
