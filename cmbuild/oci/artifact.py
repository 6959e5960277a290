"""Store objects as OCI artifacts: a file or a directory tree pushed to a registry and fetched
back byte for byte.

An artifact is an OCI image manifest (v1.1, ``artifactType`` set) whose layers are the
object's files, one blob each, in path order:

* ``org.opencontainers.image.title`` names the file (its path inside a tree, as ORAS does);
  ``io.cartesi.cmbuild.mode`` its permission bits; ``io.cartesi.cmbuild.content`` and
  ``io.cartesi.cmbuild.content.size`` the sha256 and size of its bytes as they are on disk.
* A file is compressed with zstd where that pays (media type ``...file.v1+zstd``), else sent
  as it is (``...file.v1``): a stored machine's RAM image and hash tree are mostly zeros.
  Compression is single-threaded at a fixed level, so the same file gives the same blob on
  every machine, and a blob the registry holds already is not sent again.
* Empty directories and symlinks of a tree are listed in the manifest annotation
  ``io.cartesi.cmbuild.tree`` (JSON).

Fetching checks each blob's digest as it arrives (and resumes broken downloads), inflates it,
writes runs of zeros as holes (sparse files stay sparse), checks the file's own digest and
size, and only then puts the object into the store, where its name (the file's sha256 or the
tree's :func:`cmbuild.store.tree_digest`) must be the digest the caller expects. Nothing half
fetched or mismatched is ever stored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import CmbuildError
from ..store import CHUNK, DIGEST_PREFIX, Store, canonical_json, sha256_bytes
from .image import MAX_DOCUMENT, OCI_MANIFEST, Descriptor
from .registry import RegistryClient

TITLE = "org.opencontainers.image.title"
MODE = "io.cartesi.cmbuild.mode"
CONTENT = "io.cartesi.cmbuild.content"
CONTENT_SIZE = "io.cartesi.cmbuild.content.size"
TREE = "io.cartesi.cmbuild.tree"
KIND = "io.cartesi.cmbuild.kind"      # "file" or "tree"
EXTRA = "io.cartesi.cmbuild.extra"    # a layer that is another store object, named by digest
FILE_TYPE = "application/vnd.cartesi.cmbuild.file.v1"
ZSTD_TYPE = FILE_TYPE + "+zstd"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
ZSTD_LEVEL = 3
BLOCK = 4096
# compress a file only when that saves at least this share of its bytes
WORTH = 0.9


@dataclass
class Blob:
    """One layer of an artifact, ready to push: the bytes to send live at ``path``."""

    desc: dict[str, Any]
    path: Path


def _zstd() -> Any:
    import zstandard
    return zstandard


def prepare_file(src: Path, title: str, work: Path) -> Blob:
    """The layer of one file: zstd-compressed into ``work`` when that pays, else the file."""
    st = src.stat()
    h = hashlib.sha256()
    out = work / f"blob-{len(list(work.iterdir()))}"
    zs = _zstd()
    cctx = zs.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True, threads=0)
    with open(src, "rb") as f, open(out, "wb") as o:
        with cctx.stream_writer(o, size=st.st_size, closefd=False) as z:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                z.write(chunk)
    content = DIGEST_PREFIX + h.hexdigest()
    annotations = {TITLE: title, MODE: f"{stat.S_IMODE(st.st_mode):04o}", CONTENT: content,
                   CONTENT_SIZE: str(st.st_size)}
    if out.stat().st_size < WORTH * st.st_size:
        path, media = out, ZSTD_TYPE
    else:
        out.unlink()
        path, media = src, FILE_TYPE
    digest, size = _file_digest(path)
    return Blob({"mediaType": media, "digest": digest, "size": size,
                 "annotations": annotations}, path)


def _file_digest(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return DIGEST_PREFIX + h.hexdigest(), size


def prepare_object(store: Store, digest: str, name: str, work: Path) -> tuple[list[Blob], str, list[Any]]:
    """The layers of a store object (file or tree), its kind, and a tree's extra entries
    (empty directories and symlinks)."""
    obj = store.require(digest)
    if obj.is_file():
        return [prepare_file(obj, name, work)], "file", []
    blobs: list[Blob] = []
    extras: list[Any] = []
    for dirpath, dirnames, filenames in os.walk(obj):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, obj)
        for entry in sorted(dirnames + filenames):
            full = Path(dirpath) / entry
            rel = os.path.normpath(os.path.join(rel_dir, entry))
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                extras.append({"path": rel, "type": "symlink", "target": os.readlink(full)})
            elif stat.S_ISDIR(st.st_mode):
                extras.append({"path": rel, "type": "dir", "mode": f"{stat.S_IMODE(st.st_mode):04o}"})
            elif stat.S_ISREG(st.st_mode):
                blobs.append(prepare_file(full, rel, work))
    blobs.sort(key=lambda b: b.desc["annotations"][TITLE])
    return blobs, "tree", sorted(extras, key=lambda e: e["path"])


def manifest_for(blobs: list[Blob], artifact_type: str, annotations: dict[str, str],
                 config: tuple[str, bytes] | None = None) -> tuple[bytes, dict[str, Any]]:
    """The manifest's bytes (canonical JSON: the same object gives the same manifest
    digest on every machine) and the config descriptor."""
    media, data = config or (EMPTY_TYPE, EMPTY)
    cfg = {"mediaType": media, "digest": sha256_bytes(data), "size": len(data)}
    if media == EMPTY_TYPE:
        cfg["data"] = base64.b64encode(data).decode()
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
           "config": cfg, "layers": [b.desc for b in blobs], "annotations": annotations}
    return canonical_json(doc), cfg


def push_artifact(client: RegistryClient, repository: str, reference: str, blobs: list[Blob],
                  artifact_type: str, annotations: dict[str, str],
                  config: tuple[str, bytes] | None = None,
                  progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Upload the blobs the repository lacks, then the manifest under ``reference`` (a tag).
    Returns (manifest digest, bytes uploaded)."""
    data, cfg = manifest_for(blobs, artifact_type, annotations, config)
    sent = 0
    media, cfg_bytes = config or (EMPTY_TYPE, EMPTY)
    if client.push_blob(repository, cfg_bytes, cfg["digest"], cfg["size"]):
        sent += cfg["size"]
    for b in blobs:
        if client.push_blob(repository, b.path, b.desc["digest"], b.desc["size"], progress=progress):
            sent += b.desc["size"]
    digest = client.put_manifest(repository, reference, data, OCI_MANIFEST)
    return digest, sent + len(data)


