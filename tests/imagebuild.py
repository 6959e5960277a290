"""Small helpers that write container images by hand, the way the real tools lay them out:
OCI image layouts, and docker save tarballs in both the legacy and the OCI form."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {None: "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, indent=2).encode()


def layer_tar(files: dict[str, bytes]) -> bytes:
    """A deterministic uncompressed tar holding ``files``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, how: str | None) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@dataclass
class Layer:
    blob: bytes
    diff_id: str
    media_type: str

    @property
    def digest(self) -> str:
        return sha(self.blob)


def make_layer(files: dict[str, bytes], how: str | None = "gzip") -> Layer:
    raw = layer_tar(files)
    return Layer(compress(raw, how), sha(raw), LAYER_TYPES[how])


def config_json(arch: str, layers: list[Layer], os_: str = "linux",
                variant: str | None = None) -> bytes:
    doc: dict[str, Any] = {"architecture": arch, "os": os_,
                           "config": {"Cmd": ["/bin/hello"]},
                           "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]}}
    if variant:
        doc["variant"] = variant
    return dumps(doc)


@dataclass
class Image:
    """An image's blobs: its manifest, config and layers."""

    manifest: bytes
    config: bytes
    layers: list[Layer]
    platform: dict[str, str]

    @property
    def digest(self) -> str:
        return sha(self.manifest)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": OCI_MANIFEST, "digest": self.digest, "size": len(self.manifest),
                "platform": self.platform}

    def blobs(self) -> dict[str, bytes]:
        out = {sha(self.manifest): self.manifest, sha(self.config): self.config}
        out.update({x.digest: x.blob for x in self.layers})
        return out


def make_image(layers: list[Layer], arch: str = "riscv64", variant: str | None = None,
               config_arch: str | None = None) -> Image:
    config = config_json(config_arch or arch, layers, variant=variant)
    manifest = dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": len(x.blob)}
                   for x in layers]})
    platform = {"architecture": arch, "os": "linux"}
    if variant:
        platform["variant"] = variant
    return Image(manifest, config, layers, platform)


def make_index(images: list[Image], extra: list[dict[str, Any]] | None = None) -> bytes:
    return dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                  "manifests": [i.descriptor() for i in images] + (extra or [])})


@dataclass
class Layout:
    """An OCI image layout being written to ``root``."""

    root: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.write_index()

    def add_blob(self, data: bytes) -> str:
        digest = sha(data)
        (self.root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
        return digest

    def add_image(self, image: Image, tag: str | None = None) -> str:
        for data in image.blobs().values():
            self.add_blob(data)
        desc = image.descriptor()
        del desc["platform"]
        self._entry(desc, tag)
        return image.digest

    def add_index(self, images: list[Image], tag: str | None = None,
                  extra: list[dict[str, Any]] | None = None) -> str:
        for image in images:
            for data in image.blobs().values():
                self.add_blob(data)
        index = make_index(images, extra)
        self._entry({"mediaType": OCI_INDEX, "digest": self.add_blob(index),
                     "size": len(index)}, tag)
        return sha(index)

    def _entry(self, desc: dict[str, Any], tag: str | None) -> None:
        if tag:
            desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
        self.entries.append(desc)
        self.write_index()

    def write_index(self) -> None:
        (self.root / "index.json").write_bytes(dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}))


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
    tar.addfile(info, io.BytesIO(data))


def docker_save_legacy(path: Path, image: Image, repo_tag: str) -> None:
    """A tarball as ``docker save`` wrote it before Docker 25: ``manifest.json``, the config
    as ``<hex>.json`` and each (uncompressed) layer as ``<id>/layer.tar``."""
    config_name = sha(image.config)[7:] + ".json"
    layer_paths = []
    first_path: dict[str, str] = {}
    with tarfile.open(path, "w") as tar:
        parent = ""
        for i, layer in enumerate(image.layers):
            layer_id = hashlib.sha256(f"{parent}{layer.diff_id}".encode()).hexdigest()
            dir_info = tarfile.TarInfo(layer_id)
            dir_info.type, dir_info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(dir_info)
            _tar_add(tar, f"{layer_id}/VERSION", b"1.0")
            _tar_add(tar, f"{layer_id}/json", dumps({"id": layer_id, "parent": parent or None}))
            if layer.diff_id in first_path:  # Docker links a repeated layer to the first
                link = tarfile.TarInfo(f"{layer_id}/layer.tar")
                link.type, link.linkname = tarfile.SYMTYPE, f"../{first_path[layer.diff_id]}"
                tar.addfile(link)
            else:
                _tar_add(tar, f"{layer_id}/layer.tar", layer.blob)
                first_path[layer.diff_id] = f"{layer_id}/layer.tar"
            layer_paths.append(f"{layer_id}/layer.tar")
            parent = layer_id
        _tar_add(tar, config_name, image.config)
        name, tag = repo_tag.rsplit(":", 1)
        _tar_add(tar, "repositories", dumps({name: {tag: parent}}))
        _tar_add(tar, "manifest.json", json.dumps(
            [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_paths}]).encode())


def docker_save_oci(path: Path, image: Image, repo_tag: str) -> None:
    """A tarball as ``docker save`` writes it since Docker 25: an OCI layout (``oci-layout``,
    ``index.json``, ``blobs/sha256/``) plus the legacy ``manifest.json`` and ``repositories``."""
    name, tag = repo_tag.rsplit(":", 1)
    full = repo_tag if "/" in name else f"docker.io/library/{repo_tag}"
    with tarfile.open(path, "w") as tar:
        for digest, data in sorted(image.blobs().items()):
            _tar_add(tar, f"blobs/sha256/{digest[7:]}", data)
        _tar_add(tar, "index.json", dumps({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": image.digest,
                           "size": len(image.manifest),
                           "annotations": {"io.containerd.image.name": full,
                                           "org.opencontainers.image.ref.name": tag}}]}))
        _tar_add(tar, "manifest.json", json.dumps([{
            "Config": f"blobs/sha256/{sha(image.config)[7:]}", "RepoTags": [repo_tag],
            "Layers": [f"blobs/sha256/{x.digest[7:]}" for x in image.layers]}]).encode())
        _tar_add(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        _tar_add(tar, "repositories", dumps({name: {tag: image.digest[7:]}}))
