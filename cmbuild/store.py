"""The content-addressed store.

Layout of a store directory (``cache/`` by default)::

    objects/sha256/<hex>      a file object, read-only, named by the sha256 of its bytes
    objects/sha256/<hex>/     a tree object (a directory), named by :func:`tree_digest`
    keys/<hex>.json           stage key -> output digest (and a little metadata)
    locks/                    one lock file per stage key being built
    tmp/                      temporary files and directories, on the same file system
    doit.db                   doit's own state

The store knows nothing about stages: a stage key is an opaque sha256 (see :func:`stage_key`).
Every write is atomic: temporary file, fsync, rename. A key record is written only after its
object is complete, so a build killed at any point never leaves a key pointing at a partial object.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import CmbuildError
from .faults import checkpoint

DIGEST_PREFIX = "sha256:"
CHUNK = 1 << 20


def canonical_json(value: Any) -> bytes:
    """The one JSON encoding used for hashing: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_bytes(data: bytes) -> str:
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return DIGEST_PREFIX + h.hexdigest()


def check_digest(digest: str, where: str = "digest") -> str:
    """Return the hex part of ``sha256:<64 hex>`` or raise a clear error."""
    if not isinstance(digest, str) or not digest.startswith(DIGEST_PREFIX):
        raise CmbuildError(f"expected sha256:<64 hex>, got {digest!r}", where=where)
    hexpart = digest[len(DIGEST_PREFIX):]
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise CmbuildError(f"expected sha256:<64 hex>, got {digest!r}", where=where)
    return hexpart


def stage_key(stage: str, version: int | str, options: Any, inputs: dict[str, Any]) -> str:
    """A stage's identity: sha256 of the canonical JSON of its name, implementation version,
    options and input digests. Same key: same output, so the stage need not run."""
    doc = {"stage": stage, "version": version, "options": options, "inputs": inputs}
    return sha256_bytes(canonical_json(doc))


def tree_digest(root: Path, *, modes: bool = False) -> str:
    """Digest of a directory: sha256 over a canonical listing of every entry (relative path,
    kind, executable bit, and the sha256 of file contents or the target of a symlink); with
    ``modes``, the permission bits of files and directories too (a source directory whose
    modes shape what is built from it)."""
    lines: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                lines.append({"path": rel, "type": "symlink", "target": os.readlink(full)})
            elif stat.S_ISDIR(st.st_mode):
                lines.append({"path": rel, "type": "dir"})
            elif stat.S_ISREG(st.st_mode):
                lines.append({"path": rel, "type": "file", "exec": bool(st.st_mode & 0o111),
                              "sha256": sha256_file(Path(full))})
            else:
                raise CmbuildError("only files, directories and symlinks can be stored", where=full)
            if modes and not stat.S_ISLNK(st.st_mode):
                lines[-1]["mode"] = st.st_mode & 0o7777
    lines.sort(key=lambda e: e["path"])
    header = b"cmbuild-tree-v1+modes\n" if modes else b"cmbuild-tree-v1\n"
    return sha256_bytes(header + b"\n".join(canonical_json(e) for e in lines))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class KeyRecord:
    """What the store remembers of one stage run."""

    stage: str
    output: str
    size: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "output": self.output, "size": self.size, "meta": self.meta}


class HashingWriter:
    """A temporary file in the store that hashes what is written to it."""

    def __init__(self, f: BinaryIO, path: Path):
        self._f = f
        self.path = path
        self._h = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        if self.size == 0:
            checkpoint("object: first write")
        self._h.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    @property
    def digest(self) -> str:
        return DIGEST_PREFIX + self._h.hexdigest()


