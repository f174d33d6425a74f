"""The files in schemas/ are generated from the code; this fails when they drift."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from worker.schema import render_all, stale_files

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_schema_files_match_the_code() -> None:
    assert stale_files(SCHEMAS) == [], "schemas drifted from the code: run `tokenwire schema`"


def _copy(tmp_path: Path) -> Path:
    for name, text in render_all().items():
        (tmp_path / name).write_text(text, "utf-8")
    return tmp_path


def test_white_space_in_a_description_is_not_drift(tmp_path: Path) -> None:
    """A msgspec release that dedents docstrings differently cannot turn the check red."""
    directory = _copy(tmp_path)
    for name in ("job.schema.json", "event.schema.json"):
        doc = json.loads((directory / name).read_text())
        for node in doc["$defs"].values():
            if "description" in node:
                node["description"] = node["description"].replace("\n", "\n    ") + "\n"
        (directory / name).write_text(json.dumps(doc))
    api = yaml.safe_load((directory / "asyncapi.yaml").read_text())
    api["info"]["description"] = "  " + api["info"]["description"].replace(" ", "\n  ")
    (directory / "asyncapi.yaml").write_text(yaml.safe_dump(api, width=40))
    assert stale_files(directory) == []


def test_a_change_of_the_contract_is_drift(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    event = json.loads((directory / "event.schema.json").read_text())
    del event["$defs"]["Token"]["properties"]["logprob"]
    (directory / "event.schema.json").write_text(json.dumps(event))
    job = json.loads((directory / "job.schema.json").read_text())
    job["$defs"]["Job"]["required"] = []
    (directory / "job.schema.json").write_text(json.dumps(job))
    api = yaml.safe_load((directory / "asyncapi.yaml").read_text())
    api["channels"]["jobs"]["description"] = "another meaning"
    (directory / "asyncapi.yaml").write_text(yaml.safe_dump(api))
    assert stale_files(directory) == ["job.schema.json", "event.schema.json", "asyncapi.yaml"]


def test_a_missing_or_unreadable_file_is_drift(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    (directory / "job.schema.json").unlink()
    (directory / "asyncapi.yaml").write_text("{ not yaml: [")
    assert stale_files(directory) == ["job.schema.json", "asyncapi.yaml"]


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
