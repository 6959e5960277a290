"""The content-addressed store: atomic writes, verified content, key records, locking."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.store import Store, canonical_json, stage_key, tree_digest


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_objects_are_named_by_content_and_read_only(tmp_path: Path) -> None:
    s = Store(tmp_path / "cache")
    d = s.add_bytes(b"hello")
    assert d == _digest(b"hello")
    p = s.object_path(d)
    assert p.read_bytes() == b"hello"
    assert p.stat().st_mode & 0o777 == 0o444
    assert s.add_bytes(b"hello") == d            # idempotent
    assert s.verify(d)
    assert list(s.tmp.iterdir()) == []           # no temporary file left behind


def test_a_mismatching_digest_stores_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "cache")
    with pytest.raises(CmbuildError, match="does not match its digest"):
        with s.writer(expect=_digest(b"other")) as w:
            w.write(b"hello")
    assert s.all_objects() == []
    assert list(s.tmp.iterdir()) == []


def test_an_exception_while_writing_stores_nothing(tmp_path: Path) -> None:
    s = Store(tmp_path / "cache")
    with pytest.raises(RuntimeError):
        with s.writer() as w:
            w.write(b"partial")
            raise RuntimeError("killed")
    assert s.all_objects() == [] and list(s.tmp.iterdir()) == []


def test_key_records_point_only_at_complete_objects(tmp_path: Path) -> None:
    s = Store(tmp_path / "cache")
    key = stage_key("app", 1, {"format": "squashfs"}, {"rootfs": _digest(b"x")})
    assert s.get_key(key) is None
    d = s.add_bytes(b"drive bytes")
    s.put_key(key, "app", d, {"note": 1})
    rec = s.get_key(key)
    assert rec is not None and rec.output == d and rec.meta == {"note": 1}
    # a truncated object (size differs) makes the key unusable: the stage runs again
    p = s.object_path(d)
    os.chmod(p, 0o644)
    p.write_bytes(b"drive")
    assert s.get_key(key) is None
    assert not s.verify(d)
    s.remove(d)
    assert s.get_key(key) is None


def test_stage_keys_depend_on_every_part() -> None:
    base = stage_key("unpack", 1, {"a": 1}, {"layers": ["x"]})
    assert base == stage_key("unpack", 1, {"a": 1}, {"layers": ["x"]})
    assert base != stage_key("unpack", 2, {"a": 1}, {"layers": ["x"]})
    assert base != stage_key("unpack", 1, {"a": 2}, {"layers": ["x"]})
    assert base != stage_key("unpack", 1, {"a": 1}, {"layers": ["y"]})
    assert base != stage_key("pull", 1, {"a": 1}, {"layers": ["x"]})
    assert canonical_json({"b": 1, "a": [2, 1]}) == b'{"a":[2,1],"b":1}'


def test_trees(tmp_path: Path) -> None:
    s = Store(tmp_path / "cache")
    with s.tmpdir() as t:
        (t / "image").mkdir()
        (t / "image" / "config.json").write_text("{}")
        (t / "image" / "hash_tree.sht").write_bytes(b"\0" * 10)
        expected = tree_digest(t / "image")
        d = s.add_tree(t / "image")
    assert d == expected and s.object_path(d).is_dir() and s.verify(d)
    os.chmod(s.object_path(d) / "config.json", 0o644)
    (s.object_path(d) / "config.json").write_text("{ }")
    assert not s.verify(d)


def _hold_lock(root: str, key: str, seconds: float, marker: str) -> None:
    s = Store(root)
    with s.key_lock(key):
        Path(marker).write_text(str(time.monotonic()))
        time.sleep(seconds)


def test_key_lock_serialises_builders_of_one_key(tmp_path: Path) -> None:
    root = str(tmp_path / "cache")
    key = stage_key("x", 1, {}, {})
    other = stage_key("y", 1, {}, {})
    Store(root)
    p = multiprocessing.Process(target=_hold_lock, args=(root, key, 1.0, str(tmp_path / "m")))
    p.start()
    while not (tmp_path / "m").exists():
        time.sleep(0.01)
    s = Store(root)
    t0 = time.monotonic()
    with s.key_lock(other):       # a different key is not blocked
        pass
    assert time.monotonic() - t0 < 0.5
    with s.key_lock(key):         # the same key waits for the holder
        waited = time.monotonic() - t0
    p.join()
    assert waited > 0.5


def test_publishing_files_and_trees_replaces_them_whole(tmp_path: Path) -> None:
    from cmbuild.publish import publish, published_ok
    s = Store(tmp_path / "cache")
    proj = tmp_path / "proj"
    proj.mkdir()
    f1, f2 = s.add_bytes(b"drive one"), s.add_bytes(b"drive two")
    publish(proj, "app.sqfs", s, f1)
    assert published_ok(proj, "app.sqfs", s, f1) and not published_ok(proj, "app.sqfs", s, f2)
    publish(proj, "app.sqfs", s, f2)
    assert (proj / ".cartesi" / "app.sqfs").read_bytes() == b"drive two"
    trees = []
    for content in ("first", "second"):
        with s.tmpdir() as t:
            (t / "image").mkdir()
            (t / "image" / "config.json").write_text(content)
            trees.append(s.add_tree(t / "image"))
    for digest in trees:
        publish(proj, "image", s, digest)
        assert published_ok(proj, "image", s, digest)
    image = proj / ".cartesi" / "image"
    assert (image / "config.json").read_text() == "second"
    assert sorted(p.name for p in image.iterdir()) == ["config.json"]   # nothing of ours inside
    assert sorted(p.name for p in (proj / ".cartesi").iterdir()) == [
        ".app.sqfs.digest", ".image.digest", "app.sqfs", "image"]
