"""Debian packages for other architectures, fetched with apt into the store.

cmbuild takes its riscv64 user space (crun, busybox, the kernel package) from Debian. apt does the
downloading, with a private configuration kept inside the store (``<store>/apt/<suite>-<arch>/``),
so nothing on the host changes and no root is needed. The mirror is the one the host's own apt
configuration uses for the Debian archive (or ``CMBUILD_DEBIAN_MIRROR``).

A recipe pins every package as (name, version, sha256). :func:`fetch_debs` stores each ``.deb``
under that sha256 and refuses a download that does not match it; :func:`lookup` is how a recipe
gets written in the first place.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .errors import CmbuildError
from .store import DIGEST_PREFIX, Store, sha256_file

MIRROR_ENV = "CMBUILD_DEBIAN_MIRROR"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
INDEX_MAX_AGE = 24 * 3600  # seconds: older package lists are refreshed
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class DebPackage:
    """One pinned Debian package: name, exact version and the sha256 of its ``.deb``."""

    name: str
    version: str
    sha256: str  # 64 lower-case hex digits

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9+.\-]+", self.name):
            raise CmbuildError(f"not a Debian package name: {self.name!r}")
        if not self.version or any(c.isspace() for c in self.version):
            raise CmbuildError(f"package {self.name}: not a Debian version: {self.version!r}")
        if not _HEX64.fullmatch(self.sha256):
            raise CmbuildError(f"package {self.name} {self.version}: sha256 must be 64 lower-case "
                               f"hex digits, got {self.sha256!r}")

    @property
    def digest(self) -> str:
        """The store digest of the ``.deb``."""
        return DIGEST_PREFIX + self.sha256

    def __str__(self) -> str:
        return f"{self.name}={self.version}"


# ----- the host's mirror ---------------------------------------------------------------------

@dataclass(frozen=True)
class _Source:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    where: str


def _parse_one_line(text: str, where: str) -> list[_Source]:
    out: list[_Source] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # options in brackets may contain spaces: take them out first
        line = re.sub(r"\[[^\]]*\]", " ", line)
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("deb", "deb-src"):
            continue
        out.append(_Source((parts[0],), (parts[1],), (parts[2],), tuple(parts[3:]),
                           f"{where}:{lineno}"))
    return out


def _parse_deb822(text: str, where: str) -> list[_Source]:
    out: list[_Source] = []
    stanzas: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    last: str | None = None
    for raw in text.splitlines() + [""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if cur:
                stanzas.append(cur)
            cur, last = {}, None
            continue
        if raw[0] in " \t" and last is not None:  # continuation line
            cur[last] += " " + raw.strip()
            continue
        if ":" in raw:
            key, value = raw.split(":", 1)
            last = key.strip().lower()
            cur[last] = value.strip()
    for i, st in enumerate(stanzas, 1):
        if st.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        out.append(_Source(tuple(st.get("types", "").split()), tuple(st.get("uris", "").split()),
                           tuple(st.get("suites", "").split()),
                           tuple(st.get("components", "").split()), f"{where} (entry {i})"))
    return out


def _host_codename(root: Path) -> str:
    try:
        text = (root / "etc/os-release").read_text()
    except OSError:
        text = ""
    m = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?\s*$", text, re.M)
    if not m:
        raise CmbuildError("cannot tell the host's Debian codename (no VERSION_CODENAME)",
                           where=str(root / "etc/os-release"),
                           hint=f"set {MIRROR_ENV} to a Debian mirror URL")
    return m.group(1)


def host_mirror(root: Path | str = "/", *, codename: str | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """The Debian mirror URL of the host: ``$CMBUILD_DEBIAN_MIRROR`` if set, else the URI of
    the apt entry that serves ``main`` of the host's codename (not ``-security``/``-updates``)
    in ``<root>/etc/apt/sources.list``, ``sources.list.d/*.list`` and ``*.sources``."""
    env = os.environ if env is None else env
    if env.get(MIRROR_ENV):
        return env[MIRROR_ENV].rstrip("/")
    root = Path(root)
    codename = codename or _host_codename(root)
    apt = root / "etc/apt"
    sources: list[_Source] = []
    files: list[Path] = []
    if (apt / "sources.list").is_file():
        files.append(apt / "sources.list")
    d = apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources") and p.is_file())
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            sources += _parse_deb822(text, str(f))
        else:
            sources += _parse_one_line(text, str(f))
    for s in sources:
        if "deb" in s.types and codename in s.suites and "main" in s.components:
            for uri in s.uris:
                if uri.startswith(("http://", "https://", "file:", "ftp://")):
                    return uri.rstrip("/")
    raise CmbuildError(f"no apt source for the Debian archive ({codename} main) found",
                       where=str(apt), hint=f"set {MIRROR_ENV} to a Debian mirror URL "
                       "(the directory that holds dists/ and pool/)")


# ----- the private apt configuration ---------------------------------------------------------

_fresh: set[Path] = set()  # apt dirs updated by this process


def _apt_options(d: Path, arch: str) -> list[str]:
    return ["-o", f"Dir::Etc={d}/etc", "-o", f"Dir::Etc::sourcelist={d}/etc/sources.list",
            "-o", f"Dir::Etc::sourceparts={d}/etc/sources.list.d",
            "-o", f"Dir::Etc::preferencesparts={d}/etc/preferences.d",
            "-o", f"Dir::Etc::parts={d}/etc/apt.conf.d",
            "-o", f"Dir::State={d}/state", "-o", f"Dir::State::status={d}/state/status",
            "-o", f"Dir::Cache={d}/cache", "-o", f"APT::Architecture={arch}",
            "-o", f"APT::Architectures::={arch}", "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Languages=none", "-o", "Acquire::Retries=3", "-q"]


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, env=env, text=True, capture_output=True)
    except FileNotFoundError as e:
        raise CmbuildError(f"{cmd[0]} is not installed", hint="install apt and dpkg") from e
    if check and proc.returncode != 0:
        raise CmbuildError(f"{what} failed (exit {proc.returncode}):\n{_tail(proc.stderr)}")
    return proc


def _tail(text: str, n: int = 12) -> str:
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return "\n".join("    " + l for l in lines[-n:])


def _apt_dir(store: Store, suite: str, arch: str) -> Path:
    if not re.fullmatch(r"[a-z0-9\-]+", suite) or not re.fullmatch(r"[a-z0-9]+", arch):
        raise CmbuildError(f"bad suite/architecture {suite!r}/{arch!r}")
    return store.root / "apt" / f"{suite}-{arch}"


def apt_index(store: Store, suite: str, arch: str) -> Path:
    """Prepare the private apt directory for ``suite``/``arch`` and update its package lists
    (once per process, or when they are older than a day, or when the mirror changed).
    Returns the directory."""
    d = _apt_dir(store, suite, arch)
    for sub in ("etc/sources.list.d", "etc/preferences.d", "etc/apt.conf.d",
                "state/lists/partial", "cache/archives/partial"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    mirror = host_mirror()
    line = f"deb [arch={arch} signed-by={KEYRING}] {mirror} {suite} main\n"
    with open(d / "lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            status = d / "state/status"
            if not status.exists():
                status.write_text("")
            src = d / "etc/sources.list"
            stamp = d / "updated"
            same_source = src.exists() and src.read_text() == line
            if same_source and d in _fresh:
                return d
            if (same_source and stamp.exists()
                    and time.time() - stamp.stat().st_mtime < INDEX_MAX_AGE):
                _fresh.add(d)
                return d
            src.write_text(line)
            proc = _run(["apt-get", *_apt_options(d, arch), "update"],
                        f"apt-get update ({suite}/{arch} from {mirror})", check=False)
            # apt-get update exits 0 on some fetch failures; "W:"/"E:" lines tell
            bad = [l for l in proc.stderr.splitlines() if l.startswith(("E:", "Err:"))]
            if proc.returncode != 0 or bad:
                stamp.unlink(missing_ok=True)
                raise CmbuildError(
                    f"apt-get update for {suite}/{arch} failed (exit {proc.returncode}):\n"
                    f"{_tail(proc.stderr)}", where=mirror,
                    hint=f"check the network and the mirror (override with {MIRROR_ENV})")
            stamp.write_text(f"{time.time()}\n")
            _fresh.add(d)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return d


def _show(d: Path, arch: str, specs: Iterable[str]) -> subprocess.CompletedProcess[str]:
    return _run(["apt-cache", *_apt_options(d, arch), "show", "--no-all-versions", *specs],
                "apt-cache show", check=False)


def _stanzas(text: str) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line[:1] not in (" ", "\t") and ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        if fields:
            out.append(fields)
    return out


def lookup(store: Store, name: str, *, suite: str, arch: str) -> DebPackage:
    """The candidate version of ``name`` in ``suite``/``arch`` and its sha256 (for writing a
    recipe: the result is what a recipe's ``[[package]]`` entry pins)."""
    d = apt_index(store, suite, arch)
    proc = _show(d, arch, [name])
    st = [s for s in _stanzas(proc.stdout) if s.get("Package") == name]
    if proc.returncode != 0 or not st:
        raise CmbuildError(f"package {name} not found in Debian {suite}/{arch}",
                           hint="a virtual package? name the real package that provides it"
                           + (f"\n{_tail(proc.stderr, 4)}" if proc.stderr.strip() else ""))
    s = st[0]
    if "SHA256" not in s or "Version" not in s:
        raise CmbuildError(f"package {name}: the index has no Version/SHA256 for it")
    return DebPackage(name, s["Version"], s["SHA256"])


def _check_served(d: Path, arch: str, pkg: DebPackage, suite: str) -> None:
    """Raise a clear error when the mirror's index no longer has ``pkg.version``."""
    proc = _show(d, arch, [f"{pkg.name}={pkg.version}"])
    st = [s for s in _stanzas(proc.stdout) if s.get("Package") == pkg.name]
    if proc.returncode != 0 or not st:
        cur = _show(d, arch, [pkg.name])
        now = [s.get("Version") for s in _stanzas(cur.stdout) if s.get("Package") == pkg.name]
        raise CmbuildError(
            f"the recipe pins {pkg.name} {pkg.version}, a version the mirror no longer serves "
            f"in {suite}/{arch}" + (f" (it now has {now[0]})" if now else " (nor any version)"),
            hint="write a new recipe version with the current packages (recipes/pin_runtime.py),"
                 f" or point {MIRROR_ENV} at a snapshot mirror that still has it")


def fetch_debs(store: Store, pkgs: Sequence[DebPackage], *, suite: str,
               arch: str) -> dict[str, str]:
    """Make sure every pinned ``.deb`` is in the store; return name -> store digest.

    A ``.deb`` already in the store (by its sha256) is not downloaded again. A download whose
    sha256 differs from the pin is refused: nothing is stored and the error names the package."""
    names = [p.name for p in pkgs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise CmbuildError(f"package(s) pinned twice: {', '.join(dup)}")
    result: dict[str, str] = {}
    missing: list[DebPackage] = []
    for p in pkgs:
        if store.has(p.digest):
            result[p.name] = p.digest
        else:
            missing.append(p)
    if not missing:
        return result
    d = apt_index(store, suite, arch)
    with store.tmpdir("apt-download-") as tmp:
        proc = _run(["apt-get", *_apt_options(d, arch), "download",
                     *(str(p) for p in missing)], "apt-get download", cwd=tmp, check=False)
        if proc.returncode != 0:
            for p in missing:
                _check_served(d, arch, p, suite)
            raise CmbuildError(f"apt-get download of {', '.join(map(str, missing))} failed "
                               f"(exit {proc.returncode}):\n{_tail(proc.stderr)}")
        # check every package before storing any
        found: dict[str, Path] = {}
        for p in missing:
            debs = sorted(tmp.glob(f"{p.name}_*.deb"))
            if len(debs) != 1:
                raise CmbuildError(f"apt-get download of {p} left {len(debs)} files "
                                   f"named {p.name}_*.deb, expected one")
            actual = sha256_file(debs[0])
            if actual != p.digest:
                raise CmbuildError(
                    f"package {p.name} {p.version}: the downloaded .deb has sha256 "
                    f"{actual[len(DIGEST_PREFIX):]}, but the recipe pins {p.sha256}",
                    where=f"{suite}/{arch}",
                    hint="the pin is wrong or the mirror serves different bytes: nothing was "
                         "stored; check the recipe against `apt-cache show` "
                         "(recipes/pin_runtime.py)")
            found[p.name] = debs[0]
        for p in missing:
            result[p.name] = store.add_file(found[p.name], expect=p.digest)
    return {p.name: result[p.name] for p in pkgs}


def extract_deb(deb: Path, dest: Path) -> None:
    """Unpack the data of a ``.deb`` into ``dest`` (``dpkg-deb -x``). Only for our own pinned
    packages, into a scratch directory."""
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb") is None:
        raise CmbuildError("dpkg-deb is not installed", hint="install dpkg")
    _run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")
