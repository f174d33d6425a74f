"""One redaction for every string from outside: error messages, event excerpts, log fields, dead letters.

A :class:`Redactor` knows the secrets in force (every provider's API key, read from its
``api_key_env``; the Redis password; any setting whose name ends in ``password``, ``secret``,
``token`` or ``_key``) and replaces each, whole or cut short by a clip, with ``[redacted]``; it also
redacts credential shapes whatever their value: ``Bearer``/``Basic`` credentials, ``sk-…``-style keys,
Google API keys (``AIza…``, Gemini's ``x-goog-api-key``) and ``key=``/``token=``/``password=`` query
parameters.

A secret shorter than :data:`MIN_SECRET` characters cannot be redacted without destroying ordinary
text (a 3-letter password occurs in words), so :meth:`Redactor.from_settings` refuses it: the worker
does not start, and the error names the variable, never the value.

Every :class:`~worker.upstream.base.UpstreamError` is built anywhere an upstream fails, far from the
settings, so the worker's Redactor is installed once at start-up (:func:`install`, by the entry point)
and :func:`redact` reads it; until then it redacts the shapes only. Code that is handed a Redactor uses
its :meth:`Redactor.redact`, the same function.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import quote

import msgspec

from .settings import Settings, SettingsError, _url_password

__all__ = [
    "MIN_SECRET",
    "REDACTED",
    "InvalidSecret",
    "Redactor",
    "check_api_key",
    "install",
    "installed",
    "log_processor",
    "redact",
]

MIN_SECRET = 8
"""The shortest secret the worker accepts (see the module's docstring)."""

REDACTED = "[redacted]"

_MIN_CUT = 4
"""A secret's prefix this long, cut off by a clip (at the text's end or before ``…``), is redacted."""

_SHAPES = (
    # `Authorization: Bearer <token>` and friends, the scheme kept: `Bearer [redacted]`
    (re.compile(r"(?i)\b(bearer)(\s+|%20|\+)[^\s\"'<>,;\\]+"), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(basic)(\s+|%20|\+)[A-Za-z0-9+/]{8,}=*"), rf"\1\2{REDACTED}"),
    # OpenAI/Anthropic/Stripe-style keys: sk-…, sk_live_…, rk-…
    (re.compile(r"\b(?:sk|rk)[-_][A-Za-z0-9_-]{8,}"), REDACTED),
    # Google API keys (Gemini's x-goog-api-key): AIza and 35 more characters
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), REDACTED),
    # credentials in a query string or a form: ?api_key=…, &token=…, password=…
    (
        re.compile(
            r"(?i)\b((?:api[_-]?key|access[_-]?token|auth[_-]?token|token|key|password|secret)=)[^&\s\"'#]+"
        ),
        rf"\1{REDACTED}",
    ),
)
_SECRET_SETTING = re.compile(r"(?:password|secret|token|_key)$")
_MAX_TRAILER = 32
_TRAILER = re.compile(r"[\s'\"\)\]\}>.,;:]*\Z")
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")


class InvalidSecret(SettingsError):
    """A configured secret the worker refuses (too short, or not sendable); names its variable."""


def check_api_key(variable: str, value: str) -> str | None:
    """Why the API key in ``variable`` cannot be sent as ``Authorization: Bearer``, or None.

    Never shows the value: only what is wrong with it (whitespace, control or non-ASCII characters,
    its length)."""
    if _KEY_CHARS.fullmatch(value) is None:
        where = "at its end" if value.rstrip() != value else "in it"
        return (
            f"the API key in {variable} has whitespace, control or non-ASCII characters {where} "
            "(a trailing newline from a file or a secret?): an HTTP header cannot carry it"
        )
    if len(value) < MIN_SECRET:
        return f"the API key in {variable} is shorter than {MIN_SECRET} characters"
    return None


