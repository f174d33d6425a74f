"""tokenwire sim: a local upstream LLM simulator with per-request fault injection.

Serves DeepInfra's native streaming API (``POST /v1/inference/{model}``), TGI's
``POST /generate_stream`` and the OpenAI-style chat and legacy completions routes
(``/v1/openai/chat/completions``, ``/v1/openai/completions``, also without ``/openai``) in the
OpenAI, Together, vLLM or llama.cpp wire shape, with deterministic tokens and logprobs, for the
demo, the tests, the benchmark and users' own load tests. Faults and the dialect ride in the model
name (``tokenwire/sim-small;fault=disconnect;after=5``, ``…;dialect=vllm``); see
:mod:`worker.sim.faults` and :mod:`worker.sim.openai_api`.
"""

from worker.sim.server import SimConfig, create_app, run, serve, serve_forever

__all__ = ["SimConfig", "create_app", "run", "serve", "serve_forever"]
