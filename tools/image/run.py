"""Run a built image as a container: its layers under a fresh writable layer, its user and entry point."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.image import chroot
from tools.image.build import Image

__all__ = ["Container"]


@dataclass(frozen=True)
class Container:
    """One container of ``image``; ``scratch`` holds its writable layer (removed by ``remove``)."""

    image: Image
    scratch: Path

    def command(
        self,
        *args: str,
        user: str | None = None,
        binds: Sequence[chroot.Bind] = (),
        entrypoint: Sequence[str] | None = None,
    ) -> list[str]:
        """``docker run [--user U] [-v ...] [--entrypoint E] IMAGE ARGS...``.

        Start the command with ``environment()``: it is the container's environment."""
        argv = [*entrypoint, *args] if entrypoint is not None else self.image.argv(*args)
        for part in ("upper", "work", "root"):
            (self.scratch / part).mkdir(parents=True, exist_ok=True)
        overlay = chroot.Overlay(self.image.lowers, self.scratch / "upper", self.scratch / "work")
        return chroot.command(
            self.scratch / "root",
            argv,
            user=user or self.image.config.user,
            workdir=self.image.config.workdir,
            binds=binds,
            overlay=overlay,
        )

    def environment(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """The image's environment with ``-e`` overrides, and nothing of the caller's."""
        return {**self.image.config.env, **(overrides or {})}

    def remove(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
