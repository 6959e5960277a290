#!/usr/bin/env python3
"""Build the OCI image layout of cmbuild's echo example: a Cartesi rollups app in Python.

Run from anywhere::

    python3 examples/echo/build.py             # writes examples/echo/.image/ (ignored by git)
    python3 examples/echo/build.py OUT_DIR     # writes the layout into OUT_DIR
    python3 examples/echo/build.py --pin       # first re-pin packages.toml to Debian's current
                                               # versions, then build

The image is ``linux/riscv64`` and made of three layers, from the Debian ``trixie`` packages
pinned in ``packages.toml`` (fetched with :mod:`cmbuild.debian`, checked against their sha256):

1. ``busybox-static``: ``/usr/bin/busybox`` and a few applet links (``/bin/sh`` among them), the
   merged-usr links ``/bin``, ``/sbin`` and ``/lib``, ``/etc/passwd``, ``/etc/group`` and
   ``/etc/hosts``, ``/home/app`` (1000:1000), ``/tmp`` (1777) and the mount points ``/dev``,
   ``/proc``, ``/sys``;
2. Python 3.13: ``/usr/bin/python3.13`` (``python3.13-minimal``; the interpreter has most
   C modules built in) and ``/usr/bin/python3``, exactly the files of its ELF closure (``libc6``,
   ``zlib1g``, ``libexpat1``), and the part of the standard library that ``echo.py`` imports
   (:data:`STDLIB`, from ``libpython3.13-minimal`` and ``libpython3.13-stdlib``);
3. ``/app/echo.py``.

Every package's ``copyright`` file goes into the layer that holds its files.

The output is byte-identical on every run, machine, user, umask and time zone: tar entries are
built in memory (sorted, numeric owners, empty owner names, mtime 0, fixed modes), gzip runs at
level 9 with mtime 0 and no file name, and every JSON document is canonical. The layout carries
a stamp of its inputs (``packages.toml``, ``echo.py`` and this file): when the output is there,
intact and built from the same inputs, nothing is done.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout, without installing cmbuild
    sys.path.insert(0, str(REPO))

from cmbuild import elf  # noqa: E402
from cmbuild.debian import DebPackage, extract_deb, fetch_debs, lookup  # noqa: E402
from cmbuild.errors import CmbuildError  # noqa: E402
from cmbuild.store import Store, canonical_json, sha256_bytes  # noqa: E402

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

PACKAGES_TOML = HERE / "packages.toml"
APP = HERE / "echo.py"
DEFAULT_OUTPUT = HERE / ".image"
DEFAULT_STORE = HERE / "cache"  # the store cmbuild uses for examples/echo/cartesi.toml
STAMP = ".build-inputs"  # in the output: the digest of the inputs it was built from
INPUTS = (PACKAGES_TOML, APP, Path(__file__).resolve())

SUITE = "trixie"
ARCH = "riscv64"
#: The packages of the image, in layer order (the pins live in packages.toml).
PACKAGE_NAMES = ("busybox-static", "python3.13-minimal", "libpython3.13-minimal",
                 "libpython3.13-stdlib", "libc6", "zlib1g", "libexpat1")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
TAG = "latest"

APP_UID = APP_GID = 1000
APPLETS = ("sh", "cat", "echo", "env", "id", "ls", "mkdir", "ps", "rm", "sleep", "test",
           "true", "false")
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          f"app:x:{APP_UID}:{APP_GID}:app:/home/app:/bin/sh\n")
GROUP = ("root:x:0:\n"
         f"app:x:{APP_GID}:\n")
HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost\n"

PYTHON = "usr/bin/python3.13"
PYLIB = "usr/lib/python3.13"
#: The standard library files in the image (relative to /usr/lib/python3.13): what
#: ``import json, urllib.request, http.client`` and echo.py's requests load. Python finds its
#: prefix by the landmark ``os.py``; the modules marked "frozen" are compiled into the
#: interpreter and run from there, their sources are here for tracebacks and
#: ``-X frozen_modules=off``. Left out on purpose: ``ssl``, ``bz2``, ``lzma`` (urllib.request
#: and shutil import them only if they can; their C parts are not in the image either).
STDLIB = (
    # start-up (frozen: os, site, codecs, abc, io, stat, _collections_abc, genericpath,
    # posixpath, _sitebuiltins), the codecs used at start-up and by socket (idna), linecache
    "os.py", "site.py", "codecs.py", "abc.py", "io.py", "stat.py", "_collections_abc.py",
    "genericpath.py", "posixpath.py", "_sitebuiltins.py", "linecache.py",
    "encodings/__init__.py", "encodings/aliases.py", "encodings/utf_8.py", "encodings/idna.py",
    "stringprep.py",
    # json
    "json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py",
    "re/__init__.py", "re/_casefix.py", "re/_compiler.py", "re/_constants.py", "re/_parser.py",
    "enum.py", "functools.py", "collections/__init__.py", "keyword.py", "operator.py",
    "reprlib.py", "types.py", "copyreg.py",
    # urllib.request and http.client
    "urllib/__init__.py", "urllib/error.py", "urllib/parse.py", "urllib/request.py",
    "urllib/response.py", "http/__init__.py", "http/client.py", "socket.py", "selectors.py",
    "email/__init__.py", "email/_encoded_words.py", "email/_parseaddr.py",
    "email/_policybase.py", "email/base64mime.py", "email/charset.py", "email/encoders.py",
    "email/errors.py", "email/feedparser.py", "email/header.py", "email/iterators.py",
    "email/message.py", "email/parser.py", "email/quoprimime.py", "email/utils.py",
    "base64.py", "bisect.py", "contextlib.py", "datetime.py", "fnmatch.py", "hashlib.py",
    "ipaddress.py", "quopri.py", "random.py", "shutil.py", "string.py", "struct.py",
    "tempfile.py", "warnings.py", "weakref.py", "_weakrefset.py",
)

#: Where glibc's loader looks for a library without an ld.so.cache (Debian's multiarch
#: directories first), relative to the image's root.
LIBRARY_DIRS = ("lib/riscv64-linux-gnu", "usr/lib/riscv64-linux-gnu", "lib", "usr/lib")
EM_RISCV = 243

IMAGE_CONFIG: dict[str, Any] = {
    "Entrypoint": ["/usr/bin/python3", "/app/echo.py"],
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"],
    "WorkingDir": "/app",
    "User": "app",
    "Labels": {"org.opencontainers.image.title": "cmbuild echo example (Cartesi rollups, Python)"},
}
CREATED = "1970-01-01T00:00:00Z"


# ----- layers: a sorted set of tar entries built in memory --------------------------------

class Layer:
    """The entries of one layer, keyed by their relative path (no leading ``/``); each entry is
    ``(kind, mode, uid, gid, data or link target)``. Parent directories are added as root-owned
    0755 directories unless given explicitly."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: dict[str, tuple[str, int, int, int, bytes | str]] = {}

    def _put(self, path: str, entry: tuple[str, int, int, int, bytes | str]) -> None:
        parts = path.strip("/").split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise CmbuildError(f"bad path {path!r}", where=f"layer {self.name}")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            old = self.entries.setdefault(parent, ("dir", 0o755, 0, 0, b""))
            if old[0] != "dir":
                raise CmbuildError(f"{parent} is not a directory, but {path} is put under it",
                                   where=f"layer {self.name}")
        path = "/".join(parts)
        old = self.entries.get(path)
        if old is not None and old != entry and not (old[0] == entry[0] == "dir"):
            raise CmbuildError(f"{path} is added twice with different contents",
                               where=f"layer {self.name}")
        self.entries[path] = entry

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._put(path, ("dir", mode, uid, gid, b""))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._put(path, ("file", mode, 0, 0, data))

    def symlink(self, path: str, target: str) -> None:
        self._put(path, ("symlink", 0o777, 0, 0, target))

    def copy(self, tree: Path, rel: str) -> None:
        """Copy one file or symlink of an extracted package, owned by root, mode 0755 if the
        package made it executable, else 0644."""
        src = tree / rel
        if src.is_symlink():
            self.symlink(rel, os.readlink(src))
        elif src.is_file():
            self.file(rel, src.read_bytes(), 0o755 if src.stat().st_mode & 0o100 else 0o644)
        else:
            raise CmbuildError(f"/{rel} is not in the package (or not a file)", where=str(tree))

    def tar(self) -> bytes:
        """The layer as an uncompressed PAX tar, the same bytes on every machine: entries
        sorted by path components (every directory right before its contents)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                          encoding="utf-8") as tf:
            for path in sorted(self.entries, key=lambda p: p.split("/")):
                kind, mode, uid, gid, content = self.entries[path]
                ti = tarfile.TarInfo(path)
                ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = 0, mode, uid, gid, "", ""
                if kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    tf.addfile(ti)
                elif kind == "symlink":
                    ti.type, ti.linkname = tarfile.SYMTYPE, str(content)
                    tf.addfile(ti)
                else:
                    assert isinstance(content, bytes)
                    ti.size = len(content)
                    tf.addfile(ti, io.BytesIO(content))
        return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


# ----- packages ---------------------------------------------------------------------------

def read_pins(path: Path) -> list[DebPackage]:
    """The pinned packages of ``packages.toml``, in :data:`PACKAGE_NAMES` order."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise CmbuildError(f"cannot read the package pins: {e.strerror}", where=str(path)) from e
    except tomllib.TOMLDecodeError as e:
        raise CmbuildError(f"not valid TOML: {e}", where=str(path)) from e
    if doc.get("suite") != SUITE or doc.get("arch") != ARCH:
        raise CmbuildError(f"expected suite = {SUITE!r} and arch = {ARCH!r}", where=str(path))
    pins: dict[str, DebPackage] = {}
    for i, p in enumerate(doc.get("package", [])):
        if not isinstance(p, dict) or set(p) != {"name", "version", "sha256"}:
            raise CmbuildError("each [[package]] has exactly name, version and sha256",
                               where=f"{path}: package[{i}]")
        pins[str(p["name"])] = DebPackage(str(p["name"]), str(p["version"]), str(p["sha256"]))
    if sorted(pins) != sorted(PACKAGE_NAMES) or len(pins) != len(doc.get("package", [])):
        raise CmbuildError(f"pins {', '.join(sorted(pins)) or 'nothing'}; the example needs "
                           f"exactly {', '.join(sorted(PACKAGE_NAMES))}", where=str(path),
                           hint="run with --pin to write the pins again")
    return [pins[n] for n in PACKAGE_NAMES]


