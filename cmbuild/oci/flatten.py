"""Flatten an image's layers into one canonical tar of its final root file system.

Nothing from the image is ever written to the host as a path: each layer is (at most)
decompressed into one blob-named file in ``scratch``, its tar headers are read into an
in-memory tree (metadata only), and the tree is written out as a sorted, canonical tar whose
file contents are copied from the layer files by offset.

Semantics follow the OCI image-spec (layer.md) as umoci implements them
(``oci/layer/tar_extract.go``):

- Names are cleaned as if rooted at ``/`` (``../../etc/x`` is ``etc/x``). The parent
  directories of an entry are resolved inside the root, following symlinks already in the tree
  (securejoin); the last component is never followed. Missing parents are created 0755
  root:root with mtime 0.
- ``.wh.<name>`` removes ``<name>`` and ``.wh..wh..opq`` in D removes the children of D, but
  only what lower layers put there: a path written by the same layer (or an ancestor of one) is
  kept, whatever the order of the entries in the layer. Other ``.wh..wh.*`` (AUFS metadata)
  are ignored. Whiteouts are never emitted.
- A later entry replaces an earlier one at the same path, except that a directory over a
  directory merges (the newer entry's metadata wins, xattrs included).
- A hardlink shares the inode its target has when the link is read; replacing the target later
  leaves the link with the old content. Hardlinks to directories or to missing targets are
  errors.

Output (see :mod:`cmbuild.oci.tarutil` for the header format): entries in depth-first order
with children sorted by the bytes of their names (so by the tuple of path components), the
root directory itself not emitted, directories named with a trailing ``/``, numeric owners
only, modes ``& 0o7777`` (symlinks always 0777), mtimes clamped, and in each hardlink group the
first path in that order written as the file, the others as hardlinks to it.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import zstandard

from ..errors import CmbuildError
from . import tarutil
from .tarutil import TarEntry, TarFormatError, display

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
WHITEOUT_PREFIX = b".wh."
OPAQUE = b".wh..wh..opq"
MAX_SYMLINKS = 255
IN_CHUNK = 1 << 14  # compressed bytes per decompress() call: bounds the output of one call
OUT_CHUNK = 1 << 20

REGULAR_TYPES = {tarutil.REG, tarutil.AREG, tarutil.CONT}
NODE_TYPES = {tarutil.SYM, tarutil.CHR, tarutil.BLK, tarutil.FIFO}


@dataclass
class LayerInput:
    """One layer blob, in order from the bottom of the image."""

    path: Path
    digest: str
    media_type: str = ""  # informational: compression is detected from the magic bytes


@dataclass
class FlattenStats:
    """What :func:`flatten` wrote."""

    entries: int = 0        # tar entries written (hardlinks included, root and PAX excluded)
    files: int = 0          # regular files written with content
    hardlinks: int = 0      # hardlink entries written
    bytes: int = 0          # file content bytes written
    unpacked_bytes: int = 0  # total size of the uncompressed layer tars
    tar_size: int = 0       # size of the output stream


# --------------------------------------------------------------------------------------------
# The tree
# --------------------------------------------------------------------------------------------
class _Dir:
    __slots__ = ("mode", "uid", "gid", "mtime", "xattrs", "children", "upper_layer", "upper")

    def __init__(self, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = 0,
                 xattrs: dict[bytes, bytes] | None = None):
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.xattrs = xattrs or {}
        self.children: dict[bytes, _Dir | _Inode] = {}
        self.upper_layer = -1
        self.upper: set[bytes] = set()

    def mark_upper(self, name: bytes, layer: int) -> None:
        """Record that ``layer`` wrote ``name`` here (or something below it)."""
        if self.upper_layer != layer:
            self.upper_layer = layer
            self.upper = set()
        self.upper.add(name)

    def is_upper(self, name: bytes, layer: int) -> bool:
        return self.upper_layer == layer and name in self.upper


class _Inode:
    """A non-directory. Hardlinked paths share one object."""

    __slots__ = ("type", "mode", "uid", "gid", "mtime", "xattrs", "linkname", "devmajor",
                 "devminor", "source", "offset", "size", "first")

    def __init__(self, e: TarEntry, type_: bytes, source: int):
        self.type = type_
        self.mode = 0o777 if type_ == tarutil.SYM else e.mode
        self.uid = e.uid
        self.gid = e.gid
        self.mtime = e.mtime
        self.xattrs = e.xattrs
        self.linkname = e.linkname if type_ == tarutil.SYM else b""
        self.devmajor = e.devmajor
        self.devminor = e.devminor
        self.source = source   # index of the layer file holding the data
        self.offset = e.offset
        self.size = e.size if type_ == tarutil.REG else 0
        self.first: bytes | None = None  # set while writing: the path written as the file


def clean_path(name: bytes) -> list[bytes]:
    """Components of ``name`` cleaned as if rooted at ``/`` (like Go's filepath.Clean)."""
    parts: list[bytes] = []
    for comp in name.split(b"/"):
        if comp == b"..":
            if parts:
                parts.pop()
        elif comp and comp != b".":
            parts.append(comp)
    return parts


class _Layer:
    """The context of the layer being applied, for errors."""

    def __init__(self, index: int, digest: str):
        self.index = index
        self.digest = digest

    def where(self, entry: bytes | None = None) -> str:
        text = f"layer {self.index} ({self.digest})"
        if entry is not None:
            text += f", entry {display(entry)!r}"
        return text


class _Tree:
    def __init__(self) -> None:
        self.root = _Dir()

    # ----- path resolution (securejoin, inside the root) ------------------------------------
    def resolve_dir(self, parts: list[bytes], create: bool, layer: _Layer, entry: bytes
                    ) -> list[tuple[_Dir, bytes]] | None:
        """Walk ``parts`` from the root, following symlinks inside the root. Returns the chain
        of (parent, name) steps that were taken to reach the final directory (empty for the
        root), or None when something is missing and ``create`` is false. Missing directories
        are created 0755 root:root when ``create`` is true."""
        todo = list(reversed(parts))
        chain: list[tuple[_Dir, bytes]] = []
        links = 0
        while todo:
            comp = todo.pop()
            if comp == b"..":
                if chain:
                    chain.pop()
                continue
            if not comp or comp == b".":
                continue
            cur = chain[-1][0].children[chain[-1][1]] if chain else self.root
            assert isinstance(cur, _Dir)
            node = cur.children.get(comp)
            if node is None:
                if not create:
                    return None
                node = cur.children[comp] = _Dir()
            elif isinstance(node, _Inode):
                if node.type != tarutil.SYM:
                    if not create:
                        return None
                    raise CmbuildError(
                        f"a parent of this entry, {display(comp)!r}, is not a directory",
                        where=layer.where(entry),
                        hint="the layer writes below a file; the image is malformed")
                links += 1
                if links > MAX_SYMLINKS:
                    raise CmbuildError("too many levels of symbolic links in the entry's path",
                                       where=layer.where(entry))
                if node.linkname.startswith(b"/"):
                    chain = []
                todo.extend(reversed(node.linkname.split(b"/")))
                continue
            chain.append((cur, comp))
        return chain

    def dir_of(self, chain: list[tuple[_Dir, bytes]]) -> _Dir:
        if not chain:
            return self.root
        parent, name = chain[-1]
        node = parent.children[name]
        assert isinstance(node, _Dir)
        return node

    # ----- applying entries ----------------------------------------------------------------
    def apply(self, e: TarEntry, layer: _Layer, source: int) -> None:
        parts = clean_path(e.name)
        if not parts:
            if e.type != tarutil.DIR:
                raise CmbuildError("refusing an entry that changes the type of the root directory",
                                   where=layer.where(e.name))
            return  # metadata of "./" is not kept: the root is not emitted
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parts, layer, e.name)
            return
        chain = self.resolve_dir(parts[:-1], True, layer, e.name)
        assert chain is not None
        parent = self.dir_of(chain)
        existing = parent.children.get(base)
        if e.type == tarutil.DIR:
            if isinstance(existing, _Dir):
                existing.mode, existing.uid, existing.gid = e.mode, e.uid, e.gid
                existing.mtime, existing.xattrs = e.mtime, e.xattrs
            else:
                parent.children[base] = _Dir(e.mode, e.uid, e.gid, e.mtime, e.xattrs)
        elif e.type == tarutil.LNK:
            if existing is not None:
                del parent.children[base]
            parent.children[base] = self.link_target(e, layer)
        elif e.type in REGULAR_TYPES:
            parent.children[base] = _Inode(e, tarutil.REG, source)
        elif e.type in NODE_TYPES:
            parent.children[base] = _Inode(e, e.type, source)
        else:
            raise CmbuildError(f"unsupported tar entry type {e.type!r}", where=layer.where(e.name),
                               hint="only files, directories, links, devices and fifos can be "
                                    "in a layer")
        for step_parent, step_name in chain:
            step_parent.mark_upper(step_name, layer.index)
        parent.mark_upper(base, layer.index)

    def link_target(self, e: TarEntry, layer: _Layer) -> _Inode:
        parts = clean_path(e.linkname)
        chain = self.resolve_dir(parts[:-1], False, layer, e.name) if parts else None
        target = self.dir_of(chain).children.get(parts[-1]) if chain is not None else None
        if target is None:
            raise CmbuildError(
                f"hardlink target {display(e.linkname)!r} does not exist",
                where=layer.where(e.name),
                hint="a hardlink must point to a file written earlier in this or a lower layer")
        if isinstance(target, _Dir):
            raise CmbuildError(f"hardlink to a directory ({display(e.linkname)!r})",
                               where=layer.where(e.name))
        return target

    def whiteout(self, parts: list[bytes], layer: _Layer, entry: bytes) -> None:
        base = parts[-1]
        opaque = base == OPAQUE
        name = base[len(WHITEOUT_PREFIX):]
        if not opaque and name.startswith(WHITEOUT_PREFIX):
            return  # AUFS metadata (.wh..wh.plnk, ...): not a whiteout
        if not opaque and name in (b"", b".", b".."):
            raise CmbuildError("invalid whiteout name", where=layer.where(entry))
        chain = self.resolve_dir(parts[:-1], False, layer, entry)
        if chain is None:
            return  # nothing there to hide
        parent = self.dir_of(chain)
        if opaque:
            todo = [(parent, child) for child in parent.children]
        elif name in parent.children:
            todo = [(parent, name)]
        else:
            return
        self.purge(todo, layer.index)

    @staticmethod
    def purge(todo: list[tuple[_Dir, bytes]], layer: int) -> None:
        """Remove what lower layers put at these paths, keeping what ``layer`` wrote."""
        while todo:
            parent, name = todo.pop()
            if parent.is_upper(name, layer):
                node = parent.children[name]
                if isinstance(node, _Dir):
                    todo.extend((node, child) for child in list(node.children))
            else:
                del parent.children[name]