class Store:
    """A content-addressed object store with a map from stage keys to outputs."""

    def __init__(self, root: Path | str):
        self.root = Path(root).absolute()
        self.objects = self.root / "objects" / "sha256"
        self.keys = self.root / "keys"
        self.locks = self.root / "locks"
        self.tmp = self.root / "tmp"
        # stage outputs a remote cache holds and nothing here has read yet (see
        # :meth:`put_pointer`): records of their own, so that a key record always has its object
        self.pointers = self.root / "remote-keys"
        for d in (self.objects, self.keys, self.locks, self.tmp, self.pointers):
            d.mkdir(parents=True, exist_ok=True)

    # ----- objects -------------------------------------------------------------------------
    def object_path(self, digest: str) -> Path:
        return self.objects / check_digest(digest)

    def has(self, digest: str) -> bool:
        return self.object_path(digest).exists()

    def require(self, digest: str, what: str = "object") -> Path:
        path = self.object_path(digest)
        if not path.exists():
            raise CmbuildError(f"{what} {digest} is not in the store", where=str(self.root),
                               hint="run the stage that produces it again")
        return path

    @contextlib.contextmanager
    def tmpdir(self, prefix: str = "work-") -> Iterator[Path]:
        """A scratch directory inside the store, removed afterwards whatever happens."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.tmp))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def writer(self, expect: str | None = None) -> Iterator[HashingWriter]:
        """Write a new file object. On normal exit the object is committed (verified against
        ``expect`` when given); on an exception the temporary file is removed and nothing is
        stored. The committed digest is ``writer.digest`` after the ``with`` block."""
        fd, name = tempfile.mkstemp(prefix="obj-", dir=self.tmp)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                w = HashingWriter(f, path)
                yield w
                f.flush()
                os.fsync(f.fileno())
            checkpoint("object: written, not committed")
            if expect is not None and w.digest != expect:
                raise CmbuildError(f"content does not match its digest: expected {expect}, "
                                   f"got {w.digest}", hint="the source is corrupt or was altered")
            self._commit_file(path, w.digest)
        finally:
            if path.exists():
                path.unlink()

    def add_bytes(self, data: bytes) -> str:
        with self.writer() as w:
            w.write(data)
        return w.digest

    def add_json(self, value: Any) -> str:
        """Store a JSON document in canonical form (so equal documents share a digest)."""
        return self.add_bytes(canonical_json(value) + b"\n")

    def read_json(self, digest: str) -> Any:
        return json.loads(self.require(digest).read_bytes())

    def add_file(self, src: Path, expect: str | None = None) -> str:
        """Copy a file into the store (the source is left alone)."""
        with self.writer(expect=expect) as w, open(src, "rb") as f:
            while chunk := f.read(CHUNK):
                w.write(chunk)
        return w.digest

    def adopt(self, src: Path) -> str:
        """Move a finished file that lies in ``self.tmp`` into the store (hashed where it is:
        no copy). The source path is gone afterwards."""
        src = Path(src)
        if self.tmp.resolve() not in src.resolve().parents:
            raise ValueError(f"{src} is not inside the store's tmp folder")
        digest = sha256_file(src)
        with open(src, "rb") as f:
            os.fsync(f.fileno())
        checkpoint("object: adopted, not committed")
        self._commit_file(src, digest)
        return digest

    def add_tree(self, src: Path) -> str:
        """Move a directory (which must be inside ``self.tmp``) into the store as a tree."""
        digest = tree_digest(src)
        dest = self.object_path(digest)
        if dest.exists():
            shutil.rmtree(src)
            return digest
        checkpoint("tree: before rename")
        for dirpath, _dirs, files in os.walk(src):
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    with open(p, "rb") as f:
                        os.fsync(f.fileno())
        try:
            os.rename(src, dest)
        except OSError:
            if not dest.exists():
                raise
            shutil.rmtree(src)
        _fsync_dir(self.objects)
        return digest

    def _commit_file(self, tmp: Path, digest: str) -> None:
        dest = self.object_path(digest)
        os.chmod(tmp, 0o444)
        if dest.exists():
            tmp.unlink()
            return
        checkpoint("object: before rename")
        os.rename(tmp, dest)
        checkpoint("object: renamed")
        _fsync_dir(self.objects)

    def verify(self, digest: str) -> bool:
        """Re-hash an object and say whether it still matches its name."""
        path = self.object_path(digest)
        if path.is_dir():
            return tree_digest(path) == digest
        return path.is_file() and sha256_file(path) == digest

    def all_objects(self) -> list[str]:
        return sorted(DIGEST_PREFIX + p.name for p in self.objects.iterdir()
                      if len(p.name) == 64)

    def remove(self, digest: str) -> None:
        path = self.object_path(digest)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    # ----- stage keys ----------------------------------------------------------------------
    def _key_path(self, key: str) -> Path:
        return self.keys / (check_digest(key, "stage key") + ".json")

    def get_key(self, key: str) -> KeyRecord | None:
        """The record of a stage key, or None when the stage has not run (or its output has
        gone missing, or was truncated: then the stage must run again)."""
        path = self._key_path(key)
        try:
            doc = json.loads(path.read_text())
            rec = KeyRecord(doc["stage"], doc["output"], int(doc["size"]), doc.get("meta", {}))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        obj = self.object_path(rec.output)
        if not obj.exists():
            return None
        if obj.is_file() and obj.stat().st_size != rec.size:
            return None
        return rec

    def put_key(self, key: str, stage: str, output: str, meta: dict[str, Any] | None = None) -> KeyRecord:
        obj = self.require(output, "stage output")
        size = obj.stat().st_size if obj.is_file() else 0
        rec = KeyRecord(stage, output, size, meta or {})
        self._write_record(self._key_path(key), rec)
        return rec

    def _write_record(self, path: Path, rec: KeyRecord) -> None:
        fd, name = tempfile.mkstemp(prefix="key-", dir=self.tmp)
        with os.fdopen(fd, "w") as f:
            json.dump(rec.to_json(), f, sort_keys=True, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        checkpoint("key: before rename")
        os.rename(name, path)
        checkpoint("key: renamed")
        _fsync_dir(path.parent)

    # ----- pointers: outputs a remote cache holds, not downloaded ------------------------
    def _pointer_path(self, key: str) -> Path:
        return self.pointers / (check_digest(key, "stage key") + ".json")

    def put_pointer(self, key: str, stage: str, output: str, meta: dict[str, Any]) -> KeyRecord:
        """Remember that the output of ``key`` is ``output``, held by the remote cache that
        ``meta["remote"]`` names, without its bytes: a stage whose output only feeds the keys
        of later stages, and whose later stages came from the remote too, is never downloaded.
        A pointer is used only while a remote cache is in use (:meth:`get_key` never returns
        one), and it is replaced by a key record once the output is fetched or built."""
        check_digest(output, "stage output")
        rec = KeyRecord(stage, output, 0, meta)
        self._write_record(self._pointer_path(key), rec)
        return rec

    def get_pointer(self, key: str) -> KeyRecord | None:
        try:
            doc = json.loads(self._pointer_path(key).read_text())
            rec = KeyRecord(doc["stage"], doc["output"], 0, doc.get("meta", {}))
            check_digest(rec.output, "stage output")
        except (OSError, ValueError, KeyError, TypeError, CmbuildError):
            return None
        return rec if isinstance(rec.meta, dict) and rec.meta.get("remote") else None

    def drop_pointer(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._pointer_path(key).unlink()

    @contextlib.contextmanager
    def key_lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on one stage key while it is built, so that two builds of
        the same stage wait for each other while different stages run side by side."""
        path = self.locks / (check_digest(key, "stage key") + ".lock")
        with open(path, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def clean_tmp(self) -> None:
        """Remove temporary files left by builds that were killed (only ones no live build
        holds: callers use this while holding no key locks of their own)."""
        for p in self.tmp.iterdir():
            try:
                age = p.lstat().st_mtime
            except FileNotFoundError:
                continue
            import time
            if time.time() - age > 3600:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