def write_pins(path: Path, pins: list[DebPackage]) -> None:
    lines = [
        "# The Debian packages of the echo example image, pinned by name, exact version and the",
        "# sha256 of the .deb. Written by `python3 examples/echo/build.py --pin` (which asks apt",
        "# for the current versions); changing a pin changes the image.",
        f'suite = "{SUITE}"',
        f'arch = "{ARCH}"',
    ]
    for p in pins:
        lines += ["", "[[package]]", f'name = "{p.name}"', f'version = "{p.version}"',
                  f'sha256 = "{p.sha256}"']
    path.write_text("\n".join(lines) + "\n")


def pin(store: Store, path: Path) -> list[DebPackage]:
    pins = [lookup(store, name, suite=SUITE, arch=ARCH) for name in PACKAGE_NAMES]
    write_pins(path, pins)
    for p in pins:
        print(f"pinned {p.name} {p.version} sha256:{p.sha256}")
    return pins


def extract(store: Store, pins: list[DebPackage], scratch: Path) -> dict[str, Path]:
    """Fetch the pinned .debs into the store and unpack each into its own directory."""
    digests = fetch_debs(store, pins, suite=SUITE, arch=ARCH)
    trees: dict[str, Path] = {}
    for p in pins:
        extract_deb(store.object_path(digests[p.name]), scratch / p.name)
        trees[p.name] = scratch / p.name
    return trees


