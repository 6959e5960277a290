"""Where users look: ``.cartesi/`` (drives and the stored machine, as Cartesi's CLI lays them
out) and ``cartesi.lock`` (every stage's key, inputs and output; meant to be committed).

Published files are hard links to store objects (copies when the store is on another file
system), put in place by an atomic rename: a reader sees the old file or the new one, never a
partial one. The stored machine directory is swapped in with two renames.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .store import Store

OUT_DIR = ".cartesi"
LOCK_NAME = "cartesi.lock"
LOCK_VERSION = 1


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def published_ok(project_dir: Path, name: str, store: Store, digest: str) -> bool:
    """Is ``.cartesi/<name>`` the store object ``digest`` (cheap check: same inode, or same
    size and the digest recorded when it was copied)?"""
    dst = project_dir / OUT_DIR / name
    obj = store.object_path(digest)
    if not dst.exists() or not obj.exists():
        return False
    if obj.is_dir():
        marker = project_dir / OUT_DIR / f".{name}.digest"
        return dst.is_dir() and marker.is_file() and marker.read_text().strip() == digest
    try:
        if os.path.samefile(dst, obj):
            return True
    except OSError:
        return False
    marker = project_dir / OUT_DIR / f".{name}.digest"
    return (dst.stat().st_size == obj.stat().st_size and marker.is_file()
            and marker.read_text().strip() == digest)


def publish(project_dir: Path, name: str, store: Store, digest: str) -> Path:
    """Place the object ``digest`` at ``.cartesi/<name>`` atomically."""
    out = project_dir / OUT_DIR
    out.mkdir(exist_ok=True)
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
        os.replace(tmp, dst)
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
    tmp = path.with_name(f".{LOCK_NAME}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return True
