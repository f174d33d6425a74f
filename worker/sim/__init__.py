"""tokenwire sim: a local upstream LLM simulator with per-request fault injection.

Serves DeepInfra's native streaming API (``POST /v1/inference/{model}``) and TGI's
``POST /generate_stream`` with deterministic tokens and logprobs, for the demo, the tests, the
benchmark and users' own load tests. Faults ride in the model name
(``tokenwire/sim-small;fault=disconnect;after=5``); see :mod:`worker.sim.faults`.
"""

from worker.sim.server import SimConfig, create_app, run, serve, serve_forever

__all__ = ["SimConfig", "create_app", "run", "serve", "serve_forever"]
