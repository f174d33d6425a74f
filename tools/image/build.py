"""Build a Dockerfile's final filesystem without an engine, by executing its instructions.

Each stage is an overlay, as an engine's overlay driver builds it: its own empty layer over its base (the
debootstrap stand-in of tools/image/base.py, or an earlier stage's layers). COPY reads the build context
through the Dockerfile's .dockerignore as an engine does; RUN runs in the stage's root through
tools/image/chroot.py with the stage's environment, user and working directory. The image is the final
stage's layers (``OUT/layers/``, top first) over the base, and its config (environment, user, entry point,
command, health check) in ``OUT/config.json``; nothing is copied from the base, so a rebuild is quick.

The build mounts its overlays in a mount namespace of its own (``python -m tools.image build`` enters one),
so they end with it, however it ends.

RUN steps see the host's network (resolver, hosts file, and CA certificates, read-only), as a build on
the host network would; none of that is copied into the image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tools.image import chroot
from tools.image.base import BaseImage
from tools.image.context import Ignore, ignore_file_for
from tools.image.dockerfile import (
    DockerfileError,
    Instruction,
    exec_form,
    expand,
    flags,
    key_values,
    parse,
    parse_arg,
)

__all__ = ["BuildError", "Image", "ImageConfig", "build", "build_network", "in_root", "load"]


class BuildError(RuntimeError):
    """A step of the build failed; names the Dockerfile line and shows the step's output."""


@dataclass
class ImageConfig:
    env: dict[str, str] = field(default_factory=dict)
    user: str = "0:0"
    workdir: str = "/"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    exposed: list[str] = field(default_factory=list)
    stop_signal: str | None = None
    healthcheck: list[str] | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    layers: tuple[Path, ...]  # the image's own layers, top first
    base: Path  # the stand-in root under them
    config: ImageConfig

    @property
    def lowers(self) -> tuple[Path, ...]:
        return (*self.layers, self.base)

    def argv(self, *args: str) -> list[str]:
        """What ``docker run IMAGE ARGS...`` runs: the entry point, then ARGS or the default command."""
        return [*self.config.entrypoint, *(args or self.config.cmd)]


@dataclass
class _Stage:
    root: Path  # the overlay's mount point
    upper: Path  # this stage's own layer
    lowers: tuple[Path, ...]  # under it, top first
    config: ImageConfig
    args: dict[str, str]
    cmd_inherited: bool = True


def build_network() -> list[chroot.Bind]:
    """What RUN steps see of the host: resolver, hosts file and CA certificates, read-only."""
    wanted = [("/etc/resolv.conf", "/etc/resolv.conf"), ("/etc/hosts", "/etc/hosts")]
    wanted.append(("/etc/ssl/certs", "/etc/ssl/certs"))
    return [chroot.Bind(Path(src), dst) for src, dst in wanted if Path(src).exists()]


