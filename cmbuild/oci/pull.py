"""The ``pull`` stage's engine: from an image source to an image record in the store.

Sources: an OCI image layout directory, a ``docker save`` tarball (either form), or a
registry. Every blob (index, manifest, config, layers) is stored as its own object under its
own digest, verified on the way in; a blob already in the store is not read again.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

from ..errors import CmbuildError
from ..store import Store, check_digest
from .blobs import SinkFor, store_document
from .dockersave import TarFiles, is_oci_tar, pull_legacy
from .image import (Descriptor, Platform, check_config, document_kind, image_record,
                    index_descriptors, parse_json, parse_manifest, parse_platform,
                    select_platform)
from .layout import DirFiles, LayoutSource
from .reference import Reference, parse_reference
from .registry import RegistryClient

_MAX_NESTING = 4


class ImageSource(Protocol):
    where: str

    def top(self) -> tuple[bytes, str | None, str]:
        """(bytes, media type if known, digest) of the selected index or manifest."""
        ...

    def document(self, desc: Descriptor) -> bytes:
        """The verified bytes of a manifest, index or config."""
        ...

    def fetch_blobs(self, store: Store, descs: list[Descriptor], progress: bool,
                    sink: SinkFor | None = None) -> None:
        """Store the layers the store lacks, verified (a source may show each one's bytes to
        ``sink(desc)`` on the way)."""
        ...


class RegistrySource:
    def __init__(self, client: RegistryClient, ref: Reference):
        self.client = client
        self.ref = ref
        self.where = f"{ref.display_registry}/{ref.repository}"
        self.pinned = ref.digest  # a pinned image already in the store needs no request

    def top(self) -> tuple[bytes, str | None, str]:
        return self.client.get_manifest(self.ref.repository, self.ref.reference)

    def document(self, desc: Descriptor) -> bytes:
        if desc.media_type in ("", None) or "manifest" in desc.media_type \
                or "index" in desc.media_type:
            data, _media, _digest = self.client.get_manifest(self.ref.repository, desc.digest)
            return data
        return self.client.get_blob_bytes(self.ref.repository, desc)

    def fetch_blobs(self, store: Store, descs: list[Descriptor], progress: bool,
                    sink: SinkFor | None = None) -> None:
        self.client.fetch_blobs(store, self.ref.repository, descs, progress, sink=sink)


def _document(store: Store, source: ImageSource, desc: Descriptor) -> bytes:
    """A document by digest: from the store when it is there (objects are named by their
    content), else from the source (which verifies it)."""
    if store.has(desc.digest):
        return store.object_path(desc.digest).read_bytes()
    return source.document(desc)


def resolve_image(store: Store, source: ImageSource, want: Platform, progress: bool,
                  sink: SinkFor | None = None) -> tuple[str | None, str, str, list[Descriptor], list[str], str]:
    """Walk index -> manifest -> config -> layers, storing each. Returns (index digest or
    None, manifest digest, config digest, layers, diff_ids, top digest)."""
    pinned = getattr(source, "pinned", None)
    if pinned and store.has(pinned):
        data, media, digest = store.object_path(pinned).read_bytes(), None, pinned
    else:
        data, media, digest = source.top()
    top_digest = digest
    index_digest: str | None = None
    for _ in range(_MAX_NESTING):
        where = f"{source.where}@{digest}"
        doc = parse_json(data, f"the document {digest}")
        kind = document_kind(doc, media)
        store_document(store, data, digest, where)
        if kind == "manifest":
            break
        index_digest = index_digest or digest
        desc = select_platform(index_descriptors(doc, where), want, where)
        data, media, digest = _document(store, source, desc), desc.media_type, desc.digest
    else:
        raise CmbuildError("image indexes nested too deeply", where=source.where)
    manifest = parse_manifest(doc, where)
    config_bytes = _document(store, source, manifest.config)
    config_where = f"{source.where} config {manifest.config.digest}"
    diff_ids = check_config(parse_json(config_bytes, config_where), want,
                            len(manifest.layers), config_where)
    store_document(store, config_bytes, manifest.config.digest, config_where)
    source.fetch_blobs(store, manifest.layers, progress, sink)
    return index_digest, digest, manifest.config.digest, manifest.layers, diff_ids, top_digest


def _pull_layout(store: Store, source: LayoutSource, want: Platform, platform: str,
                 progress: bool) -> dict:
    index, manifest, config, layers, diff_ids, top = resolve_image(store, source, want, progress)
    return image_record(platform, index, manifest, config, layers, diff_ids,
                        source.ref, source.digest or top)


def _pull_path(store: Store, path: Path, ref: str | None, digest: str | None,
               want: Platform, platform: str, progress: bool) -> dict:
    """An OCI layout directory, or a docker save tarball in either form."""
    if path.is_dir():
        return _pull_layout(store, LayoutSource(DirFiles(path), ref, digest), want, platform,
                            progress)
    if not path.is_file():
        raise CmbuildError("no such file or directory", where=str(path),
                           hint="give an OCI layout directory or a docker save tarball")
    files = TarFiles(path)
    try:
        if is_oci_tar(files):
            return _pull_layout(store, LayoutSource(files, ref, digest), want, platform,
                                progress)
        if not files.exists("manifest.json"):
            raise CmbuildError("neither an OCI image layout nor a docker save tarball "
                               "(no index.json, no manifest.json)", where=str(path))
        manifest, config, layers, diff_ids = pull_legacy(store, files, ref, digest, want)
        return image_record(platform, None, manifest, config, layers, diff_ids,
                            ref, digest or manifest)
    finally:
        files.close()


def pull(store: Store, *, ref: str | None, digest: str | None, path: Path | None,
         platform: str = "linux/riscv64", insecure: bool = False,
         allow_unpinned: bool = False, progress: bool = True, sink: SinkFor | None = None) -> str:
    """Fetch an image into the store and return the digest of its image record::

        {"schemaVersion": 1, "platform": ..., "index": digest | None, "manifest": digest,
         "config": digest, "layers": [{"digest", "mediaType", "size"}], "diff_ids": [...],
         "source": {"ref": ..., "digest": ...}}

    With ``path``: an OCI layout directory or a docker save tarball; ``ref`` picks the image
    inside by name (``org.opencontainers.image.ref.name``, ``io.containerd.image.name`` or a
    legacy ``RepoTags`` entry) and ``digest`` by digest (for a legacy docker save tarball:
    the image ID, i.e. the config digest). Otherwise ``ref`` names a registry image;
    ``digest`` pins it (an index or manifest digest). A ref without a digest is refused
    unless ``allow_unpinned``; then the digest used is said on stderr. ``sink``: see
    :meth:`ImageSource.fetch_blobs` (a registry shows it the layers it downloads).
    """
    want = parse_platform(platform)
    if digest is not None:
        check_digest(digest, "image digest")
    if path is not None:
        record = _pull_path(store, Path(path), ref, digest, want, platform, progress)
        return store.add_json(record)
    if not ref:
        raise CmbuildError("no image to pull: give an image ref (and digest) or a path",
                           where="[image]")
    parsed = parse_reference(ref)
    if parsed.digest and digest and parsed.digest != digest:
        raise CmbuildError(f"the ref names {parsed.digest} but the digest is {digest}",
                           where="[image]")
    digest = digest or parsed.digest
    if digest is None and not allow_unpinned:
        raise CmbuildError(f"the image {ref} is not pinned to a digest", where="[image]",
                           hint="run `cmbuild pin` to record its current digest, or allow "
                                "unpinned images")
    pinned = Reference(parsed.registry, parsed.repository, parsed.tag, digest)
    source = RegistrySource(RegistryClient(parsed.registry, insecure), pinned)
    index, manifest, config, layers, diff_ids, top = resolve_image(store, source, want, progress, sink)
    if digest is None:
        print(f"cmbuild: warning: {parsed} is not pinned; using {top}", file=sys.stderr)
    source_ref = str(Reference(parsed.registry, parsed.repository, parsed.tag, None)) \
        if parsed.tag else parsed.name
    record = image_record(platform, index, manifest, config, layers, diff_ids,
                          source_ref, digest or top)
    return store.add_json(record)


def resolve_digest(ref: str, platform: str = "linux/riscv64", insecure: bool = False) -> str:
    """The digest a tag points to now (an index or a manifest), after checking that it holds
    an image for ``platform``: the value to pin in ``cartesi.toml``."""
    want = parse_platform(platform)
    parsed = parse_reference(ref)
    client = RegistryClient(parsed.registry, insecure)
    data, media, digest = client.get_manifest(parsed.repository, parsed.reference)
    where = f"{parsed}"
    doc = parse_json(data, where)
    if document_kind(doc, media) == "index":
        desc = select_platform(index_descriptors(doc, where), want, where)
        data, _m, _d = client.get_manifest(parsed.repository, desc.digest)
        doc = parse_json(data, where)
    manifest = parse_manifest(doc, where)
    config = parse_json(client.get_blob_bytes(parsed.repository, manifest.config), where)
    check_config(config, want, len(manifest.layers), f"{where} config")
    return digest
