"""The layer flattener: histories of real layer tars, checked against the expected tree, against
the squashfs built from the output, and against umoci; hostile layers; determinism."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cmbuild.errors import CmbuildError
from cmbuild.oci import tarutil
from cmbuild.oci.flatten import FlattenStats, LayerInflater, LayerInput, flatten, read_layers
from cmbuild.tarstream import copy_tar, write_tree

from ocihelpers import (D, DEV, F, FIFO, H, OPQ, S, W, Entry, Node, compress, hardlink_groups,
                        have, make_layer, read_dir_tree, read_tar_tree, sha256, squashfs_tar,
                        tar_to_squashfs, umoci_unpack, write_oci_layout)


# --------------------------------------------------------------------------------------------
# Expected nodes
# --------------------------------------------------------------------------------------------
def ef(data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
       xattrs: dict[str, bytes] | None = None) -> Node:
    return Node("file", mode, len(data), sha256(data), uid=uid, gid=gid,
                xattrs=tuple(sorted((xattrs or {}).items())))


def ed(mode: int = 0o755, uid: int = 0, gid: int = 0) -> Node:
    return Node("dir", mode, uid=uid, gid=gid)


def el(target: str | bytes) -> Node:
    return Node("symlink", 0o777, target=target.encode() if isinstance(target, str) else target)


def edev(kind: str, major: int, minor: int, mode: int = 0o666) -> Node:
    return Node(kind, mode, dev=(major, minor))


def efifo(mode: int = 0o644) -> Node:
    return Node("fifo", mode)


def _key(path: str | bytes) -> bytes:
    return path.encode() if isinstance(path, str) else path


LONG = b"long/" + b"\xff\xfe-not-utf8-" + b"n" * 150 + b"\xe9"  # > 100 bytes, not UTF-8
LONG_TARGET = "t/" + "x" * 120

# (id, layers bottom first, expected tree, expected hardlink groups)
HISTORIES: list[tuple[str, list[list[Entry]], dict[Any, Node], list[set[Any]]]] = [
    ("file_replaced",
     [[D("etc"), F("etc/a", b"one"), F("etc/b", b"b")], [F("etc/a", b"two", mode=0o600)]],
     {"etc": ed(), "etc/a": ef(b"two", 0o600), "etc/b": ef(b"b")}, []),
    ("whiteout_deletes",
     [[D("a"), F("a/x", b"x"), F("a/y", b"y"), D("a/sub"), F("a/sub/z")], [W("a/x"), W("a/sub")]],
     {"a": ed(), "a/y": ef(b"y")}, []),
    ("opaque_dir",
     [[D("d"), F("d/old"), D("d/sub"), F("d/sub/deep"), F("keep")],
      [D("d", 0o700), OPQ("d"), F("d/new", b"n")]],
     {"d": ed(0o700), "d/new": ef(b"n"), "keep": ef()}, []),
    ("opaque_after_same_layer_entries",
     [[D("d"), F("d/old"), D("d/sub"), F("d/sub/deep"), F("d/sub/deep2")],
      [D("d"), D("d/sub"), F("d/sub/new", b"n"), OPQ("d")]],
     {"d": ed(), "d/sub": ed(), "d/sub/new": ef(b"n")}, []),
    ("hardlink_across_layers",
     [[D("bin"), F("bin/busybox", b"bb", mode=0o755)], [H("bin/sh", "bin/busybox"), H("zz", "bin/sh")]],
     {"bin": ed(), "bin/busybox": ef(b"bb", 0o755), "bin/sh": ef(b"bb", 0o755),
      "zz": ef(b"bb", 0o755)}, [{"bin/busybox", "bin/sh", "zz"}]),
    ("hardlink_first_path_sorts_first",
     [[F("z", b"data")], [H("a", "z")]],
     {"a": ef(b"data"), "z": ef(b"data")}, [{"a", "z"}]),
    ("symlink_replaced_by_dir",
     [[D("real"), F("real/f", b"f"), S("link", "real")], [D("link"), F("link/g", b"g")]],
     {"real": ed(), "real/f": ef(b"f"), "link": ed(), "link/g": ef(b"g")}, []),
    ("write_through_symlink",
     [[D("real"), S("lnk", "real"), D("x"), S("x/abs", "/real"), S("x/up", "../real/")],
      [F("lnk/f", b"f"), F("x/abs/g", b"g"), F("x/up/h", b"h")]],
     {"real": ed(), "real/f": ef(b"f"), "real/g": ef(b"g"), "real/h": ef(b"h"),
      "lnk": el("real"), "x": ed(), "x/abs": el("/real"), "x/up": el("../real/")}, []),
    ("readd_under_deleted_dir",
     [[D("d"), F("d/a"), D("d/s"), F("d/s/b")], [W("d")], [D("d"), F("d/c", b"c"), F("d/s/b", b"2")]],
     {"d": ed(), "d/c": ef(b"c"), "d/s": ed(), "d/s/b": ef(b"2")}, []),
    ("whiteout_and_readd_in_one_layer",
     [[D("d"), F("d/a"), F("x", b"1")], [W("d"), D("d"), F("d/c", b"c"), F("x", b"2"), W("x")]],
     {"d": ed(), "d/c": ef(b"c"), "x": ef(b"2")}, []),
    ("hardlink_target_later_replaced",
     [[F("t", b"old")], [H("l", "t")], [F("t", b"new!")]],
     {"l": ef(b"old"), "t": ef(b"new!")}, []),
    ("hardlink_target_whited_out",
     [[F("t", b"d"), H("l", "t")], [W("t")]],
     {"l": ef(b"d")}, []),
    ("file_replaces_dir_and_dir_replaces_file",
     [[D("d"), F("d/x"), F("f", b"file")], [F("d", b"now a file"), D("f", 0o750)]],
     {"d": ef(b"now a file"), "f": ed(0o750)}, []),
    ("devices_and_fifo",
     [[D("dev"), DEV("dev/null", 1, 3), DEV("dev/sda", 8, 0, "blk", 0o660), FIFO("run/fifo")]],
     {"dev": ed(), "dev/null": edev("chr", 1, 3), "dev/sda": edev("blk", 8, 0, 0o660),
      "run": ed(), "run/fifo": efifo()}, []),
    ("setuid_sticky_owners",
     [[D("bin"), F("bin/su", b"su", mode=0o4755), F("bin/sg", b"sg", mode=0o2711, gid=42),
       D("tmp", 0o1777), F("home/u/f", b"u", uid=1000, gid=1000),
       F("big_ids", uid=3_000_000, gid=4_000_000)]],
     {"bin": ed(), "bin/su": ef(b"su", 0o4755), "bin/sg": ef(b"sg", 0o2711, gid=42),
      "tmp": ed(0o1777), "home": ed(), "home/u": ed(), "home/u/f": ef(b"u", uid=1000, gid=1000),
      "big_ids": ef(uid=3_000_000, gid=4_000_000)},
     []),
    ("xattrs",
     [[F("f", b"x", xattrs={"user.comment": "hello", "security.capability": "cap"}),
       D("d", xattrs={"user.dir": "1"})], [D("d")]],
     {"f": ef(b"x", xattrs={"user.comment": b"hello", "security.capability": b"cap"}),
      "d": ed()}, []),
    ("long_non_utf8_names",
     [[F(LONG, b"long"), S("s", LONG_TARGET), H(b"h\xff", LONG)]],
     {b"long": ed(), LONG: ef(b"long"), b"h\xff": ef(b"long"), "s": el(LONG_TARGET)},
     [{LONG, b"h\xff"}]),
    ("implicit_parents",
     [[F("x/y/z", b"z")], [F("x/y/w", b"w")]],
     {"x": ed(), "x/y": ed(), "x/y/z": ef(b"z"), "x/y/w": ef(b"w")}, []),
]

# Histories that umoci (rootless) cannot reproduce exactly: owners and non-user xattrs.
NOT_FOR_UMOCI = {"setuid_sticky_owners", "xattrs"}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def write_layers(tmp: Path, layers: list[list[Entry]], how: str = "gzip") -> list[LayerInput]:
    out = []
    first = len(list(tmp.glob("blob*")))
    for i, entries in enumerate(layers, first):
        blob = compress(make_layer(entries), how)
        path = tmp / f"blob{i}"
        path.write_bytes(blob)
        out.append(LayerInput(path, sha256(blob)))
    return out


def run_flatten(tmp: Path, inputs: list[LayerInput], **kw: Any) -> tuple[bytes, FlattenStats]:
    scratch = tmp / f"scratch{len(list(tmp.glob('scratch*')))}"
    scratch.mkdir()
    buf = io.BytesIO()
    stats = flatten(inputs, buf, scratch=scratch, **kw)
    return buf.getvalue(), stats


def canon(tree: dict[bytes, Node]) -> dict[bytes, Node]:
    return dict(sorted(tree.items()))


def groups_of(links: dict[bytes, bytes]) -> set[frozenset[bytes]]:
    return set(hardlink_groups(links))


# --------------------------------------------------------------------------------------------
# Histories: expected tree, squashfs round trip, umoci
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,layers,expected,groups", HISTORIES, ids=[h[0] for h in HISTORIES])
def test_history(tmp_path: Path, name: str, layers: list[list[Entry]],
                 expected: dict[Any, Node], groups: list[set[Any]]) -> None:
    out, stats = run_flatten(tmp_path, write_layers(tmp_path, layers))
    tree, links = read_tar_tree(out)
    assert canon(tree) == canon({_key(p): n for p, n in expected.items()})
    assert groups_of(links) == {frozenset(_key(p) for p in g) for g in groups}
    assert stats.entries == len(tree)
    assert stats.hardlinks == len(links)

    # The squashfs made from the output holds the same tree.
    (tmp_path / "out.tar").write_bytes(out)
    tar_to_squashfs(tmp_path / "out.tar", tmp_path / "out.sqfs")
    sq_tree, sq_links = read_tar_tree(squashfs_tar(tmp_path / "out.sqfs"))
    assert canon(sq_tree) == canon(tree)
    assert groups_of(sq_links) == groups_of(links)


def _umoci_view(tree: dict[bytes, Node]) -> dict[bytes, Node]:
    """What a rootless umoci can reproduce: devices become empty files; no owners, xattrs
    or times."""
    view = {}
    for path, n in tree.items():
        if n.type in ("chr", "blk"):
            n = Node("file", n.mode, 0, sha256(b""))
        view[path] = replace(n, uid=0, gid=0, xattrs=(), mtime=0, dev=(0, 0))
    return canon(view)


@pytest.mark.skipif(not have("umoci"), reason="umoci is not installed")
@pytest.mark.parametrize("name,layers", [(h[0], h[1]) for h in HISTORIES
                                         if h[0] not in NOT_FOR_UMOCI],
                         ids=[h[0] for h in HISTORIES if h[0] not in NOT_FOR_UMOCI])
def test_same_tree_as_umoci(tmp_path: Path, name: str, layers: list[list[Entry]]) -> None:
    tars = [make_layer(entries) for entries in layers]
    blobs = write_oci_layout(tmp_path / "layout", tars, tag="t")
    inputs = [LayerInput(path, digest) for path, digest in blobs]
    out, _ = run_flatten(tmp_path, inputs)
    ours, links = read_tar_tree(out)
    rootfs = umoci_unpack(tmp_path / "layout", tmp_path / "bundle", tag="t")
    theirs, their_groups = read_dir_tree(rootfs)
    assert _umoci_view(ours) == _umoci_view(theirs)
    assert groups_of(links) == set(their_groups)


# --------------------------------------------------------------------------------------------
# Output format
# --------------------------------------------------------------------------------------------
def _raw_members(out: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(out), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tf:
        return tf.getmembers()


def test_canonical_order_and_headers(tmp_path: Path) -> None:
    layers = [[F("b/z"), F("a-b"), D("a"), F("a/c"), F("a.b"), F("b/a/x"), F("B"), H("c", "a/c")]]
    out, _ = run_flatten(tmp_path, write_layers(tmp_path, layers, "none"))
    names = [m.name for m in _raw_members(out)]
    # byte order per component: "B" < "a" < "a-b" < "a.b" < "b"; a dir before its contents
    assert names == ["B", "a", "a/c", "a-b", "a.b", "b", "b/a", "b/a/x", "b/z", "c"]
    assert b"PaxHeader" not in out  # nothing needed a PAX header
    assert out.endswith(bytes(1024)) and len(out) % 512 == 0
    for m in _raw_members(out):
        assert (m.uname, m.gname, m.mtime) == ("", "", 0)
        assert m.pax_headers == {}
    assert out[:512][257:265] == b"ustar\x0000"
    dir_header = out[:1024][512:1024]  # "a" comes second
    assert dir_header[:2] == b"a/"


def test_mtime_clamp(tmp_path: Path) -> None:
    layers = [[F("old", mtime=1000), F("new", mtime=2_000_000_000)]]
    inputs = write_layers(tmp_path, layers)
    for clamp, want in ((0, {"old": 0, "new": 0}), (5000, {"old": 1000, "new": 5000}),
                        (None, {"old": 1000, "new": 2_000_000_000})):
        out, _ = run_flatten(tmp_path, inputs, mtime_clamp=clamp)
        tree, _ = read_tar_tree(out)
        assert {p.decode(): n.mtime for p, n in tree.items()} == want


def test_zstd_and_multi_member_gzip_layers(tmp_path: Path) -> None:
    tar = make_layer([F("a", b"a" * 100_000), F("b", b"b")])
    half = len(tar) // 2 // 512 * 512
    gz = gzip.compress(tar[:half]) + gzip.compress(tar[half:])
    cctx = zstandard.ZstdCompressor()
    zs = cctx.compress(tar[:half]) + cctx.compress(tar[half:])
    want = None
    for i, blob in enumerate((tar, gz, zs, compress(tar, "zstd"))):
        (tmp_path / f"l{i}").write_bytes(blob)
        out, stats = run_flatten(tmp_path, [LayerInput(tmp_path / f"l{i}", sha256(blob))])
        assert stats.files == 2 and stats.bytes == 100_001
        want = want or out
        assert out == want


def test_input_formats_agree(tmp_path: Path) -> None:
    """GNU (long names, base-256 ids), ustar (prefix field) and PAX layers, with or without a
    PAX global header, flatten to the same bytes."""
    entries = [D("usr"), F("usr/" + "p" * 90 + "/" + "q" * 60, b"deep"),
               S("usr/" + "l" * 110, "t" * 110), F("usr/ids", b"i", uid=3_000_000, gid=5),
               F("usr/old", mtime=1234)]
    outs = set()
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        blob = make_layer(entries, fmt)
        (tmp_path / f"f{fmt}").write_bytes(blob)
        outs.add(run_flatten(tmp_path, [LayerInput(tmp_path / f"f{fmt}", sha256(blob))],
                             mtime_clamp=None)[0])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": "global"}) as tar:
        src = tarfile.open(fileobj=io.BytesIO(make_layer(entries)), mode="r:")
        for member in src:  # a "g" header first, then the same entries
            tar.addfile(member, src.extractfile(member) if member.isreg() else None)
    (tmp_path / "g").write_bytes(buf.getvalue())
    assert b"comment=global" in buf.getvalue()
    outs.add(run_flatten(tmp_path, [LayerInput(tmp_path / "g", sha256(buf.getvalue()))],
                         mtime_clamp=None)[0])
    assert len(outs) == 1
    tree, _ = read_tar_tree(outs.pop())
    assert tree[b"usr/ids"] == replace(ef(b"i", uid=3_000_000, gid=5), mtime=1_600_000_000)
    assert tree[b"usr/old"].mtime == 1234

    # ustar cannot hold the big uid or the long link target: the rest reads the same
    ustar_blob = make_layer([e for e in entries if e.uid < 0o7777777 and len(e.target) < 100],
                            tarfile.USTAR_FORMAT)
    (tmp_path / "u").write_bytes(ustar_blob)
    out, _ = run_flatten(tmp_path, [LayerInput(tmp_path / "u", sha256(ustar_blob))],
                         mtime_clamp=None)
    ustar_tree, _ = read_tar_tree(out)
    assert ustar_tree == {k: v for k, v in tree.items()
                          if not k.startswith(b"usr/lll") and k != b"usr/ids"}


def test_same_layer_twice_and_big_file(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    inputs = write_layers(tmp_path, [[F("big", big)]])
    out, stats = run_flatten(tmp_path, inputs + inputs)
    tree, _ = read_tar_tree(out)
    assert tree[b"big"] == ef(big)
    assert stats.unpacked_bytes >= 2 * len(big)


# --------------------------------------------------------------------------------------------
# Hostile layers
# --------------------------------------------------------------------------------------------
SENTINEL = "@SENTINEL@"  # replaced by the absolute path of a sentinel directory

HOSTILE_OK: list[tuple[str, list[list[Entry]], dict[Any, Node]]] = [
    ("dotdot_name", [[F("../../etc/x", b"x")]], {"etc": ed(), "etc/x": ef(b"x")}),
    ("absolute_name", [[F("/etc/y", b"y"), F("./z", b"z")]],
     {"etc": ed(), "etc/y": ef(b"y"), "z": ef(b"z")}),
    ("symlink_escape_relative", [[S("evil", "../../../../../../tmp"), F("evil/pwned", b"p")]],
     {"evil": el("../../../../../../tmp"), "tmp": ed(), "tmp/pwned": ef(b"p")}),
    ("symlink_escape_absolute", [[S("evil", SENTINEL)], [F("evil/pwned", b"p")]], {}),
    ("symlink_to_root_dotdot", [[S("up", ".."), F("up/up/f", b"f")]],
     {"up": el(".."), "f": ef(b"f")}),
    ("duplicate_entries", [[F("a", b"1"), F("a", b"2"), D("d", 0o700), D("d", 0o711)]],
     {"a": ef(b"2"), "d": ed(0o711)}),
    ("whiteout_of_missing", [[F("a")], [W("nothing"), W("no/such/dir"), OPQ("gone")]],
     {"a": ef()}),
    ("hardlink_outside_resolves_inside", [[F("etc/passwd", b"p")], [H("l", "../../etc/passwd")]],
     {"etc": ed(), "etc/passwd": ef(b"p"), "l": ef(b"p")}),
]


def _files_outside(root: Path, scratch_names: set[str]) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in scratch_names:
            continue
        found.update(os.path.normpath(os.path.join(rel, n)) for n in dirnames + filenames)
    return found


def _substitute(layers: list[list[Entry]], sentinel: Path) -> list[list[Entry]]:
    return [[replace(e, target=str(sentinel)) if e.target == SENTINEL else e for e in layer]
            for layer in layers]


@pytest.mark.parametrize("name,layers,expected", HOSTILE_OK, ids=[h[0] for h in HOSTILE_OK])
def test_hostile_in_image(tmp_path: Path, name: str, layers: list[list[Entry]],
                          expected: dict[Any, Node]) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    inputs = write_layers(tmp_path, _substitute(layers, sentinel))
    before = _files_outside(tmp_path, set())
    out, _ = run_flatten(tmp_path, inputs)
    assert _files_outside(tmp_path, {"scratch0"}) == before | {"scratch0"}
    assert not any(sentinel.iterdir())
    tree, _ = read_tar_tree(out)
    if name == "symlink_escape_absolute":  # written at the sentinel's path inside the image
        inside = str(sentinel).strip("/").encode() + b"/pwned"
        assert tree[inside] == ef(b"p")
        assert tree[b"evil"] == el(str(sentinel))
    else:
        assert canon(tree) == canon({_key(p): n for p, n in expected.items()})


def _gz_truncated(tmp: Path) -> bytes:
    return gzip.compress(make_layer([F("a", os.urandom(50_000))]))[:-100]


def _zstd_garbage(tmp: Path) -> bytes:
    return compress(make_layer([F("a", b"a")]), "zstd") + b"garbage!"


def _zstd_truncated(tmp: Path) -> bytes:
    return compress(make_layer([F("a", os.urandom(50_000))]), "zstd")[:-100]


def _gz_garbage(tmp: Path) -> bytes:
    return gzip.compress(make_layer([F("a", b"a")])) + b"\0garbage"


def _bomb(tmp: Path) -> bytes:
    return gzip.compress(make_layer([F("zeros", bytes(4 << 20))]))


def _zstd_bomb(tmp: Path) -> bytes:
    return compress(make_layer([F("zeros", bytes(4 << 20))]), "zstd")


def _tar_truncated_data(tmp: Path) -> bytes:
    return make_layer([F("a", b"x" * 5000), F("b", b"y" * 5000)])[:7000]


def _tar_truncated_header(tmp: Path) -> bytes:
    return make_layer([F("a", b"x" * 5000), F("b", b"y" * 5000)])[:6000]


def _tar_bad_checksum(tmp: Path) -> bytes:
    tar = bytearray(make_layer([F("a", b"x")]))
    tar[0] = ord("b")
    return bytes(tar)


# (id, layer blob factory or entries, max_unpacked_size, words the error must contain)
HOSTILE_ERR: list[tuple[str, Any, int, list[str]]] = [
    ("hardlink_missing", [[F("a")], [H("l", "nope")]], 8 << 30, ["'l'", "nope", "does not exist"]),
    ("hardlink_outside_missing", [[H("l", "../../../etc/shadow")]], 8 << 30, ["'l'", "etc/shadow"]),
    ("hardlink_to_dir", [[D("d"), H("l", "d")]], 8 << 30, ["'l'", "directory"]),
    ("parent_is_a_file", [[F("f"), F("f/x")]], 8 << 30, ["'f/x'", "not a directory"]),
    ("symlink_loop", [[S("a", "b"), S("b", "a"), F("a/x")]], 8 << 30, ["'a/x'", "symbolic links"]),
    ("root_replaced", [[S(".", "/etc")]], 8 << 30, ["root directory"]),
    ("nul_in_name", [[F("x" * 120 + "\0" + "etc/passwd")]], 8 << 30, ["NUL byte", "'xxx"]),
    ("empty_symlink", [[S("s", "")]], 8 << 30, ["'s'", "empty target"]),
    ("whiteout_as_directory", [[F("d/.wh..wh..opq/x")]], 8 << 30,
     ["'d/.wh..wh..opq/x'", "whiteout name"]),
    ("whiteout_dir_via_symlink", [[S("s", "x/.wh.y"), F("s/f")]], 8 << 30,
     ["'s/f'", "whiteout name"]),
    ("invalid_whiteout", [[F("a")], [F(".wh..")]], 8 << 30, ["'.wh..'", "invalid whiteout"]),
    ("truncated_gzip", _gz_truncated, 8 << 30, ["truncated gzip"]),
    ("gzip_trailing_garbage", _gz_garbage, 8 << 30, ["garbage after gzip"]),
    ("zstd_trailing_garbage", _zstd_garbage, 8 << 30, ["garbage after zstd"]),
    ("truncated_zstd", _zstd_truncated, 8 << 30, ["truncated zstd"]),
    ("truncated_tar_data", _tar_truncated_data, 8 << 30, ["truncated tar", "entry 'b'"]),
    ("truncated_tar_header", _tar_truncated_header, 8 << 30,
     ["truncated tar header", "after entry 'a'"]),
    ("bad_checksum", _tar_bad_checksum, 8 << 30, ["checksum", "at start"]),
    ("bomb", _bomb, 1 << 20, ["more than 1048576 bytes", "decompression bomb"]),
    ("zstd_bomb", _zstd_bomb, 1 << 20, ["more than 1048576 bytes"]),
    ("over_small_limit", [[F("a", bytes(4 << 10))]], 2048, ["more than 2048 bytes"]),
]


@pytest.mark.parametrize("name,source,limit,words", HOSTILE_ERR, ids=[h[0] for h in HOSTILE_ERR])
def test_hostile_refused(tmp_path: Path, name: str, source: Any, limit: int,
                         words: list[str]) -> None:
    if callable(source):
        blob = source(tmp_path)
        (tmp_path / "blob0").write_bytes(blob)
        inputs = [LayerInput(tmp_path / "blob0", sha256(blob))]
    else:
        inputs = write_layers(tmp_path, source)
    before = _files_outside(tmp_path, set())
    with pytest.raises(CmbuildError) as err:
        run_flatten(tmp_path, inputs, max_unpacked_size=limit)
    text = str(err.value)
    bad = inputs[-1]
    assert bad.digest in text, text
    assert f"layer {len(inputs) - 1}" in text
    for word in words:
        assert word in text, text
    assert _files_outside(tmp_path, {"scratch0"}) == before | {"scratch0"}


def test_the_lowest_broken_layer_is_named_though_layers_decompress_side_by_side(tmp_path: Path) -> None:
    """Layers decompress in parallel, but errors are reported in layer order: a corrupt layer 1
    is named even when layer 2 (a bomb) fails first or at the same time."""
    good = write_layers(tmp_path, [[F("a", b"a")]])
    (tmp_path / "bad1").write_bytes(_gz_truncated(tmp_path))
    (tmp_path / "bad2").write_bytes(_bomb(tmp_path))
    inputs = good + [LayerInput(tmp_path / "bad1", sha256((tmp_path / "bad1").read_bytes())),
                     LayerInput(tmp_path / "bad2", sha256((tmp_path / "bad2").read_bytes()))]
    with pytest.raises(CmbuildError) as err:
        run_flatten(tmp_path, inputs, max_unpacked_size=1 << 20)
    assert "layer 1" in str(err.value) and "truncated gzip" in str(err.value), str(err.value)


@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_layer_inflater_fed_in_pieces(tmp_path: Path, chunk: int) -> None:
    """The pull's inflater gives the layer's tar for gzip (multi-member too), and nothing for
    what the unpack stage must decompress and judge itself."""
    raw = make_layer([F("a", b"x" * 100_000), F("b", os.urandom(5000))])
    multi = gzip.compress(raw[:30_000]) + gzip.compress(raw[30_000:])
    cases = {"gzip": (gzip.compress(raw), True, raw), "multi": (multi, True, raw),
             "zstd": (compress(raw, "zstd"), True, None), "plain": (raw, True, None),
             "garbage": (gzip.compress(raw) + b"junk", True, None),
             "truncated": (gzip.compress(raw)[:-9], True, None),
             "unverified": (gzip.compress(raw), False, None)}
    for name, (blob, verified, want) in cases.items():
        inflater = LayerInflater(tmp_path / f"{name}.tar", 1 << 30)
        for i in range(0, len(blob), chunk):
            inflater.write(blob[i:i + chunk])
        inflater.close(verified)
        got = inflater.result()
        assert (got.read_bytes() if got else None) == want, name
        assert (tmp_path / f"{name}.tar").exists() == (want is not None), name
    small = LayerInflater(tmp_path / "bomb.tar", 1000)
    small.write(gzip.compress(raw))
    small.close(True)
    assert small.result() is None


def _entry_fields(e: tarutil.TarEntry) -> tuple[Any, ...]:
    return (e.name, e.type, e.mode, e.uid, e.gid, e.mtime, e.size, e.linkname, e.devmajor,
            e.devminor, sorted(e.xattrs.items()))


TREE_CASES = [h[:2] for h in HISTORIES] + [
    ("mixed_sizes_links_and_mount_points",
     [[D("etc"), F("etc/passwd", b"x" * 16), F("etc/odd", b"y" * 13), F("bin/big", b"z" * 200_000),
       H("bin/big2", "bin/big"), S("proc", "/nowhere"), DEV("dev/null", 1, 3)],
      [F("etc/odd", b"w" * 7), F("sys", b"not a directory")]]),
]


@pytest.mark.parametrize("name,layers", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_tree_entries_are_the_canonical_tar_and_give_the_same_drive_stream(
        tmp_path: Path, name: str, layers: list[list[Entry]]) -> None:
    """What the unpack stage streams into the app drive from its tree is, byte for byte, what
    the squashfs stage streams from the stored canonical tar (copy_tar)."""
    inputs = write_layers(tmp_path, layers)
    canonical, _ = run_flatten(tmp_path, inputs)
    (tmp_path / "canonical.tar").write_bytes(canonical)
    mounts = ["/proc", "/dev", "/sys", "/data/volume", "/etc"]
    (tmp_path / "scratch-tree").mkdir()
    with read_layers(inputs, scratch=tmp_path / "scratch-tree") as flat:
        fd = os.open(tmp_path / "canonical.tar", os.O_RDONLY)
        try:
            stored = [_entry_fields(e) for e in tarutil.iter_tar(fd, len(canonical))]
        finally:
            os.close(fd)
        assert [_entry_fields(e) for e, _fd in flat.entries()] == stored
        for aligned in (True, False):
            from_tree, from_tar = io.BytesIO(), io.BytesIO()
            write_tree(flat.entries, from_tree, mount_points=mounts, aligned=aligned)
            copy_tar(tmp_path / "canonical.tar", from_tar, mount_points=mounts, aligned=aligned)
            assert from_tree.getvalue() == from_tar.getvalue()


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------
def test_identical_bytes_across_umask_tz_and_scratch(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    layers = [h[1] for h in HISTORIES if h[0] == "long_non_utf8_names"][0] + [
        [F("etc/a", b"1", mtime=123), D("etc", 0o700), H("etc/b", "etc/a")],
        [W("etc/a"), F("usr/bin/x", b"x" * 70_000, mode=0o755, xattrs={"user.k": "v"})]]
    inputs = write_layers(tmp_path, [layers[0]], "none") + write_layers(tmp_path, layers[1:], "zstd")
    outputs = []
    for umask, tz in ((0o077, "UTC"), (0o022, "America/New_York"), (0o002, "Asia/Kolkata")):
        old = os.umask(umask)
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        try:
            for clamp in (0, None):
                outputs.append((clamp, run_flatten(tmp_path, inputs, mtime_clamp=clamp)[0]))
        finally:
            os.umask(old)
    monkeypatch.delenv("TZ")
    time.tzset()
    for clamp in (0, None):
        assert len({out for c, out in outputs if c == clamp}) == 1