class Redactor:
    """Replaces the secrets it knows and every credential shape in text with ``[redacted]``."""

    __slots__ = ("_forms", "_secrets")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        known = {s for s in secrets if s}
        short = [s for s in known if len(s) < MIN_SECRET]
        if short:
            raise InvalidSecret(f"a secret shorter than {MIN_SECRET} characters cannot be redacted")
        self._secrets = tuple(sorted(known, key=len, reverse=True))
        forms: set[str] = set()
        for secret in known:  # as written, percent-encoded (URLs) and JSON-escaped (bodies)
            forms |= {secret, quote(secret, safe=""), msgspec.json.encode(secret).decode()[1:-1]}
        self._forms = tuple(sorted(forms, key=len, reverse=True))

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> Redactor:
        """The secrets of ``settings`` and of the providers' key variables in ``environ``.

        Raises :class:`InvalidSecret` naming the setting or variable of a secret that is too short
        or, for an API key, cannot be sent (whitespace, control characters)."""
        env = os.environ if environ is None else environ
        secrets: list[str] = []
        password = _url_password(settings.redis_url)
        settings_secrets = [*_secret_settings(settings), ("Redis password in redis_url", password)]
        for name, value in settings_secrets:
            if value:
                if len(value) < MIN_SECRET:
                    raise InvalidSecret(f"the {name} is shorter than {MIN_SECRET} characters")
                secrets.append(value)
        gateway_secret = env.get(settings.gateway_secret_env)  # the gateway's read-token secret
        if gateway_secret:
            secrets.append(gateway_secret)
        variables = {p.api_key_env for p in settings.all_providers().values() if p.api_key_env}
        for variable in sorted(variables):
            value = env.get(variable)
            if value:
                problem = check_api_key(variable, value)
                if problem is not None:
                    raise InvalidSecret(problem)
                secrets.append(value)
        return cls(secrets)

    @property
    def forms(self) -> tuple[str, ...]:
        """Every known secret as it may appear in text (as written, percent-encoded, JSON-escaped),
        longest first; empty when none is configured (:mod:`worker.holdback` streams these)."""
        return self._forms

    def redact(self, text: str) -> str:
        """``text`` with every known secret (whole or clipped) and credential shape redacted.

        The secrets' spans are found in ``text`` as given, then each run of them becomes one
        ``[redacted]``; should a secret still be found afterwards (built across a marker: it holds
        part of ``[redacted]`` itself), nothing of the text is returned but ``***`` (shorter than
        any secret)."""
        if self._forms:
            text = _masked(text, self._spans(text))
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        if any(form in text for form in self._forms):
            return "***"
        return text

    def _spans(self, text: str) -> list[tuple[int, int]]:
        spans = []
        for form in self._forms:
            at = text.find(form)
            while at != -1:
                spans.append((at, at + len(form)))
                at = text.find(form, at + 1)
        for secret in self._secrets:
            spans += _cut_spans(text, secret)
        return spans

    def redact_value(self, value: Any) -> Any:
        """``value`` with every string in it redacted, through dicts, lists, tuples and sets;
        an exception becomes its redacted ``repr``."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {k: self.redact_value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = [self.redact_value(v) for v in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, set | frozenset):
            return {self.redact_value(v) for v in value}
        if isinstance(value, BaseException):
            return self.redact(repr(value))
        return value


def _secret_settings(settings: Settings) -> list[tuple[str, str]]:
    """Settings whose name says they are secret (``redis_password``, a gateway secret, …)."""
    found = []
    for field in msgspec.structs.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, str) and _SECRET_SETTING.search(field.name):
            found.append((f"setting {field.name} (TOKENWIRE_{field.name.upper()})", value))
    return found


def _cut_spans(text: str, secret: str) -> list[tuple[int, int]]:
    """Where a prefix of ``secret`` (at least ``_MIN_CUT`` long) was cut short by a clip: it ends
    the text (closing quotes and brackets aside) or meets ``…``."""
    spans = []
    start = secret[:_MIN_CUT]
    at = text.find(start)
    while at != -1:
        n = _MIN_CUT
        while n < len(secret) and at + n < len(text) and text[at + n] == secret[n]:
            n += 1
        rest = text[at + n :]
        if n < len(secret) and (
            rest.startswith(("…", "...")) or (len(rest) <= _MAX_TRAILER and _TRAILER.fullmatch(rest))
        ):
            spans.append((at, at + n))
        at = text.find(start, at + 1)
    return spans


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` with each run of overlapping or touching spans replaced by one ``[redacted]``."""
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for begin, end in sorted(spans):
        if begin > pos or not out:
            out.append(text[pos:begin])
            out.append(REDACTED)
        pos = max(pos, end)
    out.append(text[pos:])
    return "".join(out)


_installed = Redactor()


def install(redactor: Redactor) -> None:
    """Make ``redactor`` the process's (the worker's entry point, once, at start-up)."""
    global _installed
    _installed = redactor


def installed() -> Redactor:
    """The process's Redactor (the credential shapes only, until :func:`install`)."""
    return _installed


def redact(text: str) -> str:
    """``text`` redacted by the process's Redactor."""
    return _installed.redact(text)


def log_processor(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """A structlog processor: every string of every field, nested, through the process's Redactor
    (``exc_info`` is left to the renderer, whose traceback :mod:`worker.logging` redacts)."""
    redactor = _installed
    return {k: v if k == "exc_info" else redactor.redact_value(v) for k, v in event_dict.items()}
