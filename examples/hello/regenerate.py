#!/usr/bin/env python3
"""Regenerate ``examples/hello/image/``, the OCI image layout of cmbuild's hello example.

Run from the repository root::

    python examples/hello/regenerate.py            # writes examples/hello/image/
    python examples/hello/regenerate.py --pin      # first re-pin packages.toml to Debian's
                                                   # current versions, then regenerate

The image is ``linux/riscv64`` and made of three layers, from the Debian packages pinned in
``packages.toml`` (fetched with :mod:`cmbuild.debian`, checked against their sha256):

1. ``busybox-static``: ``/usr/bin/busybox`` and its applet links, the merged-usr links
   ``/bin -> usr/bin`` and ``/sbin -> usr/sbin``, ``/etc/passwd``, ``/etc/group``,
   ``/home/app`` (1000:1000), ``/tmp`` (1777) and the mount points ``/dev``, ``/proc``, ``/sys``;
2. GNU ``hello`` at ``/usr/bin/hello`` and exactly the files of its ELF closure from ``libc6``
   (the dynamic loader and ``libc.so.6``, with the links on the way), plus ``/lib -> usr/lib``
   so that the interpreter path ``/lib/ld-linux-riscv64-lp64d.so.1`` resolves;
3. ``/app/hello.sh`` (the entry program, a copy of ``hello.sh`` beside this script).

Every package's ``copyright`` file goes into the layer that holds the package's files.

The output is byte-identical on every run, machine, user, umask and time zone: tar entries are
built in memory (sorted, numeric owners, empty owner names, mtime 0, fixed modes), gzip runs at
level 9 with mtime 0 and no file name, and every JSON document is canonical. (The gzip bytes
depend on zlib's deflate; a zlib-ng based Python could compress differently.) What this
script shares with the echo example's ``build.py`` is in ``examples/ocibuild.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for _path in (REPO, HERE.parent):  # run as a script from a checkout, without installing
    if str(_path) not in sys.path:  # cmbuild: the root for cmbuild, examples/ for ocibuild
        sys.path.insert(0, str(_path))

import ocibuild  # noqa: E402
from ocibuild import ARCH, SUITE, CmbuildError, DebPackage, Layer, Store  # noqa: E402
from ocibuild import LIBRARY_DIRS  # noqa: E402,F401 (tests/test_example.py reads it here)

PACKAGES_TOML = HERE / "packages.toml"
ENTRY_SCRIPT = HERE / "hello.sh"
DEFAULT_OUTPUT = HERE / "image"

#: The packages of the image, in layer order (the pins live in packages.toml).
PACKAGE_NAMES = ("busybox-static", "hello", "libc6")
PINS_HEADER = """\
The Debian packages of the hello example image, pinned by name, exact version and the sha256
of the .deb. Written by `python examples/hello/regenerate.py --pin` (which asks apt for the
current versions); changing a pin changes the image, so regenerate and commit both together."""

APPLETS = ("sh", "echo", "cat", "ls", "id", "env", "pwd", "touch", "mkdir", "rm", "sleep",
           "true", "false", "printf", "uname", "test", "[")

IMAGE_CONFIG: dict[str, Any] = {
    "Entrypoint": ["/app/hello.sh"],
    "Cmd": ["world"],
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "GREETING=hello"],
    "WorkingDir": "/app",
    "User": "app",
    "Labels": {"org.opencontainers.image.title": "cmbuild hello example"},
    "ExposedPorts": {"8080/tcp": {}},
}


def read_pins(path: Path) -> list[DebPackage]:
    """The pinned packages of ``packages.toml``."""
    return ocibuild.read_pins(path, PACKAGE_NAMES)


# ----- the image --------------------------------------------------------------------------

def build_layers(trees: dict[str, Path], scratch: Path, entry_script: bytes) -> list[Layer]:
    base = ocibuild.busybox_layer(trees["busybox-static"], APPLETS, ("bin", "sbin"),
                                  where=str(PACKAGES_TOML))

    prog = Layer("2 (hello and its libraries)")
    prog.symlink("lib", "usr/lib")
    tree = ocibuild.merge_trees([trees["hello"], trees["libc6"]], scratch / "hello+libc6")
    ocibuild.copy_elf_closure(prog, tree, "usr/bin/hello", where=str(PACKAGES_TOML))
    for name in ("hello", "libc6"):
        prog.copy_copyright(trees[name], name)

    app = Layer("3 (the entry program)")
    app.file("app/hello.sh", entry_script, mode=0o755)
    return [base, prog, app]


def history(pins: list[DebPackage]) -> list[dict[str, str]]:
    v = {p.name: p.version for p in pins}
    return [
        {"created_by": f"busybox-static {v['busybox-static']} (Debian {SUITE}/{ARCH}): "
                       f"/usr/bin/busybox and {len(APPLETS)} applets, /etc/passwd, /etc/group, "
                       "/home/app, /tmp",
         "comment": "cmbuild examples/hello/regenerate.py, layer 1"},
        {"created_by": f"hello {v['hello']} and its ELF closure from libc6 {v['libc6']} "
                       f"(Debian {SUITE}/{ARCH})",
         "comment": "cmbuild examples/hello/regenerate.py, layer 2"},
        {"created_by": "COPY hello.sh /app/hello.sh",
         "comment": "cmbuild examples/hello/regenerate.py, layer 3"},
    ]


@contextlib.contextmanager
def open_store(root: Path | None) -> Iterator[Store]:
    """The given store, or a temporary one that is removed afterwards."""
    if root is not None:
        yield Store(root)
        return
    with tempfile.TemporaryDirectory(prefix="cmbuild-hello-store-") as tmp:
        yield Store(tmp)


def regenerate(output: Path, store: Store, *, repin: bool = False) -> dict[str, bytes]:
    """Build the image from the pinned packages and write its layout to ``output``.
    Returns the blobs (digest -> bytes)."""
    if repin:
        pins = ocibuild.pin(store, PACKAGES_TOML, PACKAGE_NAMES, PINS_HEADER)
    else:
        pins = read_pins(PACKAGES_TOML)
    with store.tmpdir("hello-example-") as scratch:
        trees = ocibuild.extract(store, pins, scratch)
        layers = build_layers(trees, scratch, ENTRY_SCRIPT.read_bytes())
    blobs, index = ocibuild.image_blobs(layers, IMAGE_CONFIG, history(pins))
    ocibuild.write_layout(output, blobs, index)
    return blobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                    help="where to write the OCI layout (default: examples/hello/image)")
    ap.add_argument("--store", type=Path, default=None,
                    help="a cmbuild store to keep the downloaded .debs in, e.g. cache/ "
                         "(default: a temporary store, removed afterwards)")
    ap.add_argument("--pin", action="store_true",
                    help="first rewrite packages.toml with Debian's current versions")
    args = ap.parse_args(argv)
    try:
        with open_store(args.store) as store:
            blobs = regenerate(args.output, store, repin=args.pin)
    except CmbuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    size = sum(len(b) for b in blobs.values())
    print(f"wrote {args.output}: {len(blobs)} blobs, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