# ----- the image --------------------------------------------------------------------------

def build_layers(trees: dict[str, Path], scratch: Path, app: bytes) -> list[Layer]:
    base = Layer("1 (busybox, users, directories)")
    for top in ("bin", "sbin", "lib"):
        base.symlink(top, f"usr/{top}")
    base.dir("usr/sbin")
    base.copy(trees["busybox-static"], "usr/bin/busybox")
    for applet in APPLETS:
        base.symlink(f"usr/bin/{applet}", "busybox")
    base.copy(trees["busybox-static"], "usr/share/doc/busybox-static/copyright")
    base.file("etc/passwd", PASSWD.encode())
    base.file("etc/group", GROUP.encode())
    base.file("etc/hosts", HOSTS.encode())
    base.dir("home")
    base.dir("home/app", 0o755, APP_UID, APP_GID)
    base.dir("root", 0o700)
    base.dir("tmp", 0o1777)
    for mnt, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555)):
        base.dir(mnt, mode)

    python = Layer("2 (Python 3.13, its libraries and the standard library it needs)")
    native = scratch / "native"  # the interpreter and the libraries, merged to resolve links
    for name in ("python3.13-minimal", "libc6", "zlib1g", "libexpat1"):
        shutil.copytree(trees[name], native, symlinks=True, dirs_exist_ok=True)
    machine = elf.parse(native / PYTHON).machine
    if machine != EM_RISCV:
        raise CmbuildError(f"/{PYTHON} is for ELF machine {machine}, not RISC-V",
                           where=str(PACKAGES_TOML), hint=f"pin the {ARCH} packages")
    python.copy(native, PYTHON)
    python.symlink("usr/bin/python3", "python3.13")
    for rel in elf.closure([PYTHON], native, LIBRARY_DIRS, {"lib": "usr/lib"}):
        python.copy(native, rel)
    stdlib = {name: trees[name] / PYLIB for name in ("libpython3.13-minimal",
                                                      "libpython3.13-stdlib")}
    # Python's landmark of its exec_prefix (where C extension modules would be): all the
    # interpreter needs is built in, but without this directory it warns at every start
    python.dir(f"{PYLIB}/lib-dynload")
    for rel in STDLIB:
        have = [name for name, d in stdlib.items() if (d / rel).is_file()]
        if len(have) != 1:
            raise CmbuildError(f"/{PYLIB}/{rel} is in {len(have)} of the packages "
                               f"{', '.join(stdlib)}, expected one", where=str(PACKAGES_TOML))
        python.copy(trees[have[0]], f"{PYLIB}/{rel}")
    for name in ("python3.13-minimal", "libpython3.13-minimal", "libpython3.13-stdlib", "libc6",
                 "zlib1g", "libexpat1"):
        doc = f"usr/share/doc/{name}"
        # libpython3.13-stdlib's doc directory is a link to libpython3.13-minimal's
        python.copy(trees[name], doc if (trees[name] / doc).is_symlink() else f"{doc}/copyright")

    layer3 = Layer("3 (the app)")
    layer3.file("app/echo.py", app)
    return [base, python, layer3]


