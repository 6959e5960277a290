"""Putting verified blobs into the store: every byte is hashed on its way in, and a blob that
does not match its digest is refused with nothing stored."""

from __future__ import annotations

from typing import BinaryIO, Callable, Protocol

from ..errors import CmbuildError
from ..store import CHUNK, Store, sha256_bytes
from .image import MAX_DOCUMENT, Descriptor


class BlobSink(Protocol):
    """Something that sees a blob's bytes, in order, while they go into the store (the unpack
    stage's inflater, see :class:`cmbuild.oci.flatten.LayerInflater`)."""

    def write(self, data: bytes) -> None:
        ...

    def close(self, verified: bool) -> None:
        """The blob ended: stored and verified, or not."""
        ...


SinkFor = Callable[[Descriptor], "BlobSink | None"]
"""The sink of a layer, if it has one."""


def verify_bytes(data: bytes, digest: str, size: int | None, where: str) -> None:
    got = sha256_bytes(data)
    if got != digest:
        raise CmbuildError(f"blob {digest} does not match its digest (its bytes hash to {got})",
                           where=where, hint="the source is corrupt or was altered")
    if size is not None and len(data) != size:
        raise CmbuildError(f"blob {digest} has {len(data)} bytes, its descriptor says {size}",
                           where=where)


def store_document(store: Store, data: bytes, digest: str, where: str) -> None:
    """Store a manifest, index or config whose bytes were already verified."""
    if store.has(digest):
        return
    with store.writer(expect=digest) as w:
        w.write(data)


def read_bounded(stream: BinaryIO, where: str, limit: int = MAX_DOCUMENT) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise CmbuildError(f"document larger than {limit} bytes", where=where)
    return data


def copy_verified(store: Store, stream: BinaryIO, digest: str | None, size: int | None,
                  where: str, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy ``stream`` into the store, checking it against ``digest`` (when known) and
    ``size``. Returns (digest, size). On any mismatch nothing is stored."""
    with store.writer() as w:
        while chunk := stream.read(CHUNK):
            w.write(chunk)
            if size is not None and w.size > size:
                raise CmbuildError(f"blob {digest} is longer than the {size} bytes its "
                                   "descriptor says", where=where)
            if progress:
                progress(len(chunk))
        if digest is not None and w.digest != digest:
            raise CmbuildError(f"blob {digest} does not match its digest (its bytes hash to "
                               f"{w.digest})", where=where,
                               hint="the source is corrupt or was altered")
        if size is not None and w.size != size:
            raise CmbuildError(f"blob {digest} has {w.size} bytes, its descriptor says {size}",
                               where=where)
    return w.digest, w.size
