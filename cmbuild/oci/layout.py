"""OCI image layouts (``oci-layout`` + ``index.json`` + ``blobs/``), in a directory or inside
a tarball (``docker save`` since Docker 25, ``skopeo copy ... oci-archive:``).

The layout is read through a tiny :class:`Files` interface, so the same code reads a directory
and a tar stream without extracting anything to disk.
"""

from __future__ import annotations

import contextlib
import posixpath
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from ..errors import CmbuildError
from ..store import Store, check_digest
from .blobs import SinkFor, copy_verified, read_bounded, verify_bytes
from .image import CONTAINERD_NAME, REF_NAME, Descriptor, index_descriptors, parse_json
from .reference import parse_reference


class Files(Protocol):
    """Read-only access to named files (a directory or the members of a tar)."""

    label: str

    def exists(self, rel: str) -> bool: ...

    def open(self, rel: str) -> contextlib.AbstractContextManager[BinaryIO]: ...


def safe_relpath(rel: str, where: str) -> str:
    """Normalise a path inside an image source, refusing absolute paths and ``..``."""
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or norm == ".." or norm.startswith("../"):
        raise CmbuildError(f"path {rel!r} leaves the image source", where=where)
    return norm


class DirFiles:
    def __init__(self, root: Path):
        self.root = root
        self.label = str(root)

    def exists(self, rel: str) -> bool:
        return (self.root / safe_relpath(rel, self.label)).is_file()

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        path = self.root / safe_relpath(rel, self.label)
        try:
            f = open(path, "rb")
        except OSError as e:
            raise CmbuildError(f"cannot read {rel}: {e.strerror}", where=self.label) from None
        with f:
            yield f


def blob_path(digest: str) -> str:
    return "blobs/sha256/" + check_digest(digest)


def names_match(wanted: str, name: str | None) -> bool:
    """Does an annotation name the wanted ref (literally, or as the same normalised ref)?"""
    if not name:
        return False
    if wanted == name:
        return True
    try:
        return str(parse_reference(wanted)) == str(parse_reference(name))
    except CmbuildError:
        return False


class LayoutSource:
    """An OCI image layout as an image source for :func:`cmbuild.oci.pull.resolve_image`."""

    def __init__(self, files: Files, ref: str | None, digest: str | None):
        self.files = files
        self.ref = ref
        self.digest = digest
        self.where = files.label

    def _index(self) -> dict:
        if not self.files.exists("oci-layout"):
            raise CmbuildError("not an OCI image layout (no oci-layout file)", where=self.where)
        with self.files.open("index.json") as f:
            return parse_json(read_bounded(f, self.where), f"{self.where}/index.json")

    def _select(self) -> Descriptor:
        descs = index_descriptors(self._index(), f"{self.where}/index.json")
        chosen = descs
        if self.digest:
            chosen = [d for d in chosen if d.digest == self.digest]
            if not chosen:
                if self.files.exists(blob_path(self.digest)):
                    return Descriptor("", self.digest, -1)
                raise CmbuildError(f"the layout has no image {self.digest}", where=self.where)
        if self.ref:
            by_ref = [d for d in chosen
                      if names_match(self.ref, (d.annotations or {}).get(REF_NAME))
                      or names_match(self.ref, (d.annotations or {}).get(CONTAINERD_NAME))]
            if not by_ref:
                raise CmbuildError(f"the layout has no image named {self.ref!r} (it has: "
                                   f"{', '.join(self._names(descs)) or 'no names'})",
                                   where=self.where)
            chosen = by_ref
        if len({d.digest for d in chosen}) > 1:
            raise CmbuildError(f"the layout holds {len(chosen)} images: say which one with a "
                               f"ref ({', '.join(self._names(descs))}) or a digest",
                               where=self.where)
        if not chosen:
            raise CmbuildError("the layout's index.json lists no image", where=self.where)
        return chosen[0]

    @staticmethod
    def _names(descs: list[Descriptor]) -> list[str]:
        return [n for d in descs for n in [(d.annotations or {}).get(REF_NAME)] if n]

    def top(self) -> tuple[bytes, str | None, str]:
        desc = self._select()
        data = self.document(desc)
        return data, desc.media_type or None, desc.digest

    def document(self, desc: Descriptor) -> bytes:
        where = f"{self.where}/{blob_path(desc.digest)}"
        if not self.files.exists(blob_path(desc.digest)):
            raise CmbuildError(f"blob {desc.digest} is missing from the layout", where=self.where)
        with self.files.open(blob_path(desc.digest)) as f:
            data = read_bounded(f, where)
        verify_bytes(data, desc.digest, desc.size if desc.size >= 0 else None, where)
        return data

    def fetch_blobs(self, store: Store, descs: list[Descriptor], progress: bool,
                    sink: SinkFor | None = None) -> None:
        # ``sink`` is not used: a local copy is quick, and the unpack stage decompresses
        # the layers side by side
        for d in descs:
            if store.has(d.digest):
                continue
            if not self.files.exists(blob_path(d.digest)):
                raise CmbuildError(f"layer {d.digest} is missing from the layout",
                                   where=self.where)
            with self.files.open(blob_path(d.digest)) as f:
                copy_verified(store, f, d.digest, d.size,
                              f"{self.where}/{blob_path(d.digest)}")

