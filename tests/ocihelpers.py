"""Helpers for tests that need real layer tars, OCI image layouts and file trees.

- ``F``, ``D``, ``S``, ``H``, ``W``, ``OPQ``, ``DEV``, ``FIFO`` describe layer entries and
  :func:`make_layer` turns a list of them into tar bytes (with Python's ``tarfile``, so that the
  inputs do not depend on the code under test); :func:`compress` gzips or zstds them.
- :func:`write_oci_layout` writes an OCI image layout (blobs/sha256, index.json, oci-layout,
  manifest, config with ``rootfs.diff_ids``) for a list of layer tars.
- :func:`umoci_unpack` runs Debian's ``umoci unpack --rootless`` on a layout.
- :func:`read_tar_tree`, :func:`read_dir_tree` read a tar or a directory into a comparable
  ``{path: Node}`` map (paths are ``bytes``), :func:`hardlink_groups` gives the sets of paths
  that share an inode.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import zstandard

MTIME = 1_600_000_000
ENC = {"encoding": "utf-8", "errors": "surrogateescape"}


# --------------------------------------------------------------------------------------------
# Describing layers
# --------------------------------------------------------------------------------------------
@dataclass
class Entry:
    kind: str  # file, dir, symlink, hardlink, chr, blk, fifo
    name: str | bytes
    data: bytes = b""
    target: str | bytes = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: dict[str, str] = field(default_factory=dict)
    major: int = 0
    minor: int = 0


def _s(name: str | bytes) -> str:
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


def F(name: str | bytes, data: bytes = b"", mode: int = 0o644, **kw: object) -> Entry:
    return Entry("file", name, data=data, mode=mode, **kw)  # type: ignore[arg-type]


def D(name: str | bytes, mode: int = 0o755, **kw: object) -> Entry:
    return Entry("dir", name, mode=mode, **kw)  # type: ignore[arg-type]


def S(name: str | bytes, target: str | bytes, **kw: object) -> Entry:
    return Entry("symlink", name, target=target, mode=0o777, **kw)  # type: ignore[arg-type]


def H(name: str | bytes, target: str | bytes, **kw: object) -> Entry:
    return Entry("hardlink", name, target=target, **kw)  # type: ignore[arg-type]


def W(path: str) -> Entry:
    """A whiteout of ``path``."""
    head, _, base = path.rstrip("/").rpartition("/")
    return F((head + "/" if head else "") + ".wh." + base)


def OPQ(directory: str) -> Entry:
    return F(directory.rstrip("/") + "/.wh..wh..opq")


def DEV(name: str, major: int, minor: int, kind: str = "chr", mode: int = 0o666) -> Entry:
    return Entry(kind, name, mode=mode, major=major, minor=minor)


def FIFO(name: str, mode: int = 0o644) -> Entry:
    return Entry("fifo", name, mode=mode)


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE}


def make_layer(entries: Iterable[Entry], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An uncompressed layer tar holding ``entries`` in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **ENC) as tar:  # type: ignore[call-overload]
        for e in entries:
            info = tarfile.TarInfo(_s(e.name))
            info.type = _TYPES[e.kind]
            info.mode = e.mode
            info.uid, info.gid, info.mtime = e.uid, e.gid, e.mtime
            info.linkname = _s(e.target)
            info.devmajor, info.devminor = e.major, e.minor
            info.pax_headers = {"SCHILY.xattr." + k: v for k, v in e.xattrs.items()}
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    assert how == "none"
    return data


MEDIA = {"none": "application/vnd.oci.image.layer.v1.tar",
         "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
         "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# OCI image layouts and umoci
# --------------------------------------------------------------------------------------------
def _put_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    path = layout / "blobs" / "sha256" / digest.split(":")[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


def write_oci_layout(layout: Path, layer_tars: list[bytes], tag: str = "latest",
                     compression: str = "gzip") -> list[tuple[Path, str]]:
    """Write an OCI image layout (riscv64/linux) with these uncompressed layer tars, compressed
    with ``compression``. Returns the (blob path, digest) of each layer, bottom first."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layers, descs, diff_ids = [], [], []
    for tar in layer_tars:
        blob = compress(tar, compression)
        digest = _put_blob(layout, blob)
        layers.append((layout / "blobs" / "sha256" / digest.split(":")[1], digest))
        descs.append({"mediaType": MEDIA[compression], "digest": digest, "size": len(blob)})
        diff_ids.append(sha256(tar))
    config = {"architecture": "riscv64", "os": "linux",
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": []}
    config_bytes = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": _put_blob(layout, config_bytes), "size": len(config_bytes)},
                "layers": descs}
    manifest_bytes = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": _put_blob(layout, manifest_bytes), "size": len(manifest_bytes),
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    return layers