@contextlib.contextmanager
def transfer_bar(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on standard error for ``total`` bytes sent or received (only when that is
    a terminal and ``enabled``): yields the callback to feed, or None."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                   TransferSpeedColumn(), console=Console(stderr=True), transient=True)
    with bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, advance=n)


# ----- fetching ---------------------------------------------------------------------------
def get_artifact(client: RegistryClient, repository: str, reference: str,
                 artifact_type: str | None = None) -> tuple[dict[str, Any], str]:
    """(manifest, digest) of an artifact, checked to be one of ``artifact_type``."""
    data, _media, digest = client.get_manifest(repository, reference)
    where = f"{client.registry}/{repository}@{digest}"
    try:
        doc = json.loads(data)
    except ValueError:
        raise CmbuildError("the manifest is not JSON", where=where) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise CmbuildError("not an OCI artifact manifest (no layers)", where=where)
    if artifact_type is not None and doc.get("artifactType") != artifact_type:
        raise CmbuildError(f"the artifact is a {doc.get('artifactType')!r}, not a "
                           f"{artifact_type!r}", where=where)
    return doc, digest


class SparseWriter:
    """Writes a file, leaving every all-zero 4 KiB block as a hole; hashes what it is given
    and refuses more than ``limit`` bytes."""

    def __init__(self, path: Path, limit: int, where: str):
        self.f = open(path, "wb")
        self.h = hashlib.sha256()
        self.size = 0
        self.limit = limit
        self.where = where
        self.pending = b""

    def write(self, data: bytes) -> int:
        n = len(data)
        self.size += n
        if self.size > self.limit:
            raise CmbuildError(f"the file is longer than the {self.limit} bytes the artifact "
                               "says", where=self.where)
        self.h.update(data)
        buf = self.pending + data if self.pending else data
        whole = len(buf) - len(buf) % BLOCK
        self._put(memoryview(buf)[:whole])
        self.pending = bytes(buf[whole:])
        return n

    def _put(self, view: memoryview) -> None:
        zero = bytes(BLOCK)
        start = 0
        for off in range(0, len(view), BLOCK):
            if view[off:off + BLOCK] == zero:
                if off > start:
                    self.f.write(view[start:off])
                self.f.seek(BLOCK, os.SEEK_CUR)
                start = off + BLOCK
        if start < len(view):
            self.f.write(view[start:])

    def close(self) -> str:
        if self.pending.strip(b"\0"):
            self.f.write(self.pending)
        elif self.pending:
            self.f.seek(len(self.pending), os.SEEK_CUR)
        self.f.truncate(self.size)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return DIGEST_PREFIX + self.h.hexdigest()

    def abort(self) -> None:
        self.f.close()