# --------------------------------------------------------------------------------------------
# Decompression
# --------------------------------------------------------------------------------------------
class _Budget:
    """Total uncompressed bytes allowed over all layers."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def take(self, n: int, layer: _Layer) -> None:
        self.used += n
        if self.used > self.limit:
            raise CmbuildError(
                f"the image unpacks to more than {self.limit} bytes",
                where=layer.where(),
                hint="this may be a decompression bomb; raise max_unpacked_size if the image "
                     "really is this large")


def _sniff(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _scratch_name(layer: LayerInput, index: int) -> str:
    digest = layer.digest
    hexpart = digest.split(":", 1)[-1]
    if len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart):
        return f"{hexpart}.tar"
    return f"layer-{index}.tar"


def _gunzip(src: BinaryIO, dst: BinaryIO, budget: _Budget, layer: _Layer) -> None:
    d = zlib.decompressobj(31)
    members = 1
    while True:
        data = src.read(IN_CHUNK)
        if not data:
            break
        while data:
            out = d.decompress(data)
            data = b""
            if out:
                budget.take(len(out), layer)
                dst.write(out)
            if d.eof:
                rest = d.unused_data
                if not rest:
                    rest = src.read(IN_CHUNK)
                    if not rest:
                        return
                if rest[:2] != GZIP_MAGIC[:len(rest[:2])]:
                    raise CmbuildError(f"garbage after gzip member {members}",
                                       where=layer.where(), hint="the layer blob is corrupt")
                d = zlib.decompressobj(31)
                members += 1
                data = rest
    if not d.eof:
        raise CmbuildError("truncated gzip stream", where=layer.where(),
                           hint="the layer blob is incomplete; pull the image again")


def _check_zstd_frames(path: Path, layer: _Layer) -> None:
    """Walk the frame and block headers of a zstd stream, so that truncation and trailing
    garbage are reported as such (the streaming decoder stops silently on both)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            f.seek(pos)
            magic = f.read(4)
            if magic == ZSTD_MAGIC:
                pos = _zstd_frame_end(f, pos + 4, layer)
            elif len(magic) == 4 and (int.from_bytes(magic, "little") & ~0xF) == 0x184D2A50:
                length = f.read(4)
                if len(length) < 4:
                    pos = size + 1
                    break
                pos += 8 + int.from_bytes(length, "little")
            else:
                raise CmbuildError(f"garbage after zstd frame, at byte {pos}",
                                   where=layer.where(), hint="the layer blob is corrupt")
        if pos > size:
            raise CmbuildError("truncated zstd stream", where=layer.where(),
                               hint="the layer blob is incomplete; pull the image again")


