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
level 9 with mtime 0 and no file name, and every JSON document is canonical. What this script
shares with the hello example's ``regenerate.py`` is in ``examples/ocibuild.py``. The layout
carries a stamp of its inputs (``packages.toml``, ``echo.py``, this file and
``examples/ocibuild.py``): when the output is there, intact and built from the same inputs,
nothing is done.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for _path in (REPO, HERE.parent):  # run as a script from a checkout, without installing
    if str(_path) not in sys.path:  # cmbuild: the root for cmbuild, examples/ for ocibuild
        sys.path.insert(0, str(_path))

import ocibuild  # noqa: E402
from cmbuild.store import sha256_bytes  # noqa: E402
from ocibuild import ARCH, SUITE, CmbuildError, DebPackage, Layer, Store  # noqa: E402

PACKAGES_TOML = HERE / "packages.toml"
APP = HERE / "echo.py"
DEFAULT_OUTPUT = HERE / ".image"
DEFAULT_STORE = HERE / "cache"  # the store cmbuild uses for examples/echo/cartesi.toml
STAMP = ".build-inputs"  # in the output: the digest of the inputs it was built from
INPUTS = (PACKAGES_TOML, APP, Path(__file__).resolve(), Path(ocibuild.__file__).resolve())

#: The packages of the image, in layer order (the pins live in packages.toml).
PACKAGE_NAMES = ("busybox-static", "python3.13-minimal", "libpython3.13-minimal",
                 "libpython3.13-stdlib", "libc6", "zlib1g", "libexpat1")
PINS_HEADER = """\
The Debian packages of the echo example image, pinned by name, exact version and the
sha256 of the .deb. Written by `python3 examples/echo/build.py --pin` (which asks apt
for the current versions); changing a pin changes the image."""

APPLETS = ("sh", "cat", "echo", "env", "id", "ls", "mkdir", "ps", "rm", "sleep", "test",
           "true", "false")
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

IMAGE_CONFIG: dict[str, Any] = {
    "Entrypoint": ["/usr/bin/python3", "/app/echo.py"],
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"],
    "WorkingDir": "/app",
    "User": "app",
    "Labels": {"org.opencontainers.image.title": "cmbuild echo example (Cartesi rollups, Python)"},
}


def read_pins(path: Path) -> list[DebPackage]:
    """The pinned packages of ``packages.toml``, in :data:`PACKAGE_NAMES` order."""
    return ocibuild.read_pins(path, PACKAGE_NAMES)


# ----- the image --------------------------------------------------------------------------

def build_layers(trees: dict[str, Path], scratch: Path, app: bytes) -> list[Layer]:
    base = ocibuild.busybox_layer(trees["busybox-static"], APPLETS, ("bin", "sbin", "lib"),
                                  where=str(PACKAGES_TOML))
    base.file("etc/hosts", HOSTS.encode())

    python = Layer("2 (Python 3.13, its libraries and the standard library it needs)")
    native = ocibuild.merge_trees(  # the interpreter and the libraries, to resolve links
        [trees[name] for name in ("python3.13-minimal", "libc6", "zlib1g", "libexpat1")],
        scratch / "native")
    ocibuild.copy_elf_closure(python, native, PYTHON, where=str(PACKAGES_TOML))
    python.symlink("usr/bin/python3", "python3.13")
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
        python.copy_copyright(trees[name], name)

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


def build(output: Path, store: Store, *, repin: bool = False) -> dict[str, bytes] | None:
    """Build the image and write its layout to ``output``; return its blobs, or None when
    ``output`` was already current (then nothing is done)."""
    if repin:
        ocibuild.pin(store, PACKAGES_TOML, PACKAGE_NAMES, PINS_HEADER)
    stamp = inputs_digest()
    if is_current(output, stamp):
        return None
    pins = read_pins(PACKAGES_TOML)
    with store.tmpdir("echo-example-") as scratch:
        trees = ocibuild.extract(store, pins, scratch)
        layers = build_layers(trees, scratch, APP.read_bytes())
    blobs, index = ocibuild.image_blobs(layers, IMAGE_CONFIG, history(pins))
    ocibuild.write_layout(output, blobs, index, {STAMP: f"{stamp}\n".encode()})
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