def umoci_unpack(layout: Path, bundle: Path, tag: str = "latest") -> Path:
    """``umoci unpack --rootless``; returns the bundle's rootfs."""
    subprocess.run(["umoci", "--log", "error", "unpack", "--rootless", "--image",
                    f"{layout}:{tag}", str(bundle)], check=True, capture_output=True)
    return bundle / "rootfs"


# --------------------------------------------------------------------------------------------
# Reading trees back
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    type: str  # dir, file, symlink, chr, blk, fifo
    mode: int  # permission bits, & 0o7777
    size: int = 0
    sha256: str = ""
    target: bytes = b""
    uid: int = 0
    gid: int = 0
    dev: tuple[int, int] = (0, 0)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    mtime: int = 0


def _tar_type(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.issym():
        return "symlink"
    if info.ischr():
        return "chr"
    if info.isblk():
        return "blk"
    if info.isfifo():
        return "fifo"
    return "file"


def read_tar_tree(tar: Path | bytes) -> tuple[dict[bytes, Node], dict[bytes, bytes]]:
    """Read a tar: ({path: Node}, {hardlink path: the path it links to}). Paths are bytes,
    without a trailing slash; the root (``.``/``./``) is left out."""
    tree: dict[bytes, Node] = {}
    links: dict[bytes, bytes] = {}
    fileobj = io.BytesIO(tar) if isinstance(tar, bytes) else open(tar, "rb")
    with fileobj, tarfile.open(fileobj=fileobj, mode="r:", **ENC) as tf:  # type: ignore[call-overload]
        for info in tf:
            path = info.name.encode("utf-8", "surrogateescape").strip(b"/")
            if path.startswith(b"./"):
                path = path[2:]
            if path in (b"", b"."):
                continue
            if info.islnk():
                target = info.linkname.encode("utf-8", "surrogateescape").strip(b"/")
                links[path] = target
                tree[path] = tree[target]
                continue
            data = tf.extractfile(info).read() if info.isreg() else b""  # type: ignore[union-attr]
            xattrs = tuple(sorted((k[len("SCHILY.xattr."):],
                                   v.encode("utf-8", "surrogateescape"))
                                  for k, v in info.pax_headers.items()
                                  if k.startswith("SCHILY.xattr.")))
            tree[path] = Node(_tar_type(info), info.mode & 0o7777, len(data),
                              sha256(data) if info.isreg() else "",
                              info.linkname.encode("utf-8", "surrogateescape")
                              if info.issym() else b"",
                              info.uid, info.gid,
                              (info.devmajor, info.devminor) if info.ischr() or info.isblk()
                              else (0, 0), xattrs, int(info.mtime))
    return tree, links


def read_dir_tree(root: Path) -> tuple[dict[bytes, Node], list[frozenset[bytes]]]:
    """Read a directory tree: ({path: Node}, hardlink groups as sets of paths)."""
    tree: dict[bytes, Node] = {}
    inodes: dict[tuple[int, int], set[bytes]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            fmt = stat.S_IFMT(st.st_mode)
            kind = {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFREG: "file",
                    stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFIFO: "fifo"}[fmt]
            data = b""
            if kind == "file":
                with open(full, "rb") if st.st_mode & 0o400 else _readable(full) as f:
                    data = f.read()
            tree[rel] = Node(kind, stat.S_IMODE(st.st_mode), len(data),
                             sha256(data) if kind == "file" else "",
                             os.readlink(full) if kind == "symlink" else b"",
                             st.st_uid, st.st_gid, (0, 0), (), int(st.st_mtime))
            if kind != "dir" and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), set()).add(rel)
    groups = [frozenset(g) for g in inodes.values() if len(g) > 1]
    return tree, groups


