"""The stand-in for the Dockerfile's base image: a debootstrap root of the same Debian release.

``python:3.11-slim-bookworm`` is Debian bookworm with Python 3.11 on PATH as ``python`` (with ``venv``
and pip), ca-certificates, netbase and tzdata. Docker Hub cannot be reached here, so the lane makes the
same interface from Debian itself: ``debootstrap --variant=minbase`` of the release named by the image's
tag, then the release's own python3 (which must be the tag's Python version), python3-venv,
python-is-python3 and the same three packages, from the mirror and suites (release, -updates, -security)
this machine's apt already uses. The root is cached under /var/cache/tokenwire-image-root, keyed by
release, architecture and this recipe; delete the directory to refresh it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tools.image import chroot

__all__ = ["AptSource", "BaseError", "BaseImage", "BaseSpec", "apt_sources", "ensure", "spec_of"]

CACHE = Path("/var/cache/tokenwire-image-root")
PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "netbase", "tzdata")
# What the python image's config sets and the build relies on (PATH finds `python`; UTF-8 locale).
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
RECIPE = 1  # bump when the steps below change, so cached roots are rebuilt
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


class BaseError(RuntimeError):
    """The stand-in cannot be made (unknown base, no mirror, debootstrap failed); says why."""


@dataclass(frozen=True)
class BaseSpec:
    reference: str  # the image the Dockerfile names, e.g. python:3.11-slim-bookworm
    python: str  # "3.11"
    release: str  # "bookworm"


@dataclass(frozen=True)
class BaseImage:
    spec: BaseSpec
    root: Path
    env: dict[str, str]
    python_version: str  # the stand-in's exact version, e.g. 3.11.2


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str


def spec_of(reference: str) -> BaseSpec:
    """The Debian release and Python version an official python image's tag names."""
    match = re.fullmatch(r"(?:(?:docker\.io/)?library/)?python:(\d+\.\d+)(?:\.\d+)?-slim-([a-z]+)", reference)
    if match is None:
        raise BaseError(
            f"base image {reference!r}: the lane stands in only for python:X.Y[-.Z]-slim-RELEASE "
            "(the tag names the Debian release it debootstraps)"
        )
    return BaseSpec(reference, match.group(1), match.group(2))


Entry = tuple[list[str], list[str], list[str], list[str]]  # types, URIs, suites, components


def _entries(path: Path) -> Iterator[Entry]:
    """The entries of one apt sources file, one-line (``.list``) or deb822 (``.sources``) format."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix != ".sources":
        for raw in text.splitlines():
            words = re.sub(r"\[[^]]*\]", " ", raw.split("#", 1)[0]).split()
            if len(words) >= 3:
                yield [words[0]], [words[1]], [words[2]], words[3:]
        return
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, list[str]] = {}
        for line in paragraph.splitlines():
            if not line.startswith("#") and ":" in line and not line[:1].isspace():
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0].lower() != "no":
            get = fields.get
            yield get("types", []), get("uris", []), get("suites", []), get("components", [])


def apt_sources(release: str, etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """This machine's Debian sources for ``release``, ``release-updates`` and ``release-security``."""
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    files += sorted((etc / "sources.list.d").glob("*.sources"))
    wanted = (release, f"{release}-updates", f"{release}-security")
    found: list[AptSource] = []
    for path in files:
        if not path.is_file():
            continue
        for types, uris, suites, components in _entries(path):
            if "deb" not in types or "main" not in components:
                continue
            found += [AptSource(u, s) for u in uris for s in suites if s in wanted]
    if not any(s.suite == release for s in found):
        raise BaseError(f"no apt source for Debian {release} (main) in {etc}: the lane uses this machine's")
    return found


def _architecture() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _key(spec: BaseSpec, arch: str) -> str:
    recipe = json.dumps([RECIPE, spec.release, spec.python, arch, PACKAGES, ENV], sort_keys=True)
    return f"{spec.release}-{arch}-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}"