def _zstd_frame_end(f: BinaryIO, pos: int, layer: _Layer) -> int:
    f.seek(pos)
    fhd = f.read(1)
    if not fhd:
        return pos + 1  # past the end: truncated
    desc = fhd[0]
    if desc & 0x08:
        raise CmbuildError("bad zstd frame header", where=layer.where())
    single = bool(desc & 0x20)
    fcs = (1 if single else 0, 2, 4, 8)[desc >> 6]
    did = (0, 1, 2, 4)[desc & 3]
    pos += 1 + (0 if single else 1) + did + fcs
    while True:
        f.seek(pos)
        head = f.read(3)
        if len(head) < 3:
            return pos + 3
        word = int.from_bytes(head, "little")
        block_type = (word >> 1) & 3
        if block_type == 3:
            raise CmbuildError("bad zstd block header", where=layer.where(),
                               hint="the layer blob is corrupt")
        pos += 3 + (1 if block_type == 1 else word >> 3)
        if word & 1:
            break
    return pos + (4 if desc & 0x04 else 0)


def _unzstd(src: BinaryIO, dst: BinaryIO, budget: _Budget, layer: _Layer) -> None:
    reader = zstandard.ZstdDecompressor().stream_reader(src, read_size=1 << 17,
                                                        read_across_frames=True, closefd=False)
    while True:
        out = reader.read(OUT_CHUNK)
        if not out:
            return
        budget.take(len(out), layer)
        dst.write(out)


