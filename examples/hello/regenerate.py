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
depend on zlib's deflate; a zlib-ng based Python could compress differently.)
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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
ENTRY_SCRIPT = HERE / "hello.sh"
DEFAULT_OUTPUT = HERE / "image"

SUITE = "trixie"
ARCH = "riscv64"
#: The packages of the image, in layer order (the pins live in packages.toml).
PACKAGE_NAMES = ("busybox-static", "hello", "libc6")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
TAG = "latest"

APP_UID = APP_GID = 1000
APPLETS = ("sh", "echo", "cat", "ls", "id", "env", "pwd", "touch", "mkdir", "rm", "sleep",
           "true", "false", "printf", "uname", "test", "[")
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          f"app:x:{APP_UID}:{APP_GID}:app:/home/app:/bin/sh\n")
GROUP = ("root:x:0:\n"
         f"app:x:{APP_GID}:\n")

#: Where glibc's loader looks for a library without an ld.so.cache (Debian's multiarch
#: directories first), relative to the image's root.
LIBRARY_DIRS = ("lib/riscv64-linux-gnu", "usr/lib/riscv64-linux-gnu", "lib", "usr/lib")
EM_RISCV = 243

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
CREATED = "1970-01-01T00:00:00Z"


# ----- layers: a sorted set of tar entries built in memory --------------------------------

@dataclass(frozen=True)
class Entry:
    kind: str  # "dir", "file" or "symlink"
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    target: str = ""


class Layer:
    """The entries of one layer, keyed by their relative path (no leading ``/`` or ``./``).
    Parent directories are added as root-owned 0755 directories unless given explicitly."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entries: dict[str, Entry] = {}

    def _put(self, path: str, entry: Entry) -> None:
        path = path.strip("/")
        if not path or any(p in ("", ".", "..") for p in path.split("/")):
            raise CmbuildError(f"bad path {path!r}", where=f"layer {self.name}")
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            old = self.entries.get(parent)
            if old is None:
                self.entries[parent] = Entry("dir", 0o755)
            elif old.kind != "dir":
                raise CmbuildError(f"{parent} is a {old.kind}, not a directory, but {path} "
                                   "is put under it", where=f"layer {self.name}")
        old = self.entries.get(path)
        if old is not None and old != entry and not (old.kind == entry.kind == "dir"):
            raise CmbuildError(f"{path} is added twice with different contents",
                               where=f"layer {self.name}")
        self.entries[path] = entry

    def dir(self, path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        self._put(path, Entry("dir", mode, uid, gid))

    def file(self, path: str, data: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        self._put(path, Entry("file", mode, uid, gid, data=data))

    def symlink(self, path: str, target: str) -> None:
        self._put(path, Entry("symlink", 0o777, target=target))

    def paths(self) -> list[str]:
        """Entry paths in archive order: sorted by path components, so that every directory
        comes right before its contents."""
        return sorted(self.entries, key=lambda p: p.split("/"))

    def tar(self) -> bytes:
        """The layer as an uncompressed PAX tar, the same bytes on every machine."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                          encoding="utf-8") as tf:
            for path in self.paths():
                e = self.entries[path]
                ti = tarfile.TarInfo(path)
                ti.mtime = 0
                ti.mode = e.mode
                ti.uid, ti.gid = e.uid, e.gid
                ti.uname = ti.gname = ""
                if e.kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    tf.addfile(ti)
                elif e.kind == "symlink":
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = e.target
                    tf.addfile(ti)
                else:
                    ti.type = tarfile.REGTYPE
                    ti.size = len(e.data)
                    tf.addfile(ti, io.BytesIO(e.data))
        return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


# ----- copying from an extracted package --------------------------------------------------

def copy_from_tree(layer: Layer, tree: Path, rel: str) -> None:
    """Copy one file or symlink of an extracted package into ``layer``, with a fixed mode
    (0755 if the package made it executable, else 0644) and root as owner."""
    src = tree / rel
    if src.is_symlink():
        layer.symlink(rel, os.readlink(src))
    elif src.is_file():
        mode = 0o755 if src.stat().st_mode & 0o100 else 0o644
        layer.file(rel, src.read_bytes(), mode=mode)
    else:
        raise CmbuildError(f"/{rel} is not in the package (or not a file)", where=str(tree))


# ----- packages ---------------------------------------------------------------------------