class _readable:
    """Open a file we own whose mode forbids reading (umoci keeps mode 0 on fake devices)."""

    def __init__(self, path: bytes):
        self.path = path

    def __enter__(self) -> io.BufferedReader:
        self.mode = os.lstat(self.path).st_mode
        os.chmod(self.path, self.mode | 0o400)
        self.f = open(self.path, "rb")
        return self.f

    def __exit__(self, *exc: object) -> None:
        self.f.close()
        os.chmod(self.path, stat.S_IMODE(self.mode))


def hardlink_groups(links: dict[bytes, bytes]) -> list[frozenset[bytes]]:
    """Hardlink groups from a tar's {link: target} map."""
    groups: dict[bytes, set[bytes]] = {}
    for link, target in links.items():
        groups.setdefault(target, {target}).add(link)
    return [frozenset(g) for g in groups.values()]


def tar_to_squashfs(tar_path: Path, out: Path) -> None:
    """Build an uncompressed squashfs from a tar with the project's tool (or mksquashfs)."""
    try:
        from cmbuild import drives
    except ImportError:  # pragma: no cover - the project's drives module is missing
        pass
    else:
        drives.tar_to_squashfs(tar_path, out, compression="none")
        return
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    with open(tar_path, "rb") as src:
        subprocess.run(["mksquashfs", "-", str(out), "-tar", "-noI", "-noId", "-noD", "-noF",
                        "-noX", "-mkfs-time", "0", "-all-time", "0", "-root-mode", "755",
                        "-quiet"], stdin=src, check=True, capture_output=True, env=env)


def squashfs_tar(image: Path) -> bytes:
    """The squashfs read back as a tar (``sqfs2tar``)."""
    try:
        from cmbuild.drives import squashfs_to_tar
    except ImportError:  # pragma: no cover
        return subprocess.run(["sqfs2tar", "--no-skip", str(image)], check=True,
                              capture_output=True).stdout
    return squashfs_to_tar(image)


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def debian_busybox(store_dir: Path) -> bytes:
    """Debian's static busybox for riscv64, the one the runtime layer pins (fetched into the
    store at ``store_dir``, checked against its sha256)."""
    import tempfile

    from cmbuild.debian import extract_deb, fetch_debs
    from cmbuild.recipes import load_runtime_recipe, recipes_root
    from cmbuild.store import Store
    store = Store(store_dir)
    recipe = load_runtime_recipe(recipes_root(), "0.1.0")
    pin = recipe.package("busybox-static")
    digest = fetch_debs(store, [pin.deb()], suite=recipe.suite, arch=recipe.architecture)[pin.name]
    with tempfile.TemporaryDirectory(dir=store.tmp) as tmp:
        extract_deb(store.object_path(digest), Path(tmp) / "x")
        return (Path(tmp) / "x/usr/bin/busybox").read_bytes()


def busybox_image(path: Path, busybox: bytes) -> Path:
    """An image with nothing but /bin/busybox and /bin/sh: no /proc, /dev, /sys, /tmp or /etc,
    like many distroless and scratch-based images."""
    write_oci_layout(path, [make_layer([F("bin/busybox", busybox, mode=0o755), S("bin/sh", "busybox")])])
    return path


def scripted_image(script: Path, out: Path, store: Path) -> Path:
    """Run an image script (``examples/echo/build.py``, ``tests/redis/build.py``: pinned Debian
    packages into an OCI layout) to write ``out``, keeping the .debs in ``store``."""
    import sys
    p = subprocess.run([sys.executable, str(script), str(out), "--store", str(store)],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    return out
