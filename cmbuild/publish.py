"""Where users look: ``.cartesi/`` (drives and the stored machine, as Cartesi's CLI lays them
out) and ``cartesi.lock`` (every stage's key, inputs and output; meant to be committed).

Published files are hard links to store objects (copies when the store is on another file
system), put in place by an atomic rename: a reader sees the old file or the new one, never a
partial one. The stored machine directory is swapped in with an atomic exchange (renameat2),
or two renames where the system lacks it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .faults import checkpoint
from .store import Store

OUT_DIR = ".cartesi"
LOCK_NAME = "cartesi.lock"
LOCK_VERSION = 1


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported,
    and the caller falls back to two renames."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def published_ok(project_dir: Path, name: str, store: Store, digest: str) -> bool:
    """Is ``.cartesi/<name>`` the store object ``digest`` (cheap check: same inode, or same
    size and the digest recorded when it was copied)?"""
    dst = project_dir / OUT_DIR / name
    obj = store.object_path(digest)
    if not dst.exists() or not obj.exists():
        return False
    marker = project_dir / OUT_DIR / f".{name}.digest"

    def recorded() -> bool:
        return marker.is_file() and marker.read_text().strip() == digest

    if obj.is_dir():
        return dst.is_dir() and recorded()
    try:
        if os.path.samefile(dst, obj):
            return True
    except OSError:
        return False
    return dst.stat().st_size == obj.stat().st_size and recorded()


def _sweep(folder: Path, pattern: str, min_age: float = 60.0) -> None:
    """Remove what killed builds left behind (temporary names older than ``min_age`` s)."""
    import time
    now = time.time()
    for p in folder.glob(pattern):
        try:
            if now - p.lstat().st_mtime < min_age:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()
        except OSError:
            pass


def publish(project_dir: Path, name: str, store: Store, digest: str) -> Path:
    """Place the object ``digest`` at ``.cartesi/<name>`` atomically."""
    out = project_dir / OUT_DIR
    out.mkdir(exist_ok=True)
    _sweep(out, f".{name}.new-*")
    _sweep(out, f".{name}.old-*")
    _sweep(out, f".{name}.digest.*")
    obj = store.require(digest)
    dst = out / name
    marker = out / f".{name}.digest"
    if obj.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.new-", dir=out))
        for entry in sorted(obj.iterdir()):
            if entry.is_file():
                _link_or_copy(entry, tmp / entry.name)
            elif entry.is_dir():
                shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
        checkpoint("publish tree: before rename")
        if (dst.exists() or dst.is_symlink()) and _exchange(tmp, dst):
            shutil.rmtree(tmp, ignore_errors=True)     # tmp now holds the old tree
        else:
            old = None
            if dst.exists() or dst.is_symlink():
                old = out / f".{name}.old-{os.getpid()}"
                os.rename(dst, old)
            os.rename(tmp, dst)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    else:
        tmp = out / f".{name}.new-{os.getpid()}"
        if tmp.exists():
            tmp.unlink()
        _link_or_copy(obj, tmp)
        checkpoint("publish: before replace")
        os.replace(tmp, dst)
        checkpoint("publish: replaced")
    mtmp = out / f".{name}.digest.{os.getpid()}"
    mtmp.write_text(digest + "\n")
    os.replace(mtmp, marker)
    return dst


# ----- cartesi.lock ------------------------------------------------------------------------
def lock_path(project_dir: Path) -> Path:
    return project_dir / LOCK_NAME


def read_lock(project_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads(lock_path(project_dir).read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def render_lock(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(project_dir: Path, doc: dict[str, Any]) -> bool:
    """Write ``cartesi.lock`` atomically when its content changes; returns whether it did."""
    text = render_lock(doc)
    path = lock_path(project_dir)
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    _sweep(project_dir, f".{LOCK_NAME}.*")
    tmp = path.with_name(f".{LOCK_NAME}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    checkpoint("lock: before replace")
    os.replace(tmp, path)
    return True
