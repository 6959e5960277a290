"""``docker save`` tarballs, read in place (nothing is extracted to disk).

Two forms exist:

* Docker 25 and later write an OCI image layout inside the tar (``oci-layout``, ``index.json``,
  ``blobs/sha256/...``) next to a legacy ``manifest.json``: read as an OCI layout.
* Older Docker writes only ``manifest.json``: ``[{"Config": "<hex>.json", "RepoTags": [...],
  "Layers": ["<id>/layer.tar", ...]}]`` with uncompressed layers named by path. Their digests are
  computed while they are stored (and must equal the config's diff_ids), and an OCI manifest is
  made for them so that the image record has the same shape as for any other source.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tarfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from ..errors import CmbuildError
from ..store import Store, sha256_bytes
from .blobs import copy_verified, read_bounded
from .image import (OCI_CONFIG, OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST,
                    Descriptor, Platform, check_config, parse_json)
from .layout import names_match, safe_relpath

_MAX_LINKS = 8


class TarFiles:
    """The regular files of a tar (symlinks and hard links followed, within the tar)."""

    def __init__(self, path: Path):
        self.label = str(path)
        try:
            self.tar = tarfile.open(path, "r:*")
            members = self.tar.getmembers()
        except (OSError, tarfile.TarError) as e:
            raise CmbuildError(f"cannot read the tarball: {e}", where=self.label) from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for m in members:
            try:
                self.members[safe_relpath(m.name, self.label)] = m
            except CmbuildError:
                continue  # a hostile name: never used

    def close(self) -> None:
        self.tar.close()

    def _resolve(self, rel: str) -> tarfile.TarInfo | None:
        name = safe_relpath(rel, self.label)
        for _ in range(_MAX_LINKS):
            m = self.members.get(name)
            if m is None or m.isreg():
                return m
            if m.issym():
                name = safe_relpath(posixpath.join(posixpath.dirname(name), m.linkname),
                                    self.label)
            elif m.islnk():
                name = safe_relpath(m.linkname, self.label)
            else:
                return None
        return None

    def exists(self, rel: str) -> bool:
        return self._resolve(rel) is not None

    @contextlib.contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        m = self._resolve(rel)
        f = self.tar.extractfile(m) if m is not None else None
        if f is None:
            raise CmbuildError(f"the tarball has no file {rel}", where=self.label)
        with f:
            yield f


def is_oci_tar(files: TarFiles) -> bool:
    return files.exists("oci-layout") and files.exists("index.json")


def _sniff_layer_type(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return OCI_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return OCI_LAYER_ZSTD
    return OCI_LAYER


def _digest_from_path(rel: str) -> str | None:
    """``blobs/sha256/<hex>`` or ``<hex>.json`` name their digest."""
    parts = rel.split("/")
    if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256" and len(parts[2]) == 64:
        return "sha256:" + parts[2]
    if len(parts) == 1 and parts[0].endswith(".json") and len(parts[0]) == 69:
        return "sha256:" + parts[0][:64]
    return None


def _select_entry(entries: list[Any], ref: str | None, digest: str | None,
                  where: str) -> dict[str, Any]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CmbuildError("manifest.json must be a list of objects", where=where)
    chosen = entries
    if digest:
        chosen = [e for e in chosen if _digest_from_path(str(e.get("Config", ""))) == digest]
        if not chosen:
            raise CmbuildError(f"no image with id {digest} in the tarball", where=where)
    if ref:
        chosen = [e for e in chosen
                  if any(names_match(ref, t) for t in e.get("RepoTags") or [])]
        if not chosen:
            tags = [t for e in entries for t in e.get("RepoTags") or []]
            raise CmbuildError(f"no image tagged {ref!r} in the tarball (it has: "
                               f"{', '.join(tags) or 'no tags'})", where=where)
    if len(chosen) != 1:
        raise CmbuildError(f"the tarball holds {len(chosen)} images: say which one with a ref",
                           where=where)
    return chosen[0]


def pull_legacy(store: Store, files: TarFiles, ref: str | None, digest: str | None,
                want: Platform) -> tuple[str, str, list[Descriptor], list[str]]:
    """Store a legacy docker-save image. Returns (manifest digest, config digest, layers,
    diff_ids); the manifest is an OCI manifest made here and stored like any other."""
    where = f"{files.label}/manifest.json"
    with files.open("manifest.json") as f:
        try:
            entries = json.loads(read_bounded(f, where))
        except ValueError as e:
            raise CmbuildError(f"manifest.json is not valid JSON: {e}", where=where) from None
    entry = _select_entry(entries, ref, digest, where)
    config_rel = entry.get("Config")
    layers_rel = entry.get("Layers")
    if not isinstance(config_rel, str) or not isinstance(layers_rel, list):
        raise CmbuildError("an entry needs Config and Layers", where=where)
    config_where = f"{files.label}/{config_rel}"
    with files.open(config_rel) as f:
        config_bytes = read_bounded(f, config_where)
    config_digest = sha256_bytes(config_bytes)
    named = _digest_from_path(config_rel)
    if named is not None and named != config_digest:
        raise CmbuildError(f"blob {named} does not match its digest (its bytes hash to "
                           f"{config_digest})", where=config_where)
    config = parse_json(config_bytes, config_where)
    diff_ids = check_config(config, want, len(layers_rel), config_where)
    if not store.has(config_digest):
        with store.writer(expect=config_digest) as w:
            w.write(config_bytes)

    layers: list[Descriptor] = []
    for i, rel in enumerate(layers_rel):
        layer_where = f"{files.label}/{rel}"
        if not isinstance(rel, str):
            raise CmbuildError(f"Layers[{i}] is not a path", where=where)
        expect = _digest_from_path(rel)
        if expect is None and store.has(diff_ids[i]):
            expect = diff_ids[i]  # an uncompressed layer is named by its diff_id
        if expect is not None and store.has(expect):
            with open(store.object_path(expect), "rb") as f:
                media = _sniff_layer_type(f.read(4))
            size = store.object_path(expect).stat().st_size
            layers.append(Descriptor(media, expect, size))
            continue
        with files.open(rel) as f:
            media = _sniff_layer_type(f.read(4))
        if expect is None and media == OCI_LAYER:
            expect = diff_ids[i]  # uncompressed: its digest must be the config's diff_id
        with files.open(rel) as f:
            got, size = copy_verified(store, f, expect, None, layer_where)
        layers.append(Descriptor(media, got, size))

    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [d.to_layer_json() for d in layers],
    }
    return store.add_json(manifest), config_digest, layers, diff_ids