def history(pins: list[DebPackage]) -> list[dict[str, str]]:
    v = {p.name: p.version for p in pins}
    comment = "cmbuild examples/echo/build.py, layer {}"
    return [
        {"created_by": f"busybox-static {v['busybox-static']} (Debian {SUITE}/{ARCH}): "
                       f"/usr/bin/busybox and {len(APPLETS)} applets, /etc/passwd, /etc/group, "
                       "/etc/hosts, /home/app, /tmp",
         "comment": comment.format(1)},
        {"created_by": f"python3.13-minimal {v['python3.13-minimal']}, its ELF closure from "
                       f"libc6 {v['libc6']}, zlib1g {v['zlib1g']}, libexpat1 {v['libexpat1']}, "
                       f"{len(STDLIB)} files of libpython3.13-minimal "
                       f"{v['libpython3.13-minimal']} and libpython3.13-stdlib "
                       f"{v['libpython3.13-stdlib']} (Debian {SUITE}/{ARCH})",
         "comment": comment.format(2)},
        {"created_by": "COPY echo.py /app/echo.py", "comment": comment.format(3)},
    ]


def image_blobs(layers: list[Layer], pins: list[DebPackage]) -> tuple[dict[str, bytes], bytes]:
    """All blobs of the image (digest -> bytes) and the bytes of ``index.json``."""
    blobs: dict[str, bytes] = {}
    layer_descs: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for layer in layers:
        tar = layer.tar()
        gz = gzip_bytes(tar)
        digest = sha256_bytes(gz)
        blobs[digest] = gz
        diff_ids.append(sha256_bytes(tar))
        layer_descs.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(gz)})
    config = canonical_json({
        "created": CREATED, "architecture": ARCH, "os": "linux", "config": IMAGE_CONFIG,
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history(pins),
    })
    blobs[sha256_bytes(config)] = config
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_bytes(config), "size": len(config)},
        "layers": layer_descs,
    })
    blobs[sha256_bytes(manifest)] = manifest
    index = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256_bytes(manifest),
                       "size": len(manifest), "platform": {"architecture": ARCH, "os": "linux"},
                       "annotations": {REF_NAME: TAG}}],
    })
    return blobs, index


