"""A CPU budget per worker process, with a cgroup CPU quota (Linux, root; cgroup v1 or v2).

On a machine with fewer cores than the processes under test (two workers, the simulator, Redis and
the subscriber on two cores), "one core per worker" cannot be given; a quota of a fraction of a core
per worker can, leaving the rest to the others. Scaling is then read as: one worker held to q cores
carries X events/s, two workers held to q cores each carry about 2X, with Redis far from its limit.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

__all__ = ["CpuQuota", "QuotaUnavailable", "quota_unavailable"]

_V1 = Path("/sys/fs/cgroup/cpu")
_V2 = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


class QuotaUnavailable(RuntimeError):
    """Neither cgroup v1's cpu controller nor cgroup v2 with cpu is writable here."""


class CpuQuota:
    """One cgroup holding its processes to ``cores`` CPUs (e.g. 0.5) in all."""

    def __init__(self, name: str, cores: float) -> None:
        if not cores > 0:
            raise ValueError("cores must be > 0")
        self.name = name
        self.cores = cores
        self.path: Path | None = None

    def create(self) -> None:
        quota = max(1000, round(self.cores * _PERIOD_US))
        try:
            if (_V1 / "cpu.cfs_quota_us").exists():
                self.path = _V1 / self.name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.cfs_period_us").write_text(str(_PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            elif "cpu" in _read(_V2 / "cgroup.controllers").split():
                if "cpu" not in _read(_V2 / "cgroup.subtree_control").split():
                    (_V2 / "cgroup.subtree_control").write_text("+cpu")
                self.path = _V2 / self.name
                self.path.mkdir(exist_ok=True)
                (self.path / "cpu.max").write_text(f"{quota} {_PERIOD_US}")
            else:
                raise QuotaUnavailable("no cgroup cpu controller (v1 cpu or v2 with cpu) on this machine")
        except OSError as exc:
            raise QuotaUnavailable(f"cannot set a CPU quota ({exc}): run as root on Linux") from exc

    def add(self, pid: int) -> None:
        if self.path is None:
            raise RuntimeError("create() first")
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """Remove the cgroup (after its processes have exited); never raises."""
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.rmdir()
            self.path = None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def quota_unavailable() -> str | None:
    """Why CPU quotas cannot be set here, or ``None`` when they can (a probe cgroup is made and
    removed)."""
    probe = CpuQuota("tokenwire-bench-probe", 0.5)
    try:
        probe.create()
    except QuotaUnavailable as exc:
        return str(exc)
    finally:
        probe.remove()
    return None