class _LayerWriter:
    """What :meth:`RegistryClient.download_blob` writes to: hashes the blob as it arrives and
    feeds it, inflated when it is zstd, to a :class:`SparseWriter`."""

    def __init__(self, out: SparseWriter, compressed: bool):
        self.h = hashlib.sha256()
        self.size = 0
        self.out = out
        self.z = None
        if compressed:
            self.z = _zstd().ZstdDecompressor().stream_writer(out, write_size=1 << 20,
                                                              closefd=False)

        self.bad: Exception | None = None   # the zstd stream broke: only hashing goes on

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        if self.bad is not None:
            return len(data)
        if self.z is not None:
            try:
                self.z.write(data)
            except _zstd().ZstdError as e:
                # a corrupt blob: the digest check (after the last byte) says so first
                self.bad = e
        else:
            self.out.write(data)
        return len(data)

    def finish(self) -> None:
        if self.z is not None and self.bad is None:
            try:
                self.z.flush()
                self.z.close()
            except _zstd().ZstdError as e:
                self.bad = e
        if self.bad is not None:
            raise CmbuildError(f"the blob is not valid zstd: {self.bad}")

    @property
    def digest(self) -> str:
        return DIGEST_PREFIX + self.h.hexdigest()


def _safe_path(title: Any, where: str) -> str:
    if not isinstance(title, str) or not title or title.startswith("/") or \
            any(part in ("", ".", "..") for part in title.split("/")):
        raise CmbuildError(f"the artifact names a file {title!r}, which is not a plain relative "
                           "path", where=where, hint="it was refused: nothing was written")
    return title


def _copy_local(src: Path, dest: Path, size: int) -> str:
    """Copy ``src`` to ``dest`` (zero blocks as holes); the sha256 of what was copied."""
    out = SparseWriter(dest, size, str(dest))
    try:
        with open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
    except BaseException:
        out.abort()
        raise
    return out.close()


def _layer_file(client: RegistryClient, repository: str, layer: dict[str, Any], dest: Path,
                where: str, progress: Callable[[int], None] | None, store: Store | None = None) -> None:
    """Download one layer into ``dest``, verified twice: the blob and the file's bytes. A file
    whose bytes the local store already holds (a drive inside a stored machine is also the
    drive stage's output) is copied from there, re-hashed, instead of downloaded."""
    ann = layer.get("annotations") or {}
    try:
        desc = Descriptor(layer["mediaType"], layer["digest"], int(layer["size"]))
        content, content_size = ann[CONTENT], int(ann[CONTENT_SIZE])
    except (KeyError, TypeError, ValueError):
        raise CmbuildError("a layer lacks its digest, size or content annotations",
                           where=where) from None
    if desc.media_type not in (FILE_TYPE, ZSTD_TYPE):
        raise CmbuildError(f"a layer has media type {desc.media_type!r}", where=where)
    local = store.object_path(content) if store is not None and isinstance(content, str) \
        and content.startswith(DIGEST_PREFIX) and store.has(content) else None
    if local is not None and local.is_file() and local.stat().st_size == content_size \
            and _copy_local(local, dest, content_size) == content:
        got, size = content, content_size
    else:
        out = SparseWriter(dest, content_size, f"{where} {ann.get(TITLE)}")
        w = _LayerWriter(out, desc.media_type == ZSTD_TYPE)
        try:
            client.download_blob(repository, desc, w, progress)
            w.finish()
        except BaseException:
            out.abort()
            raise
        got = out.close()
        size = out.size
    if got != content or size != content_size:
        raise CmbuildError(f"{ann.get(TITLE)}: the file's bytes hash to {got} ({size} bytes), "
                           f"the artifact says {content} ({content_size} bytes)", where=where,
                           hint="the artifact is corrupt; nothing was stored")
    mode = ann.get(MODE)
    if mode is not None:
        try:
            os.chmod(dest, int(mode, 8) & 0o7777)
        except ValueError:
            raise CmbuildError(f"bad mode {mode!r}", where=where) from None


