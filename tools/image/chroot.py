"""Run a program in a root filesystem as a container would, without a container engine.

``unshare`` gives the program fresh mount and PID namespaces (the host's network, as ``--network host``);
tools/image/enter.py, PID 1 of the new namespace, mounts the root (an overlay of the image's layers when
asked), /proc, /sys and a minimal /dev inside it, applies the bind mounts, chroots, drops to the user and
execs the program, which then is PID 1. Mounts live only in that namespace and end with its last
process. ``setpriv --pdeathsig KILL`` kills ``unshare`` when the process that started it dies, and
``--kill-child`` then ends the namespace: neither mounts nor processes outlive whoever ran the container.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Bind",
    "ChrootError",
    "Overlay",
    "command",
    "mount",
    "mounts_under",
    "pid1",
    "private_mounts",
    "umount",
]

ENTER = Path(__file__).resolve().with_name("enter.py")


class ChrootError(RuntimeError):
    """The machine cannot run the lane (not root, no unshare, a mount failed); says what is missing."""


@dataclass(frozen=True)
class Bind:
    source: Path
    target: str
    read_only: bool = True

    def spec(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class Overlay:
    """The root as an overlay: ``lowers`` top first (the image's layers, then its base)."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ChrootError(f"{name} (util-linux) is not installed")
    return found


def command(
    root: Path,
    argv: Sequence[str],
    *,
    user: str = "0:0",
    workdir: str = "/",
    binds: Sequence[Bind] = (),
    overlay: Overlay | None = None,
) -> list[str]:
    """The host command that runs ``argv`` in ``root``; start it with the container's environment."""
    if os.geteuid() != 0:
        raise ChrootError("the image lane needs root (mount namespaces, chroot)")
    if not argv:
        raise ValueError("no program to run")
    cmd = [_tool("setpriv"), "--pdeathsig", "KILL", _tool("unshare"), "--mount", "--pid", "--fork"]
    cmd += ["--kill-child", "--", sys.executable, "-I", str(ENTER)]
    cmd += ["--root", str(root), "--user", user, "--workdir", workdir]
    if overlay is not None:
        for lower in overlay.lowers:
            cmd += ["--lower", str(lower)]
        cmd += ["--upper", str(overlay.upper), "--work", str(overlay.work)]
    for bind in binds:
        cmd += ["--bind", bind.spec()]
    return [*cmd, "--", *argv]


def private_mounts() -> bool:
    """True in a mount namespace other than the parent process's (``unshare --mount`` made it for us):
    mounts made here are invisible to whoever started this process and end with its namespace."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink(f"/proc/{os.getppid()}/ns/mnt")
    except OSError:
        return False


def mount(*args: str) -> None:
    """mount(8) in this process's namespace; only ever called where ``private_mounts()`` holds."""
    if not private_mounts():
        raise ChrootError("refusing to mount in the host's mount namespace")
    result = subprocess.run([_tool("mount"), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ChrootError(f"mount {' '.join(args)}: {result.stderr.strip()}")


def umount(point: Path) -> None:
    if not private_mounts():
        raise ChrootError("refusing to unmount in the host's mount namespace")
    result = subprocess.run([_tool("umount"), str(point)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ChrootError(f"umount {point}: {result.stderr.strip()}")


def pid1(unshare_pid: int) -> int | None:
    """The container's PID 1 (as the host numbers it): the child ``unshare --fork`` started."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in this process's mount namespace (the host's)."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found