def _layer_tar(layer: LayerInput, index: int, scratch: Path, budget: _Budget,
               done: dict[str, Path]) -> Path:
    """The uncompressed tar of a layer: the blob itself, or a file decompressed in scratch."""
    ctx = _Layer(index, layer.digest)
    try:
        magic = _sniff(layer.path)
    except OSError as e:
        raise CmbuildError(f"cannot read layer blob: {e.strerror}", where=ctx.where()) from None
    if not magic.startswith(GZIP_MAGIC) and magic != ZSTD_MAGIC:
        budget.take(layer.path.stat().st_size, ctx)
        return layer.path
    name = _scratch_name(layer, index)
    if name in done:  # the same layer twice in one image
        budget.take(done[name].stat().st_size, ctx)
        return done[name]
    out_path = scratch / name
    try:
        with open(layer.path, "rb") as src, open(out_path, "wb") as dst:
            if magic.startswith(GZIP_MAGIC):
                _gunzip(src, dst, budget, ctx)
            else:
                _check_zstd_frames(layer.path, ctx)
                _unzstd(src, dst, budget, ctx)
    except zlib.error as e:
        raise CmbuildError(f"corrupt gzip stream: {e}", where=ctx.where(),
                           hint="the layer blob is corrupt; pull the image again") from None
    except zstandard.ZstdError as e:
        raise CmbuildError(f"corrupt zstd stream: {e}", where=ctx.where(),
                           hint="the layer blob is corrupt; pull the image again") from None
    done[name] = out_path
    return out_path