def fetch_object(client: RegistryClient, repository: str, doc: dict[str, Any], store: Store,
                 expect: str | None, where: str,
                 progress: Callable[[int], None] | None = None) -> str:
    """Put the object an artifact holds into the store and return its digest; with
    ``expect``, refuse (storing nothing) unless that is the digest."""
    ann = doc.get("annotations") or {}
    kind = ann.get(KIND, "file")
    layers = [x for x in doc["layers"] if not (x.get("annotations") or {}).get(EXTRA)]
    extras = [x for x in doc["layers"] if (x.get("annotations") or {}).get(EXTRA)]
    with store.tmpdir("fetch-") as work:
        for i, layer in enumerate(extras):
            said = (layer.get("annotations") or {}).get(CONTENT)
            if not isinstance(said, str) or store.has(said):
                continue
            path = work / f"extra-{i}"
            _layer_file(client, repository, layer, path, where, progress)
            os.chmod(path, 0o644)
            store.adopt(path)
        if kind == "file":
            if len(layers) != 1:
                raise CmbuildError(f"a file artifact has {len(layers)} layers", where=where)
            said = (layers[0].get("annotations") or {}).get(CONTENT)
            if expect is not None and said != expect:
                raise CmbuildError(f"the artifact holds {said}, not {expect}", where=where,
                                   hint="nothing was fetched nor stored")
            if expect is not None and store.has(expect):
                return expect
            path = work / "file"
            _layer_file(client, repository, layers[0], path, where, progress)
            os.chmod(path, 0o644)
            digest = store.adopt(path)   # its bytes were checked against the annotation
        elif kind == "tree":
            root = work / "tree"
            root.mkdir()
            for layer in layers:
                rel = _safe_path((layer.get("annotations") or {}).get(TITLE), where)
                dest = root / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                _layer_file(client, repository, layer, dest, where, progress, store)
            try:
                entries = json.loads(ann.get(TREE) or "[]")
            except ValueError:
                raise CmbuildError("bad tree annotation", where=where) from None
            for e in entries:
                rel = _safe_path(e.get("path"), where)
                if e.get("type") == "dir":
                    (root / rel).mkdir(parents=True, exist_ok=True)
                    os.chmod(root / rel, int(e.get("mode", "0755"), 8) & 0o7777)
                elif e.get("type") == "symlink":
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(str(e.get("target")), root / rel)
            from ..store import tree_digest
            digest = tree_digest(root)
            if expect is not None and digest != expect:
                raise CmbuildError(f"the tree fetched is {digest}, not {expect}", where=where,
                                   hint="the artifact is corrupt; nothing was stored")
            digest = store.add_tree(root)
        else:
            raise CmbuildError(f"unknown artifact kind {kind!r}", where=where)
    return digest


def copy_tree_out(src: Path, dest: Path) -> None:
    """Copy a fetched tree out of the store (``cmbuild fetch DIR``), keeping modes and holes."""
    shutil.copytree(src, dest, symlinks=True, copy_function=_copy_sparse)


def _copy_sparse(src: str, dst: str) -> None:
    size = os.path.getsize(src)
    w = SparseWriter(Path(dst), size, dst)
    with open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            w.write(chunk)
    w.close()
    shutil.copymode(src, dst)


__all__ = ["Blob", "prepare_object", "push_artifact", "get_artifact", "fetch_object",
           "MAX_DOCUMENT", "copy_tree_out"]
