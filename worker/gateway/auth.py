"""Gateway authentication: tenant keys (``Authorization: Bearer``) and signed read tokens.

A key is never stored: a tenant is configured with the SHA-256 of its key (``key_sha256``), and a
presented key's digest is compared with every tenant's in constant time (:func:`hmac.compare_digest`,
all of them, whichever matches). A read token lets a browser read one job's events without the key::

    base64url("<tenant>\\n<internal job id>\\n<expiry, Unix seconds>\\n<the job's created, ms>")
    "." base64url(HMAC-SHA256)

signed with the secret in the variable named by ``gateway_secret_env`` (shared by every gateway
process, so a token minted by one is good on all). Tokens are deterministic: the expiry is the job's
creation time plus the longest its keys live, so enqueueing the same job again answers the same token.
Nothing here puts a key, token or secret in an exception message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

import msgspec

from ..settings import Settings, SettingsError, Tenant

__all__ = [
    "MAX_CREDENTIAL",
    "MIN_GATEWAY_SECRET",
    "ReadGrant",
    "TokenSigner",
    "bearer_key",
    "gateway_secret",
    "tenant_for_key",
]

MAX_CREDENTIAL: Final = 1024
"""The longest key or token looked at; longer is refused unread."""

MIN_GATEWAY_SECRET: Final = 32

_CONTEXT: Final = b"tokenwire-read-token-v1\n"


def gateway_secret(settings: Settings, environ: Mapping[str, str]) -> bytes:
    """The read-token secret from the variable ``gateway_secret_env`` names; a
    :class:`~worker.settings.SettingsError` naming the variable (never the value) when it is unset
    or shorter than :data:`MIN_GATEWAY_SECRET` characters."""
    name = settings.gateway_secret_env
    value = environ.get(name, "")
    if not value:
        raise SettingsError(
            f"{name} is unset: the gateway signs read tokens with it (set it to a random string of "
            f"at least {MIN_GATEWAY_SECRET} characters, the same for every gateway process)"
        )
    if len(value) < MIN_GATEWAY_SECRET:
        raise SettingsError(f"{name} is shorter than {MIN_GATEWAY_SECRET} characters")
    return value.encode("utf-8", "surrogatepass")


def bearer_key(header: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <key>``, or None (absent, another scheme, too long)."""
    if header is None or len(header) > MAX_CREDENTIAL + 16:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def tenant_for_key(key: str, tenants: Mapping[str, Tenant]) -> str | None:
    """The tenant whose ``key_sha256`` is the SHA-256 of ``key``; every tenant is compared, in
    constant time, so the time taken says nothing about which (or whether one) matched."""
    if len(key) > MAX_CREDENTIAL:
        return None
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest().encode()
    found = None
    for name, tenant in tenants.items():
        if hmac.compare_digest(digest, tenant.key_sha256.encode()):
            found = name
    return found


class ReadGrant(msgspec.Struct, frozen=True):
    """What a valid read token grants: reading ``job`` (an internal id) as ``tenant`` until
    ``expires``, while that id names the job created at ``created`` (its state hash's ``created``,
    Unix ms): a later job reusing the id, once this one's keys expired, is another job."""

    tenant: str
    job: str
    expires: int
    created: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None


class TokenSigner:
    """Mints and checks read tokens with one secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def __repr__(self) -> str:  # never the secret
        return "TokenSigner(<secret>)"

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _CONTEXT + payload, hashlib.sha256).digest()

    def mint(self, tenant: str, job: str, expires: int, created: str = "") -> str:
        payload = f"{tenant}\n{job}\n{expires}\n{created}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def check(self, token: str, *, now: float | None = None) -> ReadGrant | None:
        """The grant of a genuine, unexpired token; None for anything else (never an exception)."""
        if len(token) > MAX_CREDENTIAL or token.count(".") != 1:
            return None
        head, _, tail = token.partition(".")
        payload, mac = _unb64(head), _unb64(tail)
        if payload is None or mac is None or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        parts = payload.decode("utf-8", "replace").split("\n")
        if len(parts) != 4 or not parts[2].isdigit() or len(parts[2]) > 12:
            return None
        grant = ReadGrant(parts[0], parts[1], int(parts[2]), parts[3])
        if grant.expires <= (time.time() if now is None else now):
            return None
        return grant
