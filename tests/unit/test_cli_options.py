"""The command line's own rules: every option documented, the key warning only for providers in use."""

from __future__ import annotations

import argparse
import io
import json

import pytest
import structlog

from worker.cli import _used_providers, _warn_missing_keys, build_parser
from worker.logging import configure_logging
from worker.settings import Provider, Settings


def _parsers() -> list[argparse.ArgumentParser]:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *subs[0].choices.values()]


def test_every_option_of_every_command_has_help_text() -> None:
    for parser in _parsers():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{parser.prog}: {action.option_strings or action.dest} has no help"


def test_connection_flags_on_every_command_that_connects() -> None:
    for parser in _parsers()[1:]:
        flags = {flag for action in parser._actions for flag in action.option_strings}
        if parser.prog.split()[-1] in ("sim", "demo", "schema"):
            continue
        assert {"--redis-url", "--config", "--prefix"} <= flags, parser.prog


def _warnings(
    settings: Settings, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> list[dict[str, str]]:
    for name in ("DEEPINFRA_TOKEN", "LOCAL_KEY", "OTHER_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    _warn_missing_keys(settings)
    structlog.reset_defaults()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_missing_key_warning_only_for_providers_the_deployment_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    local = Provider(native_url="http://127.0.0.1:1/{model}", api_key_env="LOCAL_KEY")
    settings = Settings(default_provider="local", providers={"local": local})
    assert sorted(_used_providers(settings)) == ["local"]  # the built-in deepinfra is not in use
    lines = _warnings(settings, {}, monkeypatch)
    assert [(rec["provider"], rec["variable"]) for rec in lines] == [("local", "LOCAL_KEY")]
    assert _warnings(settings, {"LOCAL_KEY": "k"}, monkeypatch) == []


def test_the_built_in_provider_is_warned_about_when_it_is_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = Provider(native_url="http://127.0.0.1:1/{model}", api_key_env="OTHER_KEY")
    settings = Settings(providers={"other": other})
    lines = _warnings(settings, {}, monkeypatch)
    assert sorted(rec["variable"] for rec in lines) == ["DEEPINFRA_TOKEN", "OTHER_KEY"]  # once each
