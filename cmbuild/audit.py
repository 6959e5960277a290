"""``audit``: rebuild every stage from its sources in a fresh store and compare each output
digest with ``cartesi.lock``; also check that the objects the lock names are intact in the
project's store. ``verify``: re-hash every object of a store.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import CmbuildError
from .pipeline import Context, changed_paths
from .publish import read_lock
from .store import Store


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def verify_store(store: Store, repair: bool = False) -> list[str]:
    """Re-hash every object; report (and with ``repair`` remove) the corrupt ones."""
    bad = []
    objects = store.all_objects()
    for digest in objects:
        if not store.verify(digest):
            bad.append(digest)
            _say(f"corrupt: {digest}" + (" (removed)" if repair else ""))
            if repair:
                store.remove(digest)
    _say(f"verify: {len(objects)} objects checked, {len(bad)} corrupt")
    return bad


# ----- explaining differences ----------------------------------------------------------------
def _tar_tree(data: bytes) -> dict[str, str]:
    tree = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
        for m in t:
            desc = f"{m.type!r} mode={m.mode:o} uid={m.uid} gid={m.gid} size={m.size}"
            if m.issym() or m.islnk():
                desc += f" -> {m.linkname}"
            if m.isreg():
                f = t.extractfile(m)
                desc += " sha256=" + hashlib.sha256(f.read() if f else b"").hexdigest()[:16]
            tree[m.name.lstrip("./") or "."] = desc
    return tree


def _read_tree(path: Path) -> dict[str, str] | None:
    from .drives import squashfs_to_tar
    head = path.read_bytes()[:4] if path.is_file() else b""
    try:
        if head == b"hsqs":
            return _tar_tree(squashfs_to_tar(path))
        if path.is_file() and tarfile.is_tarfile(path):
            return _tar_tree(path.read_bytes())
    except (CmbuildError, tarfile.TarError):
        return None
    return None


def explain(a: Path, b: Path) -> list[str]:
    """Lines that say how two outputs differ: file by file for drives and tars, key by key for
    JSON documents."""
    if a.is_dir() or b.is_dir():
        return [f"  directory outputs differ ({a.name} vs {b.name})"]
    try:
        ja, jb = json.loads(a.read_bytes()), json.loads(b.read_bytes())
        return [f"  key {k} differs" for k in changed_paths(ja, jb)] or ["  same JSON, different bytes"]
    except (ValueError, UnicodeDecodeError):
        pass
    ta, tb = _read_tree(a), _read_tree(b)
    if ta is None or tb is None:
        return [f"  binary outputs differ ({a.stat().st_size} vs {b.stat().st_size} bytes)"]
    lines = []
    for name in sorted(set(ta) | set(tb)):
        if ta.get(name) != tb.get(name):
            if name not in ta:
                lines.append(f"  file {name}: only in the rebuilt output")
            elif name not in tb:
                lines.append(f"  file {name}: only in the locked output")
            else:
                lines.append(f"  file {name}: locked {ta[name]} / rebuilt {tb[name]}")
    return lines or ["  same files, different image bytes (file-system layout or metadata)"]


ALIASES = {"app": ["squashfs", "config"]}   # task names that stand for several stages


def audit(ctx: Context, only: str | None = None) -> bool:
    """Rebuild in a fresh temporary store; compare with cartesi.lock. True when all match."""
    lock = read_lock(ctx.project_dir)
    locked = lock.get("stages", {})
    if not locked:
        raise CmbuildError("cartesi.lock records no build to audit", where=str(ctx.project_dir / "cartesi.lock"),
                           hint="build first (`doit snapshot` or `doit build`), then audit")
    # what the lock holds, with what it needs; stages it does not hold were never built here
    # (`cmbuild app runtime` builds no kernel): they are reported, not rebuilt
    if only:
        targets = ALIASES.get(only, [only])
        for t in targets:
            if t not in ctx.graph:
                raise CmbuildError(f"no stage named {only!r}; stages: {', '.join(ctx.graph)}")
            if t not in locked:
                raise CmbuildError(f"stage {t!r} is not in cartesi.lock: nothing to audit",
                                   hint=f"build it first (`cmbuild {t}`)")
    else:
        targets = [n for n in ctx.graph if n in locked]
    order = ctx.graph.order(*targets)
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="cmbuild-audit-") as tmp:
        fresh = Context(ctx.project, ctx.project_dir, Store(Path(tmp) / "store"),
                        allow_unpinned=ctx.allow_unpinned, progress=False)
        fresh.use_remote = False   # an audit builds everything here: a remote cache proves nothing
        for name in order:
            entry = locked.get(name)
            _say(f"audit: rebuilding {name} ...")
            rec = fresh.ensure(name)
            want = entry.get("output") if entry else None
            if want is None:
                verdict = "NOT LOCKED"
                ok = False
            elif want != rec.output:
                verdict = "MISMATCH"
                ok = False
                if ctx.store.has(want):
                    notes.append(f"{name}: rebuilt output differs from the locked one:")
                    notes += explain(ctx.store.object_path(want), fresh.store.object_path(rec.output))
            else:
                verdict = "ok"
            # the project's own store must still hold exactly what the lock names
            if want is not None and ctx.store.has(want) and not ctx.store.verify(want):
                verdict = "CORRUPT IN STORE"
                ok = False
                notes.append(f"{name}: the store's copy of {want[:19]} no longer matches its digest:")
                notes += explain(ctx.store.object_path(want), fresh.store.object_path(rec.output))
            rows.append((name, (want or "-")[:19], rec.output[:19], verdict))
            if entry and entry.get("root_hash") and rec.meta.get("root_hash") != entry.get("root_hash"):
                rows.append((f"{name} root hash", entry["root_hash"][:18], str(rec.meta.get("root_hash"))[:18],
                             "MISMATCH"))
                ok = False
    if not only:
        rows += [(n, "-", "-", "not built (not in cartesi.lock)") for n in ctx.graph if n not in order]
    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  {'locked':<19}  {'rebuilt':<19}  verdict")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:<19}  {r[2]:<19}  {r[3]}")
    for n in notes:
        print(n)
    print("audit: " + ("every output matches cartesi.lock" if ok else "MISMATCH: not reproducible as locked"))
    return ok