def ensure_debootstrap() -> str:
    found = shutil.which("debootstrap")
    if found:
        return found
    print("debootstrap not found: installing it with apt-get", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "debootstrap"]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise BaseError(f"{' '.join(cmd)} failed: {result.stderr.strip()[-2000:]}")
    return shutil.which("debootstrap") or "/usr/sbin/debootstrap"


def ensure(spec: BaseSpec, cache: Path = CACHE) -> BaseImage:
    """The cached stand-in root for ``spec``, made first if missing (one maker at a time: a lock)."""
    if os.geteuid() != 0:
        raise BaseError("the image lane needs root (debootstrap, mount namespaces, chroot)")
    arch = _architecture()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / _key(spec, arch)
    with (cache / f"{spec.release}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (final / "base.json").is_file():
            _make(spec, arch, final)
    meta = json.loads((final / "base.json").read_text())
    return BaseImage(spec, final / "rootfs", dict(meta["env"]), str(meta["python_version"]))


def _run(cmd: list[str], what: str, *, env: dict[str, str] | None = None, log: Path) -> str:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    with log.open("a") as out:
        out.write(result.stdout + result.stderr)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip()[-3000:]
        raise BaseError(f"{what} failed (exit {result.returncode}; log {log}):\n{tail}")
    return result.stdout


def _make(spec: BaseSpec, arch: str, final: Path) -> None:
    sources = apt_sources(spec.release)
    mirror = next(s.uri for s in sources if s.suite == spec.release)
    work = final.with_name(final.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    root = work / "rootfs"
    root.mkdir(parents=True)
    log = work / "make.log"
    print(f"image lane: debootstrap {spec.release} ({arch}) into {final} ...", file=sys.stderr)
    debootstrap = ensure_debootstrap()
    # In namespaces of its own: the /proc and /sys debootstrap mounts in the target cannot outlive it,
    # nor can its processes outlive this one.
    cmd = ["setpriv", "--pdeathsig", "KILL", "unshare", "--mount", "--pid", "--fork", "--kill-child", "--"]
    cmd += [debootstrap, "--variant=minbase", f"--arch={arch}"]
    _run([*cmd, spec.release, str(root), mirror], "debootstrap", log=log)
    _configure(root, sources)
    script = (
        "set -e; apt-get update -qq; apt-get upgrade -y -qq;"
        f" apt-get install -y -qq --no-install-recommends {' '.join(PACKAGES)};"
        " apt-get clean; rm -rf /var/lib/apt/lists/*"
    )
    env = {**ENV, "DEBIAN_FRONTEND": "noninteractive"}
    binds = [chroot.Bind(Path("/etc/resolv.conf"), "/etc/resolv.conf")]
    binds.append(chroot.Bind(Path("/etc/hosts"), "/etc/hosts"))
    _run(
        chroot.command(root, ["/bin/sh", "-c", script], binds=binds), "apt-get in the root", env=env, log=log
    )
    probe = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
    version = _run(chroot.command(root, ["python", "-c", probe]), "python in the root", env=ENV, log=log)
    version = version.strip()
    if not version.startswith(spec.python + "."):
        raise BaseError(
            f"{spec.reference} has Python {spec.python}, but Debian {spec.release}'s python3 is {version}: "
            "the lane cannot stand in for this base"
        )
    meta: dict[str, object] = {"reference": spec.reference, "release": spec.release, "arch": arch}
    meta["packages"] = PACKAGES
    meta |= {"env": ENV, "python_version": version, "recipe": RECIPE}
    (work / "base.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)


def _configure(root: Path, sources: list[AptSource]) -> None:
    """Apt sources as this machine's; hosts, resolv.conf and hostname left to the runtime (as images do)."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    paragraphs = []
    for uri in dict.fromkeys(s.uri for s in sources):
        suites = " ".join(dict.fromkeys(s.suite for s in sources if s.uri == uri))
        paragraphs.append(
            f"Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\nSigned-By: {KEYRING}\n"
        )
    (root / "etc/apt/sources.list.d/debian.sources").write_text("\n".join(paragraphs))
    (root / "etc/hosts").write_text(HOSTS)
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/hostname").unlink(missing_ok=True)