def in_root(root: Path, path: str) -> Path:
    """``path`` of the image as a host path, following symlinks as the image would (never out of it)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise BuildError(f"{path}: too many levels of symbolic links in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current = candidate
    return current


def _copy_tree(source: Path, target: Path, keep: Callable[[Path], bool]) -> None:
    """Copy ``source`` (file, link or directory) to ``target``, owned by 0:0, modes and mtimes kept."""
    if source.is_symlink():
        if target.is_symlink() or target.is_file():
            target.unlink()
        target.symlink_to(os.readlink(source))
        os.lchown(target, 0, 0)
    elif source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copystat(source, target)
        os.chown(target, 0, 0)
        for child in sorted(source.iterdir()):
            if keep(child):
                _copy_tree(child, target / child.name, keep)
    elif source.is_file():
        if target.is_symlink():
            target.unlink()
        shutil.copy2(source, target)
        os.chown(target, 0, 0)
    else:
        raise BuildError(f"COPY: {source} is neither a file, a directory nor a link")


class _Builder:
    def __init__(
        self,
        *,
        context: Path,
        ignore: Ignore,
        out: Path,
        base: BaseImage,
        network: Sequence[chroot.Bind],
        log: Callable[[str], None],
    ) -> None:
        self.context = context
        self.ignore = ignore
        self.out = out
        self.base = base
        self.network = list(network)
        self.log = log
        self.stages: dict[str, _Stage] = {}

    # -- context --------------------------------------------------------------------------------

    def _keep(self, path: Path) -> bool:
        return not self.ignore.excluded(path.relative_to(self.context).as_posix())

    def _context_source(self, src: str, where: str) -> Path:
        path = (self.context / src).resolve()
        if path != self.context and self.context not in path.parents:
            raise BuildError(f"{where}: {src} is outside the build context")
        if not path.exists() or (path != self.context and not self._keep(path)):
            raise BuildError(f"{where}: {src} not found in the build context or excluded by .dockerignore")
        return path

    # -- instructions -----------------------------------------------------------------------------

    def stage_from(self, index: int, reference: str, name: str | None) -> _Stage:
        if reference in self.stages:
            parent = self.stages[reference]
            lowers = (parent.upper, *parent.lowers)
            config = replace(parent.config, env=dict(parent.config.env), labels=dict(parent.config.labels))
        elif reference == self.base.spec.reference:
            lowers, config = (self.base.root,), ImageConfig(env=dict(self.base.env))
        else:
            raise BuildError(
                f"FROM {reference}: the lane stands in only for {self.base.spec.reference} (a debootstrap "
                f"root of Debian {self.base.spec.release}) and earlier stages"
            )
        work = self.out / "stages" / str(index)
        for part in ("upper", "work", "root"):
            (work / part).mkdir(parents=True)
        options = f"lowerdir={':'.join(map(str, lowers))},upperdir={work / 'upper'},workdir={work / 'work'}"
        chroot.mount("-t", "overlay", "-o", options, "overlay", str(work / "root"))
        self.log(f"stage {index}{f' ({name})' if name else ''}: FROM {reference}")
        return _Stage(work / "root", work / "upper", lowers, config, {})

    def run(self, stage: _Stage, instr: Instruction) -> None:
        argv = exec_form(instr.args, instr.where()) or ["/bin/sh", "-c", instr.args]
        env = {**stage.args, **stage.config.env}
        workdir = stage.config.workdir
        in_root(stage.root, workdir).mkdir(parents=True, exist_ok=True)
        cmd = chroot.command(stage.root, argv, user=stage.config.user, workdir=workdir, binds=self.network)
        started = time.monotonic()
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        self.log(f"  RUN ({time.monotonic() - started:.1f} s) {instr.args[:90]}")
        output = (result.stdout + result.stderr).strip()
        if output:
            self.log("    " + output.replace("\n", "\n    "))
        if result.returncode != 0:
            raise BuildError(f"{instr.where()}: exit {result.returncode}: {instr.args}\n{output[-4000:]}")

    def copy(self, stage: _Stage, instr: Instruction) -> None:
        where = instr.where()
        options, rest = flags(instr.args, frozenset({"from"}), where)
        words = exec_form(rest, where) or rest.split()
        words = [expand(w, {**stage.args, **stage.config.env}) for w in words]
        if len(words) < 2:
            raise BuildError(f"{where}: COPY takes SRC... DEST")
        *sources, dest = words
        if "from" in options:
            other = self.stages.get(options["from"])
            if other is None:
                raise BuildError(f"{where}: --from={options['from']} names no earlier stage")
            paths = [in_root(other.root, s) for s in sources]
            missing = [s for s, p in zip(sources, paths, strict=True) if not p.exists()]
            if missing:
                raise BuildError(f"{where}: not found in stage {options['from']}: {', '.join(missing)}")
            keep: Callable[[Path], bool] = lambda _: True  # noqa: E731
        else:
            if any(ch in s for s in sources for ch in "*?["):
                raise BuildError(f"{where}: wildcards in COPY sources are not implemented by the image lane")
            paths = [self._context_source(s, where) for s in sources]
            keep = self._keep
        image_dest = dest if dest.startswith("/") else f"{stage.config.workdir.rstrip('/')}/{dest}"
        into_dir = dest.endswith("/") or len(paths) > 1
        target = in_root(stage.root, image_dest)
        for path in paths:
            if path.is_dir() and not path.is_symlink():
                _copy_tree(path, target, keep)
            else:
                final = target / path.name if into_dir or target.is_dir() else target
                final.parent.mkdir(parents=True, exist_ok=True)
                _copy_tree(path, final, keep)

    def apply(self, stage: _Stage, instr: Instruction, global_args: dict[str, str]) -> None:
        if instr.keyword == "RUN":
            self.run(stage, instr)
        elif instr.keyword == "COPY":
            self.copy(stage, instr)
        elif instr.keyword == "ARG":
            name, default = parse_arg(instr.args, instr.line)
            variables = {**stage.args, **stage.config.env}
            value = global_args.get(name, expand(default, variables) if default is not None else None)
            if value is not None:
                stage.args[name] = value
        elif instr.keyword == "WORKDIR":
            path = expand(instr.args, {**stage.args, **stage.config.env})
            workdir = stage.config.workdir
            stage.config.workdir = path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}"
            in_root(stage.root, stage.config.workdir).mkdir(parents=True, exist_ok=True)
        else:
            self.configure(stage, instr)

    def configure(self, stage: _Stage, instr: Instruction) -> None:
        """The instructions that only change the image's config."""
        variables = {**stage.args, **stage.config.env}
        keyword, args, config, where = instr.keyword, instr.args, stage.config, instr.where()
        if keyword in ("ENV", "LABEL"):
            values = {k: expand(v, variables) for k, v in key_values(args, where).items()}
            (config.env if keyword == "ENV" else config.labels).update(values)
        elif keyword == "USER":
            config.user = expand(args, variables)
        elif keyword == "EXPOSE":
            config.exposed += expand(args, variables).split()
        elif keyword == "STOPSIGNAL":
            config.stop_signal = expand(args, variables)
        elif keyword == "HEALTHCHECK":
            config.healthcheck = self._healthcheck(args, where)
        elif keyword == "ENTRYPOINT":
            config.entrypoint = exec_form(args, where) or ["/bin/sh", "-c", args]
            if stage.cmd_inherited:  # an ENTRYPOINT resets the command the base image set
                config.cmd = []
        elif keyword == "CMD":
            config.cmd = exec_form(args, where) or ["/bin/sh", "-c", args]
            stage.cmd_inherited = False
        else:  # the parser admits only what is handled here and in apply()
            raise DockerfileError(f"{where}: not implemented")

    @staticmethod
    def _healthcheck(args: str, where: str) -> list[str] | None:
        allowed = frozenset({"interval", "timeout", "start-period", "start-interval", "retries"})
        _, rest = flags(args, allowed, where)
        if rest.upper() == "NONE":
            return None
        keyword, _, command = rest.partition(" ")
        if keyword.upper() != "CMD":
            raise DockerfileError(f"{where}: HEALTHCHECK takes [OPTIONS] CMD ... or NONE")
        return exec_form(command.strip(), where) or ["/bin/sh", "-c", command.strip()]


