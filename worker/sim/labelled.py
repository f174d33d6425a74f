"""A simulated model with known ground truth, for calibration (issue 13 §3).

With the directive ``labelled=D`` (``tokenwire/sim;labelled=1.5;tokens=8``) the simulator answers
as a model whose answers are right or wrong by construction, and whose wrong answers are less
probable, with overlap:

- each prompt's answer is **correct** with probability ``correct_rate`` (directive, default 0.7),
  drawn from a hash of the prompt alone (:func:`truth`), so a test knows the ground truth of every
  job it enqueues;
- its latent quality is ``x ~ N(D, 1)`` when correct and ``x ~ N(0, 1)`` when wrong, and the answer's
  mean token log-probability is ``L = log σ(x)`` (so ``confidence = σ(x)``);
- its content tokens carry ``0.5·L`` and ``1.5·L`` alternately (the last one ``L`` when their
  number is odd), so their mean is exactly ``L`` whatever the length, while ``min_prob`` and the
  10th-percentile probability (``exp(1.5·L)``) vary with it too.

``confidence``, ``mean_logprob``, ``min_prob``, ``p10_prob`` and the routing signals ``quantile``
and ``window_min`` are then increasing functions of ``x`` (for answers of one length), and their
AUROC over the population is ``P(x_correct > x_wrong) = Φ(D/√2)`` (:func:`expected_auroc`), since
``x_correct − x_wrong ~ N(D, 2)``. The text is the simulator's usual text; only the
log-probabilities change.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import msgspec

from .generate import SimToken

__all__ = ["Truth", "answer_logprobs", "expected_auroc", "labelled_events", "truth"]


class Truth(NamedTuple):
    correct: bool
    latent: float
    mean_logprob: float


def expected_auroc(separation: float) -> float:
    """The population AUROC of the labelled model's signals: ``Φ(D/√2)``."""
    return 0.5 * math.erfc(-separation / 2.0)  # Φ(z) = erfc(−z/√2)/2 with z = D/√2


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def truth(prompt: str, separation: float, correct_rate: float = 0.7) -> Truth:
    """Whether the labelled model answers ``prompt`` correctly, its latent quality and the answer's
    mean log-probability (pure: the same prompt always gives the same truth)."""
    digest = hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=8, person=b"tw-label")
    rng = random.Random(int.from_bytes(digest.digest(), "big"))
    correct = rng.random() < correct_rate
    latent = rng.gauss(separation if correct else 0.0, 1.0)
    return Truth(correct, latent, max(-20.0, _log_sigmoid(latent)))


def answer_logprobs(mean_logprob: float, n: int) -> list[float]:
    """The ``n`` token log-probabilities of an answer whose mean is ``mean_logprob``."""
    out = [mean_logprob * (0.5 if i % 2 == 0 else 1.5) for i in range(n)]
    if n % 2:
        out[-1] = mean_logprob
    return out


def labelled_events(
    events: Iterable[tuple[SimToken, str | None]], prompt: str, separation: float, correct_rate: float
) -> Iterator[tuple[SimToken, str | None]]:
    """``events`` (a :meth:`~worker.sim.generate.TokenSource.events` stream) with the content tokens'
    log-probabilities set as the module doc says. Special tokens (the EOS, always last) keep theirs.
    One content token is held back until the next event shows whether it is the last one."""
    mean = truth(prompt, separation, correct_rate).mean_logprob
    index = 0
    held: tuple[SimToken, str | None] | None = None

    def relabel(item: tuple[SimToken, str | None], last: bool) -> tuple[SimToken, str | None]:
        factor = 1.0 if last and index % 2 == 0 else 0.5 if index % 2 == 0 else 1.5
        return msgspec.structs.replace(item[0], logprob=mean * factor), item[1]

    for token, reason in events:
        if held is not None:
            yield relabel(held, last=token.special)
            index += 1
            held = None
        if token.special:
            yield token, reason
        else:
            held = (token, reason)
    if held is not None:
        yield relabel(held, last=True)
