"""tokenwire feedback and tokenwire calibrate as a user runs them: jobs of the simulator's labelled
model run by a worker process, judged from the command line, calibrated as text, JSON and a plot."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from worker.calibrate import auroc
from worker.sim.labelled import truth

from .clikit import run

SEPARATION = 2.0
MODEL = f"tokenwire/sim;labelled={SEPARATION};tokens=6"
N = 6


def test_feedback_then_calibrate(
    env: dict[str, str], worker_proc: subprocess.Popen[str], tmp_path: Path
) -> None:
    confidences, labels = [], []
    for i in range(N):
        prompt = f"e2e question {i}"
        out = run(env, "enqueue", "--id", f"q{i}", "--model", MODEL, "--input", prompt, "--follow", "--json")
        assert out.returncode == 0, out.stderr
        done = json.loads(out.stdout.splitlines()[-1])
        assert done["type"] == "done"
        confidences.append(done["confidence"])
        labels.append(truth(prompt, SEPARATION).correct)
        verdict = "--correct" if labels[-1] else "--incorrect"
        judged = run(env, "feedback", f"q{i}", verdict, "--label", "simulated truth")
        assert judged.returncode == 0, judged.stderr
        assert judged.stdout.startswith(f"q{i}: recorded as {'correct' if labels[-1] else 'incorrect'}")
    assert 0 < sum(labels) < N  # both kinds, so AUROC is defined

    out = run(env, "calibrate", "--json", "--since", "1h")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    (model,) = report["models"]
    assert model["model"] == MODEL and model["n_labelled"] == N and model["reliable"] is False
    conf = next(s for s in model["signals"] if s["signal"] == "confidence")
    assert conf["auroc"] == auroc(confidences, labels)
    lo, hi = conf["auroc_ci"]
    assert lo <= conf["auroc"] <= hi
    assert conf["recommended"]["caught"] >= 0.9 and conf["setting"]["review"]["min_confidence"] > 0

    text = run(env, "calibrate", "--review-rate", "0.5")
    assert text.returncode == 0, text.stderr
    assert f"model {MODEL}: {N} labelled" in text.stdout and "unreliable" in text.stdout
    assert "job setting: " in text.stdout and "flag ≤ 50%" in text.stdout

    png = tmp_path / "calibration.png"
    plotted = run(env, "calibrate", "--plot", str(png))
    assert plotted.returncode == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plot written to {png}" in plotted.stderr

    other = run(env, "calibrate", "--model", "another-model")
    assert other.returncode == 0 and other.stdout.startswith("no feedback recorded")
    assert math.isfinite(conf["brier"]) and math.isfinite(conf["ece"])


def test_feedback_refusals(env: dict[str, str], worker_proc: subprocess.Popen[str]) -> None:
    unknown = run(env, "feedback", "never-enqueued", "--correct")
    assert unknown.returncode == 4
    assert "no job 'never-enqueued': it was never enqueued" in unknown.stderr
    missing = run(env, "feedback", "x")
    assert (
        missing.returncode == 2 and "one of the arguments --correct --incorrect is required" in missing.stderr
    )
    failing = "tokenwire/sim;fault=status;status=400"
    out = run(env, "enqueue", "--id", "fails", "--model", failing, "--input", "q", "--follow")
    assert out.returncode == 1
    failed = run(env, "feedback", "fails", "--incorrect")
    assert failed.returncode == 1 and "ended with `error`: it has no answer to judge" in failed.stderr
    ok = run(env, "enqueue", "--id", "fine", "--model", "tokenwire/sim;tokens=3", "--input", "q", "--follow")
    assert ok.returncode == 0
    too_long = run(env, "feedback", "fine", "--correct", "--label", "x" * 1001)
    assert too_long.returncode == 2 and "invalid feedback" in too_long.stderr
