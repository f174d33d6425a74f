"""Compare image filesystems: a signature per path (type, mode, owner, content hash or link target).

Modification times are left out (RUN writes files at build time), and so are the paths a container
runtime makes for each container (/dev, the hosts and resolver files, ...). One file records when it was
installed: uv's ``uv_cache.json`` in the dist-info of a package installed from a path (the wheel); its
content, and its line in that dist-info's RECORD, are left out too.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

Signature = tuple[object, ...]

RUNTIME_PATHS = (
    "/dev",
    "/proc",
    "/sys",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/run/.containerenv",
)


def _runtime(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in RUNTIME_PATHS)


INSTALL_STAMPS = ("uv_cache.json",)


def _digest(name: str, stream: IO[bytes]) -> str:
    base = name.rsplit("/", 1)[-1]
    if base in INSTALL_STAMPS:
        return "(install time)"
    digest = hashlib.sha256()
    if base == "RECORD" and ".dist-info/" in name:
        lines = stream.read().splitlines(keepends=True)
        digest.update(b"".join(x for x in lines if not x.split(b",", 1)[0].endswith(b"/uv_cache.json")))
        return digest.hexdigest()
    for block in iter(lambda: stream.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()


def _of_path(name: str, path: Path) -> Signature:
    st = path.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return ("link", os.readlink(path), st.st_uid, st.st_gid)
    if stat.S_ISDIR(st.st_mode):
        return ("dir", mode, st.st_uid, st.st_gid)
    if stat.S_ISREG(st.st_mode):
        with path.open("rb") as stream:
            return ("file", mode, st.st_uid, st.st_gid, _digest(name, stream))
    return ("special", stat.S_IFMT(st.st_mode), st.st_rdev)


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            yield "/" + path.relative_to(root).as_posix(), path


def of_tree(root: Path) -> dict[str, Signature]:
    return {name: _of_path(name, path) for name, path in _walk(root) if not _runtime(name)}


def _whiteout(path: Path) -> bool:
    st = path.lstat()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def of_overlay(base: dict[str, Signature], layers: Iterable[Path]) -> dict[str, Signature]:
    """The merged view of ``layers`` (top first) over ``base``, as overlayfs presents it."""
    merged = dict(base)
    for layer in reversed(list(layers)):
        for name, path in _walk(layer):
            if _runtime(name):
                continue
            hidden = _whiteout(path) or _opaque(path)
            if hidden:
                for other in [k for k in merged if k.startswith(name + "/")]:
                    del merged[other]
            if _whiteout(path):
                merged.pop(name, None)
            else:
                merged[name] = _of_path(name, path)
    return merged


def of_tar(stream: IO[bytes]) -> dict[str, Signature]:
    """A filesystem exported as a tar stream (``podman export``); hard links take their target's."""
    found: dict[str, Signature] = {}
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            name = "/" + member.name.removeprefix("./").strip("/")
            if name == "/" or _runtime(name):
                continue
            if member.issym():
                found[name] = ("link", member.linkname, member.uid, member.gid)
            elif member.isdir():
                found[name] = ("dir", member.mode & 0o7777, member.uid, member.gid)
            elif member.islnk():
                found[name] = found["/" + member.linkname.removeprefix("./").strip("/")]
            elif member.isreg():
                content = archive.extractfile(member)
                assert content is not None
                digest = _digest(name, content)
                found[name] = ("file", member.mode & 0o7777, member.uid, member.gid, digest)
            else:
                kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
                found[name] = ("special", kind, os.makedev(member.devmajor, member.devminor))
    return found


def changes(base: dict[str, Signature], image: dict[str, Signature]) -> dict[str, Signature | None]:
    """What an image changed over its base: new or different paths, and removed ones (None)."""
    changed: dict[str, Signature | None] = {k: v for k, v in image.items() if base.get(k) != v}
    changed.update({k: None for k in base if k not in image})
    return changed