def read_pins(path: Path) -> list[DebPackage]:
    """The pinned packages of ``packages.toml``."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise CmbuildError(f"cannot read the package pins: {e.strerror}", where=str(path)) from e
    except tomllib.TOMLDecodeError as e:
        raise CmbuildError(f"not valid TOML: {e}", where=str(path)) from e
    if doc.get("suite") != SUITE or doc.get("arch") != ARCH:
        raise CmbuildError(f"expected suite = {SUITE!r} and arch = {ARCH!r}, got "
                           f"{doc.get('suite')!r} and {doc.get('arch')!r}", where=str(path))
    pins: list[DebPackage] = []
    for i, p in enumerate(doc.get("package", [])):
        where = f"{path}: package[{i}]"
        if not isinstance(p, dict) or set(p) != {"name", "version", "sha256"}:
            raise CmbuildError("each [[package]] has exactly name, version and sha256",
                               where=where)
        try:
            pins.append(DebPackage(str(p["name"]), str(p["version"]), str(p["sha256"])))
        except CmbuildError as e:
            raise CmbuildError(e.message, where=where, hint=e.hint) from e
    names = sorted(p.name for p in pins)
    if names != sorted(PACKAGE_NAMES):
        raise CmbuildError(f"pins {', '.join(names) or 'nothing'}; the example needs exactly "
                           f"{', '.join(sorted(PACKAGE_NAMES))}", where=str(path),
                           hint="run with --pin to write the pins again")
    return pins


def write_pins(path: Path, pins: list[DebPackage]) -> None:
    lines = [
        "# The Debian packages of the hello example image, pinned by name, exact version and the sha256",
        "# of the .deb. Written by `python examples/hello/regenerate.py --pin` (which asks apt for the",
        "# current versions); changing a pin changes the image, so regenerate and commit both together.",
        f'suite = "{SUITE}"',
        f'arch = "{ARCH}"',
    ]
    for p in sorted(pins, key=lambda p: PACKAGE_NAMES.index(p.name)):
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
        dest = scratch / p.name
        extract_deb(store.object_path(digests[p.name]), dest)
        trees[p.name] = dest
    return trees


def merge_trees(trees: list[Path], dest: Path) -> Path:
    """Copy several extracted packages into one tree (to resolve paths across them)."""
    for t in trees:
        shutil.copytree(t, dest, symlinks=True, dirs_exist_ok=True)
    return dest


# ----- the image --------------------------------------------------------------------------

def build_layers(trees: dict[str, Path], scratch: Path, entry_script: bytes) -> list[Layer]:
    base = Layer("1 (busybox, users, directories)")
    bb = trees["busybox-static"]
    if not (bb / "usr/bin/busybox").is_file():
        raise CmbuildError("busybox-static has no /usr/bin/busybox", where=str(PACKAGES_TOML))
    base.symlink("bin", "usr/bin")
    base.symlink("sbin", "usr/sbin")
    base.dir("usr/sbin")
    copy_from_tree(base, bb, "usr/bin/busybox")
    for applet in APPLETS:
        base.symlink(f"usr/bin/{applet}", "busybox")
    copy_from_tree(base, bb, "usr/share/doc/busybox-static/copyright")
    base.file("etc/passwd", PASSWD.encode())
    base.file("etc/group", GROUP.encode())
    base.dir("home")
    base.dir("home/app", 0o755, APP_UID, APP_GID)
    base.dir("root", 0o700)
    base.dir("tmp", 0o1777)
    for mnt, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555)):
        base.dir(mnt, mode)

    prog = Layer("2 (hello and its libraries)")
    prog.symlink("lib", "usr/lib")
    tree = merge_trees([trees["hello"], trees["libc6"]], scratch / "hello+libc6")
    machine = elf.parse(tree / "usr/bin/hello").machine
    if machine != EM_RISCV:
        raise CmbuildError(f"/usr/bin/hello is for ELF machine {machine}, not RISC-V",
                           where=str(PACKAGES_TOML), hint=f"pin the {ARCH} build of hello")
    copy_from_tree(prog, tree, "usr/bin/hello")
    for rel in elf.closure(["usr/bin/hello"], tree, LIBRARY_DIRS, {"lib": "usr/lib"}):
        copy_from_tree(prog, tree, rel)
    for name in ("hello", "libc6"):
        copy_from_tree(prog, trees[name], f"usr/share/doc/{name}/copyright")

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
    config = {
        "created": CREATED,
        "architecture": ARCH,
        "os": "linux",
        "config": IMAGE_CONFIG,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history(pins),
    }
    config_bytes = canonical_json(config)
    config_digest = sha256_bytes(config_bytes)
    blobs[config_digest] = config_bytes
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descs,
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = sha256_bytes(manifest_bytes)
    blobs[manifest_digest] = manifest_bytes
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": ARCH, "os": "linux"},
            "annotations": {REF_NAME: TAG},
        }],
    }
    return blobs, canonical_json(index)


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o644)  # whatever the umask
        f.write(data)


def write_layout(output: Path, blobs: dict[str, bytes], index: bytes) -> None:
    """Write the OCI layout to ``output``, replacing an earlier layout there as a whole."""
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
        os.chmod(new, 0o755)
        (new / "blobs" / "sha256").mkdir(parents=True)
        os.chmod(new / "blobs", 0o755)
        os.chmod(new / "blobs" / "sha256", 0o755)
        _write(new / "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        _write(new / "index.json", index)
        for digest, data in sorted(blobs.items()):
            _write(new / "blobs" / "sha256" / digest.split(":", 1)[1], data)
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
    pins = pin(store, PACKAGES_TOML) if repin else read_pins(PACKAGES_TOML)
    with store.tmpdir("hello-example-") as scratch:
        trees = extract(store, pins, scratch)
        layers = build_layers(trees, scratch, ENTRY_SCRIPT.read_bytes())
    blobs, index = image_blobs(layers, pins)
    write_layout(output, blobs, index)
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
