"""The files in schemas/ are generated from the code; this fails when they drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import yaml

from worker.keys import Keys, cancel_message, read_cancel_message
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


def _substituted(address: str, parameters: dict[str, dict[str, object]], job_id: str) -> str:
    """An AsyncAPI address with every parameter replaced by its value for the default prefix."""
    values = {name: p.get("default", f"{{{job_id}}}") for name, p in parameters.items()}
    return re.sub(r"\{([^{}]*)\}", lambda m: str(values[m.group(1)]), address)


def test_asyncapi_addresses_are_the_keys_the_code_uses() -> None:
    """One notation: every brace pair in an address is a declared parameter, and substituting the
    parameters' values gives exactly the names :class:`worker.keys.Keys` builds."""
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    assert doc["asyncapi"].startswith("3.")
    declared = doc["components"]["parameters"]
    for name, channel in doc["channels"].items():
        used = set(re.findall(r"\{([^{}]*)\}", channel["address"]))
        refs = {k: v["$ref"] for k, v in channel.get("parameters", {}).items()}
        assert used == set(refs), f"channel {name}: parameters {sorted(refs)} for {channel['address']}"
        assert all(ref == f"#/components/parameters/{k}" for k, ref in refs.items())
    keys = Keys("tokenwire")
    real = {
        name: _substituted(channel["address"], declared, "job-7") for name, channel in doc["channels"].items()
    }
    assert real == {
        "jobs": keys.jobs,
        "dead": keys.dead,
        "events": keys.events("job-7"),
        "cancel": keys.cancel,
        "feedback": keys.feedback,
        "review": keys.review,
    }
    assert real == {"jobs": "{tokenwire}:jobs", "dead": "{tokenwire}:dead",
                    "events": "tokenwire:job:{job-7}:events", "cancel": "tokenwire:cancel",
                    "feedback": "{tokenwire}:feedback", "review": "{tokenwire}:review"}  # fmt: skip


def test_the_cancel_message_is_the_one_the_code_builds() -> None:
    doc = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    message = doc["components"]["messages"]["cancel"]
    assert message["contentType"] == "text/plain"
    payload = message["payload"]
    for example in payload["examples"]:
        assert re.search(payload["pattern"], example)
    text = cancel_message("job-7", "user pressed stop\nand left")
    assert re.search(payload["pattern"], text)
    assert read_cancel_message(text.encode()) == ("job-7", "user pressed stop\nand left")
    assert read_cancel_message("job-7") == ("job-7", "")
    assert not re.search(payload["pattern"], "no newline after the id")
    assert not re.search(payload["pattern"], "an id with spaces\nreason")
    # The pattern allows exactly the job ids the job schema allows.
    job_id = json.loads((SCHEMAS / "job.schema.json").read_text())["$defs"]["Job"]["properties"]["id"]
    (id_schema,) = (s for s in job_id["anyOf"] if s.get("type") == "string")
    id_chars = id_schema["pattern"].removesuffix("+$(?!\\n)")
    assert payload["pattern"] == f"{id_chars}{{1,{id_schema['maxLength']}}}\\n"


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
