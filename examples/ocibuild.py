"""What the example image scripts share: ``examples/hello/regenerate.py`` and
``examples/echo/build.py`` each write a ``linux/riscv64`` OCI image layout made only of Debian
``trixie`` packages, and this module is the part of that which does not depend on the image.

- :class:`Layer`: the entries of one layer, built in memory and written as a tar;
- the package pins (``packages.toml``: name, exact version and sha256 of each ``.deb``):
  :func:`read_pins`, :func:`pin`, and :func:`extract`, which fetches the ``.deb`` files with
  :mod:`cmbuild.debian` (each checked against its pin) and unpacks them;
- :func:`busybox_layer` (``/usr/bin/busybox``, its applets, the users ``root`` and ``app`` and
  the top directories) and :func:`copy_elf_closure` (a program and exactly the files of its ELF
  closure);
- :func:`image_blobs` (the layers, config, manifest and ``index.json``) and
  :func:`write_layout`.

The output is byte-identical on every run, machine, user, umask and time zone: tar entries are
built in memory (sorted, numeric owners, empty owner names, mtime 0, fixed modes), gzip runs at
level 9 with mtime 0 and no file name, and every JSON document is canonical. (The gzip bytes
depend on zlib's deflate; a zlib-ng based Python could compress differently.)

The scripts put the repository root (for :mod:`cmbuild`) and ``examples/`` (for this module)
on ``sys.path`` before importing it, and take the :mod:`cmbuild` types they need from here.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cmbuild import elf
# DebPackage, CmbuildError and Store are the types of this module's functions: the scripts
# import them from here
from cmbuild.debian import DebPackage, extract_deb, fetch_debs, lookup
from cmbuild.errors import CmbuildError
from cmbuild.store import Store, canonical_json, sha256_bytes

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

SUITE = "trixie"
ARCH = "riscv64"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
TAG = "latest"
CREATED = "1970-01-01T00:00:00Z"

APP_UID = APP_GID = 1000
PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
          f"app:x:{APP_UID}:{APP_GID}:app:/home/app:/bin/sh\n")
GROUP = ("root:x:0:\n"
         f"app:x:{APP_GID}:\n")

#: Where glibc's loader looks for a library without an ld.so.cache (Debian's multiarch
#: directories first), relative to the image's root.
LIBRARY_DIRS = ("lib/riscv64-linux-gnu", "usr/lib/riscv64-linux-gnu", "lib", "usr/lib")
EM_RISCV = 243


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

    def copy(self, tree: Path, rel: str) -> None:
        """Copy one file or symlink of an extracted package, owned by root, mode 0755 if the
        package made it executable, else 0644."""
        src = tree / rel
        if src.is_symlink():
            self.symlink(rel, os.readlink(src))
        elif src.is_file():
            self.file(rel, src.read_bytes(), mode=0o755 if src.stat().st_mode & 0o100 else 0o644)
        else:
            raise CmbuildError(f"/{rel} is not in the package (or not a file)", where=str(tree))

    def copy_copyright(self, tree: Path, package: str) -> None:
        """The package's ``/usr/share/doc/<package>/copyright``, or its doc directory where
        that is a link to another package's (as libpython3.13-stdlib's is)."""
        doc = f"usr/share/doc/{package}"
        self.copy(tree, doc if (tree / doc).is_symlink() else f"{doc}/copyright")

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


# ----- packages ---------------------------------------------------------------------------

def read_pins(path: Path, names: Sequence[str]) -> list[DebPackage]:
    """The pinned packages of ``packages.toml``, in the order of ``names``: exactly those."""
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
    pinned = sorted(p.name for p in pins)
    if pinned != sorted(names):
        raise CmbuildError(f"pins {', '.join(pinned) or 'nothing'}; the example needs exactly "
                           f"{', '.join(sorted(names))}", where=str(path),
                           hint="run with --pin to write the pins again")
    return sorted(pins, key=lambda p: list(names).index(p.name))


def pin(store: Store, path: Path, names: Sequence[str], header: str) -> list[DebPackage]:
    """Ask apt for Debian's current version of each package in ``names`` and write them to
    ``path``, after the comment ``header``."""
    pins = [lookup(store, name, suite=SUITE, arch=ARCH) for name in names]
    lines = [*(f"# {line}" for line in header.splitlines()), f'suite = "{SUITE}"',
             f'arch = "{ARCH}"']
    for p in pins:
        lines += ["", "[[package]]", f'name = "{p.name}"', f'version = "{p.version}"',
                  f'sha256 = "{p.sha256}"']
    path.write_text("\n".join(lines) + "\n")
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


# ----- the parts of the layers --------------------------------------------------------------

def busybox_layer(busybox: Path, applets: Sequence[str], merged_usr: Sequence[str],
                  where: str) -> Layer:
    """Layer 1 of both images, from the extracted ``busybox-static``: ``/usr/bin/busybox`` and
    a link for each of ``applets``, the merged-usr links ``/<dir> -> usr/<dir>`` for
    ``merged_usr``, ``/etc/passwd`` and ``/etc/group`` (``root``, and ``app`` 1000:1000),
    ``/home/app`` (1000:1000), ``/root`` (0700), ``/tmp`` (1777) and the mount points
    ``/dev``, ``/proc``, ``/sys``."""
    base = Layer("1 (busybox, users, directories)")
    if not (busybox / "usr/bin/busybox").is_file():
        raise CmbuildError("busybox-static has no /usr/bin/busybox", where=where)
    for top in merged_usr:
        base.symlink(top, f"usr/{top}")
    base.dir("usr/sbin")
    base.copy(busybox, "usr/bin/busybox")
    for applet in applets:
        base.symlink(f"usr/bin/{applet}", "busybox")
    base.copy_copyright(busybox, "busybox-static")
    base.file("etc/passwd", PASSWD.encode())
    base.file("etc/group", GROUP.encode())
    base.dir("home")
    base.dir("home/app", 0o755, APP_UID, APP_GID)
    base.dir("root", 0o700)
    base.dir("tmp", 0o1777)
    for mnt, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555)):
        base.dir(mnt, mode)
    return base


def copy_elf_closure(layer: Layer, tree: Path, program: str, where: str) -> None:
    """Copy ``program`` (relative to ``tree``, packages merged with :func:`merge_trees`) and
    exactly the files of its ELF closure: its loader and libraries, with the links on the way,
    as glibc's loader finds them in :data:`LIBRARY_DIRS` (``/lib`` being ``usr/lib``)."""
    machine = elf.parse(tree / program).machine
    if machine != EM_RISCV:
        raise CmbuildError(f"/{program} is for ELF machine {machine}, not RISC-V",
                           where=where, hint=f"pin the {ARCH} packages")
    layer.copy(tree, program)
    for rel in elf.closure([program], tree, LIBRARY_DIRS, {"lib": "usr/lib"}):
        layer.copy(tree, rel)


# ----- the image --------------------------------------------------------------------------

def image_blobs(layers: list[Layer], config: Mapping[str, Any],
                history: list[dict[str, str]]) -> tuple[dict[str, bytes], bytes]:
    """All blobs of the image (digest -> bytes) and the bytes of ``index.json``, for the
    image config ``config`` (the ``config`` key of the config blob)."""
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
    config_bytes = canonical_json({
        "created": CREATED,
        "architecture": ARCH,
        "os": "linux",
        "config": dict(config),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    })
    config_digest = sha256_bytes(config_bytes)
    blobs[config_digest] = config_bytes
    manifest_bytes = canonical_json({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descs,
    })
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


def write_layout(output: Path, blobs: dict[str, bytes], index: bytes,
                 extra: Mapping[str, bytes] | None = None) -> None:
    """Write the OCI layout (and the ``extra`` files, by name, beside ``index.json``) to
    ``output``, replacing an earlier layout there as a whole: the new one is written beside it
    and renamed into place. An output that is neither empty nor an OCI layout is refused."""
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
        for name, data in (extra or {}).items():
            _write(new / name, data)
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
