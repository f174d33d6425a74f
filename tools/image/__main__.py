"""``python -m tools.image base|build|run``: the image lane by hand (as root, from the repository root)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.image import base, chroot
from tools.image.build import BuildError, build, load, log_to_stderr
from tools.image.dockerfile import DockerfileError, parse
from tools.image.run import Container

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
_REEXEC = "IMAGE_LANE_REEXEC"  # set on the one re-exec under unshare, so it can never loop


def default_base(dockerfile: Path) -> base.BaseSpec:
    """The stand-in for the Dockerfile's ``ARG BASE`` default (the image an engine would pull)."""
    reference = parse(dockerfile.read_text(encoding="utf-8")).global_args.get("BASE")
    if not reference:
        raise base.BaseError(f"{dockerfile}: no `ARG BASE=...` default names the base image")
    return base.spec_of(reference)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_base = sub.add_parser("base", help="make (or reuse) the debootstrap stand-in for BASE; print its root")
    p_base.add_argument("--dockerfile", type=Path, default=DOCKERFILE)
    p_build = sub.add_parser("build", help="build the Dockerfile's image into OUT (layers + config.json)")
    p_build.add_argument("--dockerfile", type=Path, default=DOCKERFILE)
    p_build.add_argument("--context", type=Path, default=ROOT)
    p_build.add_argument("--out", type=Path, required=True)
    p_run = sub.add_parser("run", help="run an image built into OUT, as its user, with its entry point")
    p_run.add_argument("--out", type=Path, required=True)
    p_run.add_argument("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    p_run.add_argument("-v", "--bind", action="append", default=[], metavar="SRC:DST[:ro]")
    p_run.add_argument("args", nargs="*", help="instead of the image's CMD")
    return parser


def _build(args: argparse.Namespace) -> int:
    if not chroot.private_mounts():  # the build mounts overlays: in a mount namespace of its own
        if os.environ.get(_REEXEC) == "1":
            raise chroot.ChrootError("unshare --mount did not give the build a mount namespace of its own")
        unshare = shutil.which("unshare")
        if unshare is None:
            raise chroot.ChrootError("unshare (util-linux) is not installed")
        env = {**os.environ, "PYTHONPATH": str(ROOT), _REEXEC: "1"}
        argv = [unshare, "--mount", "--", sys.executable, "-m", "tools.image", *sys.argv[1:]]
        os.execve(unshare, argv, env)
    stand_in = base.ensure(default_base(args.dockerfile))
    image = build(args.dockerfile, args.context, args.out.resolve(), base=stand_in, log=log_to_stderr)
    print(args.out / "config.json")
    del image
    return 0


def _run(args: argparse.Namespace) -> int:
    container = Container(load(args.out.resolve()), Path(tempfile.mkdtemp(prefix="tokenwire-container-")))
    overrides = dict(item.partition("=")[::2] for item in args.env)
    binds = []
    for spec in args.bind:
        source, _, rest = spec.partition(":")
        target, _, mode = rest.partition(":")
        binds.append(chroot.Bind(Path(source).resolve(), target, read_only=mode == "ro"))
    try:
        cmd = container.command(*args.args, binds=binds)
        return subprocess.run(cmd, env=container.environment(overrides), check=False).returncode
    finally:
        container.remove()


def main() -> int:
    args = _parser().parse_args()
    try:
        if args.command == "base":
            print(base.ensure(default_base(args.dockerfile)).root)
            return 0
        if args.command == "build":
            return _build(args)
        return _run(args)
    except (base.BaseError, BuildError, DockerfileError, chroot.ChrootError) as exc:
        print(f"image lane: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
