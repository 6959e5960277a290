"""Hostile images through the whole pipeline (`cmbuild app`): a clear error naming the layer
and entry, no file written outside the store, and a failed stage leaves the store as it was."""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from imagebuild import Layer, Layout, LAYER_TYPES, layer_tar, make_image, sha


def _tar(entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in entries:
            if isinstance(e, tuple):
                e[0].size = len(e[1])
                t.addfile(e[0], io.BytesIO(e[1]))
            else:
                t.addfile(e)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname, ti.mode = kind, size, link, 0o755 if kind == tarfile.DIRTYPE else 0o644
    return ti


def _layer(raw: bytes, how: str = "gzip", blob: bytes | None = None) -> Layer:
    data = blob if blob is not None else (gzip.compress(raw, mtime=0) if how == "gzip" else raw)
    return Layer(data, sha(raw), LAYER_TYPES["gzip" if how == "gzip" else None])


def _noise(n: int) -> bytes:
    """Incompressible but deterministic bytes."""
    import hashlib
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(i.to_bytes(8, "little")).digest()
        i += 1
    return bytes(out[:n])


def _base() -> Layer:
    return _layer(layer_tar({"bin/sh": b"#!fake\n", "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
                             "etc/group": b"root:x:0:\n"}))


def _snapshot_store(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.rglob("*")
            if p.is_file() and "doit" not in p.parts and "locks" not in p.parts and p.name != "memo.json"}


CASES = {
    # name: (layer, words the error must contain) -- None: builds, with in-image semantics
    "bomb": (_layer(_tar([(_info("big"), b"\0" * (3 << 20))])), ["layer 1 (sha256:", "max_unpacked_size"]),
    "truncated-gzip": (_layer(b"", blob=gzip.compress(_tar([(_info("f"), _noise(200000))]), mtime=0)[:-5000]),
                       ["layer 1 (sha256:", "truncated"]),
    "hardlink-to-missing": (_layer(_tar([_info("a", tarfile.LNKTYPE, link="does/not/exist")])),
                            ["layer 1 (sha256:", "'a'", "does/not/exist"]),
    "escape-through-symlink": (_layer(_tar([_info("evil", tarfile.SYMTYPE, link="/../../../../tmp/host-escape"),
                                            (_info("evil/pwned", size=3), b"bad")])), None),
    "dotdot-and-absolute": (_layer(_tar([(_info("../../../outside-file", size=2), b"no"),
                                         (_info("/abs-file", size=2), b"ok")])), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_image_through_the_pipeline(tmp_path: Path, name: str) -> None:
    layer, words = CASES[name]
    layout = Layout(tmp_path / "img")
    layout.add_image(make_image([_base(), layer]), tag="latest")
    proj = tmp_path / "deep" / "proj"
    proj.mkdir(parents=True)
    (proj / "cartesi.toml").write_text(f'[image]\npath = "{layout.root}"\nref = "latest"\n'
                                       'max_unpacked_size = "2Mi"\n')
    sentinel = tmp_path / "deep"
    before_outside = {p for p in tmp_path.rglob("*")}
    pull = subprocess.run([sys.executable, "-m", "cmbuild", "pull"], cwd=proj, capture_output=True, text=True)
    assert pull.returncode == 0, pull.stderr
    store_before = _snapshot_store(proj / "cache")
    p = subprocess.run([sys.executable, "-m", "cmbuild", "app"], cwd=proj, capture_output=True, text=True,
                       timeout=300)
    out = p.stdout + p.stderr
    assert "Traceback" not in out
    if words is None:
        assert p.returncode == 0, out
    else:
        assert p.returncode != 0
        for w in words:
            assert w in out, (w, out)
        # the failed stage left nothing: no new object, no key, no temporary file
        assert _snapshot_store(proj / "cache") == store_before
        assert list((proj / "cache" / "tmp").iterdir()) == []
    # nothing escaped: no new path anywhere outside the project folder and the image
    after_outside = {q for q in tmp_path.rglob("*") if sentinel not in q.parents and q != sentinel
                     and layout.root not in q.parents}
    assert after_outside <= before_outside | {layout.root}
    assert not Path("/tmp/host-escape").exists() and not (tmp_path / "outside-file").exists()