# ----- the output -------------------------------------------------------------------------

def inputs_digest() -> str:
    """The digest of everything the image is made from (the pins name the .debs by sha256)."""
    h = hashlib.sha256()
    for path in INPUTS:
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode() + data)
    return "sha256:" + h.hexdigest()


def _blob(output: Path, digest: str, size: int | None = None) -> bytes | None:
    """The blob ``digest`` of the layout, or None if it is missing or damaged."""
    path = output / "blobs" / "sha256" / digest.removeprefix("sha256:")
    try:
        data = path.read_bytes()
    except OSError:
        return None
    ok = sha256_bytes(data) == digest and (size is None or len(data) == size)
    return data if ok else None


def is_current(output: Path, digest: str) -> bool:
    """Whether ``output`` holds an intact layout built from inputs with ``digest``: its stamp
    matches and every blob that index.json names is there with its sha256."""
    try:
        if (output / STAMP).read_text().strip() != digest:
            return False
        index = json.loads((output / "index.json").read_bytes())
        for m in index["manifests"]:
            manifest = _blob(output, m["digest"], m["size"])
            if manifest is None:
                return False
            doc = json.loads(manifest)
            for d in [doc["config"], *doc["layers"]]:
                if _blob(output, d["digest"], d["size"]) is None:
                    return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o644)  # whatever the umask
        f.write(data)


def write_layout(output: Path, blobs: dict[str, bytes], index: bytes, stamp: str) -> None:
    """Write the OCI layout (and the stamp) to ``output``, replacing an earlier layout there as
    a whole: the new one is written beside it and renamed into place."""
    output = output.absolute()
    if output.exists() and not output.is_dir():
        raise CmbuildError("the output exists and is not a directory", where=str(output))
    if output.is_dir() and any(output.iterdir()) and not (output / "oci-layout").exists():
        raise CmbuildError("the output directory is not empty and not an OCI layout; "
                           "refusing to replace it", where=str(output),
                           hint="choose an empty or new directory")
    output.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{output.name}.new-", dir=output.parent))
    try:
        (new / "blobs" / "sha256").mkdir(parents=True)
        for d in (new, new / "blobs", new / "blobs" / "sha256"):
            os.chmod(d, 0o755)
        _write(new / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        _write(new / "index.json", index)
        for digest, data in sorted(blobs.items()):
            _write(new / "blobs" / "sha256" / digest.removeprefix("sha256:"), data)
        _write(new / STAMP, f"{stamp}\n".encode())
        old: Path | None = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            os.rename(output, old / "image")
        os.rename(new, output)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if new.exists():
            shutil.rmtree(new)


def build(output: Path, store: Store, *, repin: bool = False) -> dict[str, bytes] | None:
    """Build the image and write its layout to ``output``; return its blobs, or None when
    ``output`` was already current (then nothing is done)."""
    if repin:
        pin(store, PACKAGES_TOML)
    stamp = inputs_digest()
    if is_current(output, stamp):
        return None
    pins = read_pins(PACKAGES_TOML)
    with store.tmpdir("echo-example-") as scratch:
        trees = extract(store, pins, scratch)
        layers = build_layers(trees, scratch, APP.read_bytes())
    blobs, index = image_blobs(layers, pins)
    write_layout(output, blobs, index, stamp)
    return blobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT,
                    help="where to write the OCI layout (default: examples/echo/.image)")
    ap.add_argument("--store", type=Path, default=DEFAULT_STORE,
                    help="the cmbuild store that keeps the downloaded .debs "
                         "(default: examples/echo/cache, the store of examples/echo/cartesi.toml)")
    ap.add_argument("--pin", action="store_true",
                    help="first rewrite packages.toml with Debian's current versions")
    args = ap.parse_args(argv)
    started = time.monotonic()
    try:
        blobs = build(args.output, Store(args.store), repin=args.pin)
    except CmbuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if blobs is None:
        print(f"{args.output} is up to date")
    else:
        size = sum(len(b) for b in blobs.values())
        print(f"wrote {args.output}: {len(blobs)} blobs, {size} bytes "
              f"({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