def build(
    dockerfile: Path,
    context: Path,
    out: Path,
    *,
    base: BaseImage,
    build_args: dict[str, str] | None = None,
    network: Sequence[chroot.Bind] | None = None,
    log: Callable[[str], None] | None = None,
) -> Image:
    """Build ``dockerfile`` with ``context`` into ``out`` (replacing what is there).

    Call it in a mount namespace of its own (``chroot.private_mounts()``): it mounts a stage overlay.
    """
    if not chroot.private_mounts():
        raise BuildError("build() mounts overlays: run it in a private mount namespace (unshare --mount)")
    context = context.resolve()
    parsed = parse(dockerfile.read_text(encoding="utf-8"))
    ignore_path = ignore_file_for(dockerfile, context)
    ignore = Ignore(ignore_path.read_text(encoding="utf-8") if ignore_path else "")
    global_args = {k: v for k, v in parsed.global_args.items() if v is not None}
    global_args.update(build_args or {})
    shutil.rmtree(out / "layers", ignore_errors=True)
    shutil.rmtree(out / "stages", ignore_errors=True)
    (out / "config.json").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "build.log").open("w", encoding="utf-8")

    def say(line: str) -> None:
        log_file.write(line + "\n")
        log_file.flush()
        if log is not None:
            log(line)

    builder = _Builder(
        context=context,
        ignore=ignore,
        out=out,
        base=base,
        network=build_network() if network is None else network,
        log=say,
    )
    started = time.monotonic()
    try:
        stages: list[_Stage] = []
        for index, spec in enumerate(parsed.stages):
            stage = builder.stage_from(index, expand(spec.base, global_args), spec.name)
            stages.append(stage)
            for instr in spec.instructions:
                builder.apply(stage, instr, global_args)
            builder.stages[str(index)] = stage
            if spec.name:
                builder.stages[spec.name] = stage
        final = stages[-1]
        for stage in reversed(stages):
            chroot.umount(stage.root)
        own = [final.upper, *(p for p in final.lowers if p != base.root)]
        layers = []
        for number, layer in enumerate(own):
            target = out / "layers" / str(number)
            target.parent.mkdir(parents=True, exist_ok=True)
            layer.rename(target)
            layers.append(target)
        meta = {"layers": [p.name for p in layers], "base": str(base.root), "config": asdict(final.config)}
        (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        say(f"built in {time.monotonic() - started:.1f} s: {len(layers)} layer(s) over {base.root}")
        return Image(tuple(layers), base.root, final.config)
    finally:
        shutil.rmtree(out / "stages", ignore_errors=True)
        log_file.close()


def load(out: Path) -> Image:
    """An image ``build`` wrote to ``out``."""
    meta = json.loads((out / "config.json").read_text())
    layers = tuple(out / "layers" / name for name in meta["layers"])
    return Image(layers, Path(meta["base"]), ImageConfig(**meta["config"]))


def log_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
