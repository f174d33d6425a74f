"""The gateway's HTTP API (aiohttp): enqueue, follow (SSE), status and cancel, per tenant.

Every request is hostile until checked: credentials are bounded and compared in constant time, ids
and resume ids are parsed before they reach Redis, bodies are capped (``max_payload_bytes``), and no
exception from a request escapes as anything but a JSON error with a clear status. Errors never echo
a key, a token or the secret. See :mod:`worker.gateway.ids` for the per-tenant id scoping.

``build_app(gateway)`` builds the :class:`aiohttp.web.Application`; with ``gateway_ui`` it calls
``worker.gateway.ui.add_ui_routes(app, gateway)`` (the page's module) to mount ``GET /``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import urlsplit

import msgspec
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..admit import Rejected, admit
from ..jobs import encode_job, new_job_id
from ..keys import Keys, as_text, cancel_message
from ..settings import Settings, Tenant
from ..store import JobStore, job_digest, now_ms
from .auth import ReadGrant, TokenSigner, bearer_key, tenant_for_key
from .bounds import Refused, read_body, redis_deadline
from .hub import Hub, Watch, stream_key
from .ids import MAX_JOB_ID, MAX_STREAM_ID, PUBLIC_ID, after_stream_id, id_problem, scoped_ids
from .limits import InflightLimiter, StreamCounter
from .metrics import GatewayMetrics
from .models import CancelBody, Cancelled, Created, ErrorBody, ErrorDetail, JobState
from .sse import Entry, comment, entry_of, frame
from .state import PUBLIC_FIELDS, job_state

__all__ = ["GATEWAY", "Gateway", "Principal", "Refused", "build_app"]

log = structlog.get_logger("tokenwire.gateway")

REPLAY_COUNT: Final = 256
WRITE_TIMEOUT: Final = 30.0
RETRY_AFTER_INFLIGHT: Final = "2"
RETRY_AFTER_STREAMS: Final = "1"
_JOB_PATH: Final = r"{id:.+}"  # any text: the handlers answer 404 for what is no job id
_CORS_HEADERS: Final = "Authorization, Content-Type, Last-Event-ID"
_EXPOSED: Final = "Retry-After"


class Principal(msgspec.Struct, frozen=True):
    """Who a request is: a tenant, by its key or by a read token (``grant``)."""

    name: str
    tenant: Tenant
    grant: ReadGrant | None = None


_CANCEL: Final = msgspec.json.Decoder(CancelBody)
_JSON: Final = msgspec.json.Encoder()


def _json(status: int, body: object, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=_JSON.encode(body), content_type="application/json", headers=headers
    )


class Gateway:
    """The gateway's state for one process: clients, the hub, limits, metrics. No I/O until served."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        reader: Redis,
        signer: TokenSigner,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = Keys(settings.prefix)
        self.store = JobStore(
            redis,
            self.keys,
            output_ttl_seconds=settings.output_ttl_seconds,
            running_ttl_seconds=settings.running_ttl_seconds,
            events_maxlen=settings.events_maxlen,
        )
        self.signer = signer
        self.metrics = metrics or GatewayMetrics()
        self.hub = Hub(
            reader,
            self.keys,
            cluster=settings.redis_cluster,
            sweep_seconds=settings.gateway_heartbeat_seconds,
            on_read=self.metrics.redis_reads.inc,
            on_sent=self.metrics.events_sent.inc,
        )
        self.limiter = InflightLimiter(
            redis, self.keys, ttl_seconds=settings.running_ttl_seconds + settings.output_ttl_seconds
        )
        self.streams = StreamCounter()
        self.origins = frozenset(o for t in settings.tenants.values() for o in t.origins)
        self.token_seconds = settings.running_ttl_seconds + settings.output_ttl_seconds
        self._watches: set[Watch] = set()
        self.closing = False

    # ------------------------------------------------------------------------------- plumbing

    def close_streams(self) -> None:
        """Stopping: every open stream ends with a comment saying to reconnect (to another process)."""
        self.closing = True
        for watch in tuple(self._watches):
            watch.wake.set()

    def _origin_allowed(self, request: web.Request, origin: str, tenant: Tenant | None) -> bool:
        if _same_origin(request, origin):
            return True
        allowed = self.origins if tenant is None else frozenset(tenant.origins)
        return origin in allowed or "*" in allowed

    def _cors(self, request: web.Request, tenant: Tenant | None) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None or not self._origin_allowed(request, origin, tenant):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Vary": "Origin",
            "Access-Control-Expose-Headers": _EXPOSED,
        }

    def principal(self, request: web.Request, *, token_ok: bool) -> Principal:
        """The request's tenant by ``Authorization: Bearer`` (or, when ``token_ok``, ``?token=``);
        a 401 otherwise. A real request from a browser origin its tenant does not list is a 403."""
        tenants = self.settings.tenants
        header = request.headers.get("Authorization")
        found: Principal | None = None
        if header is not None:
            key = bearer_key(header)
            name = None if key is None else tenant_for_key(key, tenants)
            if name is None:
                self.metrics.auth_failures.labels("key").inc()
                raise Refused(401, "unauthorized", "the Bearer key is not a tenant's key")
            found = Principal(name, tenants[name])
        elif token_ok and "token" in request.query:
            grant = self.signer.check(request.query["token"])
            if grant is None or grant.tenant not in tenants:
                self.metrics.auth_failures.labels("token").inc()
                raise Refused(401, "unauthorized", "the read token is not valid (forged, expired or revoked)")
            found = Principal(grant.tenant, tenants[grant.tenant], grant)
        if found is None:
            self.metrics.auth_failures.labels("missing").inc()
            what = (
                "Authorization: Bearer <key>, or ?token=<read token>"
                if token_ok
                else "Authorization: Bearer <key>"
            )
            raise Refused(401, "unauthorized", f"no credentials: send {what}")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(request, origin, found.tenant):
            self.metrics.auth_failures.labels("origin").inc()
            raise Refused(
                403, "origin_not_allowed", f"origin {origin[:200]!r} is not one of this tenant's origins"
            )
        return found

    async def resolve(self, who: Principal, job_id: str) -> str:
        """The internal id of the job ``who`` calls ``job_id``; 404 when it has none (never
        enqueued, expired, another tenant's, or a read token for another job)."""
        candidates: list[tuple[str, str | None]] = []
        if PUBLIC_ID.fullmatch(job_id) and id_problem(who.name, job_id) is None:
            candidates += [(internal, who.name) for internal in scoped_ids(who.name, job_id)]
        if who.tenant.read_unscoped and _unscoped_id(job_id):
            candidates.append((job_id, None))
        if who.grant is not None:
            candidates = [c for c in candidates if c[0] == who.grant.job]
        if candidates:
            pipe: Any = self.redis.pipeline(transaction=False)
            for internal, _ in candidates:
                pipe.hmget(self.keys.state(internal), "state", "tenant", "created")
            replies = await pipe.execute()
            for (internal, owner), (state, tenant, created) in zip(candidates, replies, strict=True):
                if state is None or (None if tenant is None else as_text(tenant)) != owner:
                    continue
                if who.grant is not None and who.grant.created != as_text(created or b""):
                    continue  # the token's job ended and expired; this is a later job under its id
                return internal
        raise Refused(404, "not_found", f"no job {job_id[:200]!r}: never enqueued, or expired")

    def public_id(self, who: Principal, internal: str) -> str:
        scope = f"{who.name}/"
        return internal[len(scope) :] if internal.startswith(scope) else internal

    async def read_token(self, who: Principal, internal: str) -> str:
        raw = await self.redis.hget(self.keys.state(internal), "created")
        created = "" if raw is None else as_text(raw)
        base = int(created) // 1000 if created.isdigit() else int(time.time())
        return self.signer.mint(who.name, internal, base + self.token_seconds, created)

    # ------------------------------------------------------------------------------- handlers

    async def enqueue(self, request: web.Request) -> web.Response:
        who = self.principal(request, token_ok=False)
        body = await read_body(request, self.settings.max_payload_bytes)
        async with redis_deadline():
            status, answer = await self.submit(who, body)
        return _json(status, answer, self._cors(request, who.tenant))

    async def submit(self, who: Principal, body: bytes) -> tuple[int, Created]:
        """Enqueue ``body`` as ``who``'s job: (201 or 200, the answer); :class:`Refused` otherwise."""
        verdict = admit("0-0", body, self.settings)  # the worker's own admission: its reasons, verbatim
        if isinstance(verdict, Rejected):
            self.metrics.jobs.labels("invalid").inc()
            raise Refused(422, verdict.code, verdict.reason)
        job = verdict.job
        public = job.id or new_job_id()
        problem = id_problem(who.name, public)
        if problem is not None:
            self.metrics.jobs.labels("invalid").inc()
            raise Refused(422, "invalid_job", f"invalid job: {problem}")
        for internal in scoped_ids(who.name, public):
            job = msgspec.structs.replace(job, id=internal)
            digest = job_digest(job)
            # the same job again, ended: no job in flight (it left the count as it ended), so never
            # refused for the tenant's limit (re-posting is answered 200, the same answer)
            ended = await self._ended_same(who.name, internal, digest)
            added = None if ended else await self._admit(who, internal)
            outcome, state, entry = await self.store.create(
                internal, job.model, job.api, job.provider or "", digest=digest, tenant=who.name
            )
            if ended and outcome == "new":  # its keys expired in between: a new job, counted as any
                added = await self._admit(who, internal)  # (refused: it stays queued with no entry,
                # as an interrupted post leaves one; posting it again enqueues it)
            if outcome != "foreign":
                break
            if added == "new":  # a job enqueued outside the gateway holds this id: try the next
                await self.limiter.release(who.name, internal)
        else:
            raise Refused(409, "conflict", f"job id {public!r} cannot be used: choose another id")
        if outcome == "conflict":
            if added == "new":
                await self.limiter.release(who.name, internal)
            self.metrics.jobs.labels("conflict").inc()
            raise Refused(
                409,
                "conflict",
                f"job id {public!r} is taken by a different job: post the same job, or another id",
            )
        if not (outcome == "exists" and (entry or state != "queued")):
            entry_id = await self.redis.xadd(self.keys.jobs, {"job": encode_job(job)})
            await self.store.record_entry(internal, as_text(entry_id))
        status = 201 if outcome == "new" else 200
        self.metrics.jobs.labels("created" if status == 201 else "existing").inc()
        token = await self.read_token(who, internal)
        return status, Created(id=public, events_url=f"/v1/jobs/{public}/events", read_token=token)

    async def _admit(self, who: Principal, internal: str) -> str:
        """Count ``internal`` in flight for ``who`` (``new`` or ``present``); 429 at the limit."""
        limit = who.tenant.max_inflight_jobs
        added = await self.limiter.admit(who.name, internal, limit, now_ms())
        if not added:
            self.metrics.refused.labels("inflight").inc()
            raise Refused(
                429,
                "too_many_jobs",
                f"tenant {who.name!r} has max_inflight_jobs={limit} jobs in flight",
                {"Retry-After": RETRY_AFTER_INFLIGHT},
            )
        return added

    async def _ended_same(self, tenant: str, internal: str, digest: str) -> bool:
        """Whether ``internal`` is ``tenant``'s job with this ``digest`` and has ended."""
        values: Any = await self.redis.hmget(self.keys.state(internal), "state", "tenant", "job_sha256")
        state, owner, kept = (None if v is None else as_text(v) for v in values)
        return state in _ENDED and owner == tenant and kept == digest

    async def status(self, request: web.Request) -> web.Response:
        who = self.principal(request, token_ok=True)
        async with redis_deadline():
            answer = await self.state_of(who, request.match_info["id"])
        return _json(200, answer, self._cors(request, who.tenant))

    async def state_of(self, who: Principal, public: str) -> JobState:
        """The job's public state (:mod:`worker.gateway.state`: its state hash's public fields alone)."""
        internal = await self.resolve(who, public)
        values: Any = await self.redis.hmget(self.keys.state(internal), list(PUBLIC_FIELDS))
        answer = job_state(public, values)
        if answer is None:
            raise Refused(404, "not_found", f"no job {public!r}: never enqueued, or expired")
        return answer

    async def cancel(self, request: web.Request) -> web.Response:
        who = self.principal(request, token_ok=True)
        public = request.match_info["id"]
        async with redis_deadline():
            internal = await self.resolve(who, public)
        raw = await read_body(request, self.settings.max_payload_bytes)
        reason = "cancelled by request"
        if raw.strip():
            try:
                reason = _CANCEL.decode(raw).reason
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise Refused(422, "invalid_body", f'the body is not {{"reason": "..."}}: {exc}') from None
        async with redis_deadline():
            answer = await self.cancel_job(public, internal, reason)
        return _json(200, answer, self._cors(request, who.tenant))

    async def cancel_job(self, public: str, internal: str, reason: str) -> Cancelled:
        outcome = await self.store.cancel(internal, reason)
        if outcome == "unknown":
            raise Refused(404, "not_found", f"no job {public!r}: never enqueued, or expired")
        if outcome == "requested":
            await self.redis.publish(self.keys.cancel, cancel_message(internal, reason))
        return Cancelled(id=public, outcome=outcome)  # type: ignore[arg-type]

    async def events(self, request: web.Request) -> web.StreamResponse:
        who = self.principal(request, token_ok=True)
        public = request.match_info["id"]
        after, problem = after_stream_id(request.headers.get("Last-Event-ID"), request.query.get("after"))
        if problem is not None:
            raise Refused(400, "bad_resume_id", problem)
        async with redis_deadline():
            internal = await self.resolve(who, public)
        if not self.streams.acquire(who.name, who.tenant.max_streams):
            self.metrics.refused.labels("streams").inc()
            raise Refused(
                429,
                "too_many_streams",
                f"tenant {who.name!r} has max_streams={who.tenant.max_streams} streams open on this gateway",
                {"Retry-After": RETRY_AFTER_STREAMS},
            )
        try:
            headers = {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
                **self._cors(request, who.tenant),
            }
            response = web.StreamResponse(status=200, headers=headers)
            try:
                await response.prepare(request)
            except ConnectionError:  # gone before its headers were sent
                return response
            self.metrics.open_streams.inc()
            if after != "0-0":
                self.metrics.resumes.inc()
            try:
                await response.write(b"retry: 1000\n\n")
                await self._follow(request, response, internal, after)
            except ConnectionError:  # the client went away (or was cut for falling behind): nothing to say
                return response
            except RedisError as exc:  # the stream has begun: say so in it, the client resumes by id
                log.warning("gateway stream's Redis read failed", error=type(exc).__name__)
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await response.write(comment("Redis is unavailable; reconnect with Last-Event-ID"))
            finally:
                self.metrics.open_streams.dec()
        finally:
            self.streams.release(who.name)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write_eof()
        return response

    # ------------------------------------------------------------------------------- streaming

    async def _write(self, response: web.StreamResponse, entries: list[Entry]) -> bool:
        """Write ``entries``; True when the last one ended the job."""
        if entries:
            await response.write(b"".join(e.wire or frame(e) for e in entries))
            self.metrics.events_sent.inc(sum(1 for e in entries if e.data is not None))
        return bool(entries) and entries[-1].terminal

    async def _replay(
        self, request: web.Request, response: web.StreamResponse, key: str, last: str, until: str | None
    ) -> tuple[str, bool]:
        """Write the entries after ``last`` (up to ``until``, else to the end); (last id, ended).
        A client that reads none of it for WRITE_TIMEOUT is cut (:func:`_bounded`), as when live."""
        while True:
            if last == MAX_STREAM_ID:  # no id follows it (Redis refuses the range): past every entry
                return last, False
            async with redis_deadline():
                items: Any = await self.redis.xrange(
                    key, min=f"({last}", max=until or "+", count=REPLAY_COUNT
                )
            entries = [entry_of(entry_id, fields) for entry_id, fields in items]
            cut = next((i for i, e in enumerate(entries) if e.terminal), None)
            if cut is not None:
                entries = entries[: cut + 1]
            size = sum(len(e.wire) for e in entries)
            ended = await _bounded(self._write(response, entries), request, size)
            if entries:
                last = entries[-1].id
            if ended or len(items) < REPLAY_COUNT:
                return last, ended

    async def _follow(
        self, request: web.Request, response: web.StreamResponse, internal: str, after: str
    ) -> None:
        key = self.keys.events(internal)
        last, ended = await self._replay(request, response, key, after, None)
        if ended:
            return
        if await self._ended_before(internal, last):  # resumed at or past its terminal event
            await response.write(comment(f"the job has ended; no event follows {last}"))
            return
        # A job's feed is shared: it starts where the stream really is, never at a client's claim (a
        # resume id past the end, kept from another stream, would starve every later watcher)
        real = last != after or after == "0-0"  # an entry was read, or it starts at the beginning
        start = last if real else min(last, await self.stream_end(key), key=stream_key)
        watch, position = self.hub.attach(internal, last, self.settings.gateway_buffer_bytes, start=start)
        self._watches.add(watch)
        self.metrics.watched_jobs.set(len(self.hub.feeds))
        try:
            if stream_key(position) > stream_key(last):
                last, ended = await self._replay(request, response, key, last, position)
                if ended:
                    return
            await self._live(request, response, watch, last)
        finally:
            if watch.dropped:
                self.metrics.dropped.labels("behind").inc()
            self._watches.discard(watch)
            self.hub.detach(watch)
            self.metrics.watched_jobs.set(len(self.hub.feeds))

    async def stream_end(self, key: str) -> str:
        """The id of the stream's last entry (``0-0`` when it has none)."""
        async with redis_deadline():
            top: Any = await self.redis.xrevrange(key, count=1)
        return as_text(top[0][0]) if top else "0-0"

    async def _ended_before(self, internal: str, last: str) -> bool:
        """Whether the job ended with a terminal event at or before ``last`` (a resume id past the
        end, e.g. of another job): nothing will ever follow, so the stream must not wait."""
        async with redis_deadline():
            terminal = await self.redis.hget(self.keys.state(internal), "terminal_id")
        return terminal is not None and stream_key(as_text(terminal)) <= stream_key(last)

    async def _live(
        self, request: web.Request, response: web.StreamResponse, watch: Watch, last: str
    ) -> None:
        """Write the watch's entries as the hub hands them over, until the terminal one or a close."""
        heartbeat = self.settings.gateway_heartbeat_seconds
        writing = [False]

        def cut() -> None:  # dropped while its write waits on a client reading nothing: cut it now
            if writing[0] and request.transport is not None:
                request.transport.abort()

        watch.on_drop = cut
        # While it waits with nothing queued, the hub writes each entry straight to the transport
        # (the frame's bytes shared by every watcher; no task woken, no await per event); entries
        # meeting unsent bytes queue instead, and this task writes them, bounded
        transport = request.transport
        watch.chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        while True:
            if not watch.queue and not (
                watch.dropped or watch.gone or watch.finished or watch.ended or self.closing
            ):
                watch.sink = transport
                try:
                    async with asyncio.timeout(heartbeat):
                        await watch.wake.wait()
                except TimeoutError:
                    last = _sunk(watch, last)
                    await _bounded(response.write(comment("keep-alive")), request)
                    continue
                last = _sunk(watch, last)
            if watch.ended:  # the terminal event went out through the transport
                return
            entries = watch.take()
            if entries:
                writing[0] = True
                try:
                    size = sum(len(e.wire) for e in entries)
                    if await _bounded(self._write(response, entries), request, size):
                        return
                finally:
                    writing[0] = False
                last = entries[-1].id
            note = self._close_note(watch, last)
            if note is not None:
                await _bounded(response.write(comment(note)), request)
                return

    def _close_note(self, watch: Watch, last: str) -> str | None:
        """Why a stream ends before its job does (the comment it ends with), or None."""
        if watch.finished:
            return f"the job has ended; no event follows {last}"
        if watch.dropped:
            limit = self.settings.gateway_buffer_bytes
            return f"dropped: this client fell behind by over {limit} bytes; resume after {last}"
        if watch.gone:
            self.metrics.dropped.labels("expired").inc()
            return "the job's keys expired or were deleted"
        if self.closing:
            self.metrics.dropped.labels("stopping").inc()
            return f"gateway stopping; reconnect with Last-Event-ID: {last}"
        return None

    # ------------------------------------------------------------------------------- CORS, errors

    async def preflight(self, request: web.Request) -> web.Response:
        """A preflight carries no credentials: answered for the union of every tenant's origins
        (the real request is then checked against its own tenant's)."""
        origin = request.headers.get("Origin")
        if origin is None or request.headers.get("Access-Control-Request-Method") is None:
            raise Refused(400, "not_a_preflight", "OPTIONS is answered for CORS preflights only")
        if not self._origin_allowed(request, origin, None):
            self.metrics.auth_failures.labels("origin").inc()
            raise Refused(403, "origin_not_allowed", f"origin {origin[:200]!r} is not allowed")
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": _CORS_HEADERS,
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }
        return web.Response(status=204, headers=headers)

    @web.middleware
    async def errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every failure as ``{"error": {"code", "message"}}`` with a clear status; nothing else escapes."""
        try:
            return await handler(request)
        except Refused as exc:
            refusal = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
                exc.status, "bad_request"
            )
            kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}  # 405 names the methods
            refusal = Refused(exc.status, code, exc.reason, kept)
        except RedisError as exc:
            log.warning("gateway Redis request failed", error=type(exc).__name__)
            refusal = Refused(503, "unavailable", "Redis is unavailable; retry", {"Retry-After": "1"})
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception as exc:  # a bug: logged by type, answered without detail
            log.error("gateway request failed", error=type(exc).__name__, path=request.path[:200])
            refusal = Refused(500, "internal", "the gateway failed on this request")
        headers = {**self._cors(request, None), **refusal.headers}
        body = ErrorBody(error=ErrorDetail(code=refusal.code, message=refusal.message))
        response = _json(refusal.status, body, headers)
        if refusal.close:  # what is left of the request cannot be read: the connection closes now
            response.force_close()
            drop_rest = getattr(request.protocol, "drop_rest", None)  # the server's GuardedHandler
            if drop_rest is not None:
                drop_rest()
        return response


_LOW_WATER: Final = 16_384
_ENDED: Final = frozenset({"done", "error", "cancelled"})


def _sunk(watch: Watch, last: str) -> str:
    """Stop writing straight to ``watch``'s transport; the last id it got that way, else ``last``."""
    watch.sink = None
    last, watch.last_id = watch.last_id or last, ""
    return last