# --------------------------------------------------------------------------------------------
# Reading layers and writing the result
# --------------------------------------------------------------------------------------------
def _apply_layer(tree: _Tree, fd: int, size: int, ctx: _Layer, source: int,
                 mtime_clamp: int | None) -> None:
    entry: bytes | None = None
    try:
        for e in tarutil.iter_tar(fd, size):
            entry = e.name
            e.mtime = max(0, e.mtime)
            if mtime_clamp is not None and e.mtime > mtime_clamp:
                e.mtime = mtime_clamp
            if e.uid < 0 or e.gid < 0:
                raise CmbuildError("negative uid or gid", where=ctx.where(e.name))
            tree.apply(e, ctx, source)
    except TarFormatError as e:
        name = e.entry
        raise CmbuildError(
            f"not a valid tar: {e}" + ("" if name is None else " (after or at this entry)"),
            where=ctx.where(name), hint="the layer blob is corrupt or truncated") from None
    except OSError as e:
        raise CmbuildError(f"cannot read layer: {e}", where=ctx.where(entry)) from None


def _walk(root: _Dir) -> Iterator[tuple[bytes, _Dir | _Inode]]:
    """Every path below the root in canonical order: depth first, children sorted by bytes."""
    stack: list[tuple[bytes, Iterator[bytes], _Dir]] = [(b"", iter(sorted(root.children)), root)]
    while stack:
        prefix, names, d = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        node = d.children[name]
        path = prefix + name
        yield path, node
        if isinstance(node, _Dir):
            stack.append((path + b"/", iter(sorted(node.children)), node))


def _emit(tree: _Tree, writer: tarutil.TarWriter, fds: list[int], stats: FlattenStats) -> None:
    header = tarutil.build_header
    for path, node in _walk(tree.root):
        stats.entries += 1
        if isinstance(node, _Dir):
            writer.header(header(path + b"/", tarutil.DIR, node.mode, node.uid, node.gid, 0,
                                 node.mtime, xattrs=node.xattrs))
            continue
        if node.first is not None:
            writer.header(header(path, tarutil.LNK, node.mode, node.uid, node.gid, 0,
                                 node.mtime, node.first))
            stats.hardlinks += 1
            continue
        node.first = path
        writer.header(header(path, node.type, node.mode, node.uid, node.gid, node.size,
                             node.mtime, node.linkname, node.devmajor, node.devminor,
                             node.xattrs))
        if node.type == tarutil.REG:
            writer.data_from(fds[node.source], node.offset, node.size)
            stats.files += 1
            stats.bytes += node.size


def flatten(layers: Sequence[LayerInput], out: BinaryIO, *, scratch: Path,
            max_unpacked_size: int = 8 << 30, mtime_clamp: int | None = 0) -> FlattenStats:
    """Write to ``out`` one canonical tar of the root file system the layers make.

    ``layers`` go bottom first. Compressed layers are decompressed into ``scratch`` (files named
    after the blob digest; the caller removes the directory). Raises :class:`CmbuildError`
    naming the layer (and entry) for malformed, hostile or over-large input
    (``max_unpacked_size`` bounds the sum of the uncompressed layer sizes). ``mtime_clamp``:
    every mtime becomes ``min(mtime, mtime_clamp)``; None keeps them.
    """
    stats = FlattenStats()
    budget = _Budget(max_unpacked_size)
    tree = _Tree()
    fds: list[int] = []
    done: dict[str, Path] = {}
    try:
        for index, layer in enumerate(layers):
            tar_path = _layer_tar(layer, index, scratch, budget, done)
            fd = os.open(tar_path, os.O_RDONLY)
            fds.append(fd)
            _apply_layer(tree, fd, os.fstat(fd).st_size, _Layer(index, layer.digest), index,
                         mtime_clamp)
        writer = tarutil.TarWriter(out)
        _emit(tree, writer, fds, stats)
        writer.finish()
        stats.tar_size = writer.written
    finally:
        for fd in fds:
            os.close(fd)
    stats.unpacked_bytes = budget.used
    return stats
