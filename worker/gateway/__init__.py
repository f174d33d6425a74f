"""The gateway (``tokenwire gateway``): live, resumable, per-tenant token streams over HTTP.

Modules: :mod:`.app` (the HTTP API, ``build_app``), :mod:`.hub` (the shared multiplexed reader),
:mod:`.auth` (keys, read tokens), :mod:`.ids` (per-tenant id scoping, stream ids), :mod:`.limits`
(in-flight jobs in Redis, streams per process), :mod:`.sse` (frames), :mod:`.metrics`,
:mod:`.server` (``serve_gateway``), :mod:`.openapi` (``schemas/gateway.openapi.yaml``). The page
(``gateway_ui``) lives in :mod:`.ui`, which provides ``add_ui_routes(app, gateway)``; ``build_app`` calls
it, and a handler finds the :class:`~worker.gateway.app.Gateway` as ``request.app[GATEWAY]``.

Job ids are scoped per tenant (:mod:`.ids`): tenant ``acme``'s job ``q1`` runs as ``acme/q1``, the
``job_id`` its events carry; the tenant names it ``q1`` in every URL.
"""
