"""Become a container process: mounts, chroot, user, exec. Runs as PID 1 of fresh mount and PID namespaces.

With ``--lower`` (the image's layers, top first, then its base) the root is an overlay mounted at
``--root`` with ``--upper``/``--work`` as the container's own writable layer, as an engine's overlay
driver does: the image itself is never written.

Started only through tools/image/chroot.py, as ``unshare --mount --pid --fork --kill-child -- python
enter.py ...``. Every mount made here lives in the private mount namespace, so it disappears with the
last process of the container, however that process ends: nothing is left mounted on the host. The
argument vector named after ``--`` replaces this process (``exec``), so it is PID 1 of the namespace and
receives signals as an image's entry point does in a container.

Standard library only: it runs under whatever Python started the lane, in isolated mode (``-I``), so the
container's environment (the process environment this is started with, passed on unchanged to the
program) cannot change how it runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

# The devices a container runtime gives a container (the OCI runtime spec's default devices).
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1"}
DEV_LINKS["stderr"] = "/proc/self/fd/2"


# The host's mount(8), found before the chroot and independently of the container's PATH.
MOUNT = shutil.which("mount", path="/usr/sbin:/usr/bin:/sbin:/bin") or "mount"


def mount(*args: str) -> None:
    result = subprocess.run([MOUNT, *args], capture_output=True, text=True, check=False, env={})
    if result.returncode != 0:
        raise SystemExit(f"tokenwire image: mount {' '.join(args)}: {result.stderr.strip()}")


def inside(root: Path, path: str) -> Path:
    """``path`` of the container as a host path under ``root``, refusing one that climbs out."""
    target = (root / path.lstrip("/")).resolve()
    if target != root and root not in target.parents:
        raise SystemExit(f"tokenwire image: {path} resolves outside the root")
    return target


def overlay(root: Path, lowers: list[str], upper: str, work: str) -> None:
    options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
    mount("-t", "overlay", "-o", options, "overlay", str(root))


def container_mounts(root: Path) -> None:
    mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", str(inside(root, "/proc")))
    mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", str(inside(root, "/sys")))
    dev = inside(root, "/dev")
    mount("-t", "tmpfs", "-o", "nosuid,mode=755,size=65536k", "tmpfs", str(dev))
    for name in DEVICES:
        (dev / name).touch()
        mount("--bind", f"/dev/{name}", str(dev / name))
    for name, target in DEV_LINKS.items():
        (dev / name).symlink_to(target)
    (dev / "shm").mkdir()
    mount("-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=1777,size=65536k", "shm", str(dev / "shm"))


def bind(root: Path, spec: str) -> None:
    """``SRC:DST[:ro]``; a missing target is created, as a container runtime creates mount points."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "ro"):
        raise SystemExit(f"tokenwire image: --bind takes SRC:DST[:ro], got {spec!r}")
    source = Path(parts[0])
    target = inside(root, parts[1])
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            target.mkdir()
        else:
            target.touch()
    mount("--bind", str(source), str(target))
    if len(parts) == 3:
        mount("-o", "remount,bind,ro", str(target))


def ids(user: str) -> tuple[int, int, list[int]]:
    """``NAME|UID[:GROUP|GID]`` read from the root's /etc/passwd and /etc/group (after the chroot)."""
    name, _, group = user.partition(":")
    passwd = [line.split(":") for line in Path("/etc/passwd").read_text().splitlines() if line]
    groups = [line.split(":") for line in Path("/etc/group").read_text().splitlines() if line]
    entry = next((p for p in passwd if name in (p[0], p[2])), None)
    if entry is None and not name.isdigit():
        raise SystemExit(f"tokenwire image: no user {name!r} in /etc/passwd")
    uid = int(entry[2]) if entry else int(name)
    if group:
        found = next((g for g in groups if group in (g[0], g[2])), None)
        if found is None and not group.isdigit():
            raise SystemExit(f"tokenwire image: no group {group!r} in /etc/group")
        gid = int(found[2]) if found else int(group)
    else:
        gid = int(entry[3]) if entry else 0
    login = entry[0] if entry else None
    extra = sorted({int(g[2]) for g in groups if login and login in g[3].split(",")} - {gid})
    return uid, gid, extra


def main() -> None:
    parser = argparse.ArgumentParser(prog="enter.py")
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--lower", action="append", default=[], metavar="DIR")
    parser.add_argument("--upper")
    parser.add_argument("--work")
    parser.add_argument("--bind", action="append", default=[], metavar="SRC:DST[:ro]")
    parser.add_argument("--user", default="0:0")
    parser.add_argument("--workdir", default="/")
    parser.add_argument("argv", nargs="+")
    args = parser.parse_args()
    if os.getpid() != 1:
        raise SystemExit("tokenwire image: enter.py must run as PID 1 of a new PID namespace")
    mount("--make-rprivate", "/")
    root = args.root.resolve()
    if args.lower:
        if not (args.upper and args.work):
            raise SystemExit("tokenwire image: --lower needs --upper and --work")
        overlay(root, args.lower, args.upper, args.work)
    container_mounts(root)
    for spec in args.bind:
        bind(root, spec)
    env = dict(os.environ)  # the container's environment, exactly: chroot.py starts this with it
    os.chroot(root)
    os.chdir(args.workdir)
    uid, gid, extra = ids(args.user)
    os.setgroups(extra)
    os.setgid(gid)
    os.setuid(uid)
    program = shutil.which(args.argv[0], path=env.get("PATH", os.defpath))
    if program is None:
        print(f"tokenwire image: {args.argv[0]}: not found in PATH", file=sys.stderr)
        raise SystemExit(127)
    sys.stdout.flush()
    os.execve(program, args.argv, env)


if __name__ == "__main__":
    main()