async def _bounded(write: Awaitable[Any], request: web.Request, size: int = 64) -> Any:
    """A write that a client not reading at all cannot hold forever: the connection is cut. A
    client keeping up writes ``size`` bytes more without a timer (they cannot reach aiohttp's
    high-water mark, so the write returns at once): the common case costs none."""
    transport = request.transport
    if transport is not None and transport.get_write_buffer_size() + size < _LOW_WATER:
        return await write
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            return await write
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("client stopped reading") from None


def _same_origin(request: web.Request, origin: str) -> bool:
    try:
        return urlsplit(origin).netloc.lower() == (request.host or "").lower()
    except ValueError:
        return False


def _unscoped_id(job_id: str) -> bool:
    from ..jobs import JobId

    if len(job_id) > MAX_JOB_ID:
        return False
    try:
        msgspec.convert(job_id, JobId)
    except msgspec.ValidationError:
        return False
    return True


GATEWAY: Final = web.AppKey("gateway", Gateway)
"""The application's :class:`Gateway` (``request.app[GATEWAY]``)."""


def build_app(gateway: Gateway) -> web.Application:
    """The gateway's application; with ``gateway_ui``, the page's routes too."""
    app = web.Application(
        middlewares=[gateway.errors], client_max_size=gateway.settings.max_payload_bytes + 1
    )
    app[GATEWAY] = gateway
    routes = (
        ("/v1/jobs", "POST", gateway.enqueue),
        (f"/v1/jobs/{_JOB_PATH}/events", "GET", gateway.events),
        (f"/v1/jobs/{_JOB_PATH}/cancel", "POST", gateway.cancel),
        (f"/v1/jobs/{_JOB_PATH}", "GET", gateway.status),
    )
    for path, method, handler in routes:
        resource = app.router.add_resource(path)
        resource.add_route(method, handler)
        resource.add_route("OPTIONS", gateway.preflight)
    if gateway.settings.gateway_ui:
        ui = importlib.import_module("worker.gateway.ui")
        ui.add_ui_routes(app, gateway)
    return app
