"""OCI and Docker image documents: media types, index and manifest parsing, platform selection.

Pure functions over bytes and dicts; where the bytes come from (a registry, a layout directory,
a ``docker save`` tarball) is the business of the other modules of ``cmbuild.oci``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import CmbuildError
from ..store import check_digest

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
OCI_LAYER_ZSTD = OCI_LAYER + "+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_TYPES = (
    OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
#: What a client accepts when it asks a registry for a manifest.
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
DOCKER_REFERENCE_TYPE = "vnd.docker.reference.type"

#: Upper bound for a manifest, an index or a config read into memory.
MAX_DOCUMENT = 8 << 20


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None

    def to_layer_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "mediaType": self.media_type, "size": self.size}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise CmbuildError(f"a platform is os/arch[/variant], got {text!r}",
                           hint='for a Cartesi Machine use "linux/riscv64"')
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def _default_variant(arch: str, variant: str | None) -> str | None:
    if arch == "arm64" and variant in (None, "", "v8"):
        return None
    return variant or None


def platform_matches(want: Platform, os_: str | None, arch: str | None,
                     variant: str | None) -> bool:
    """True when an image's os/arch/variant satisfies ``want``. A wanted variant must be
    equal (``arm64`` and ``arm64/v8`` are the same); no wanted variant accepts any."""
    if os_ != want.os or arch != want.architecture:
        return False
    if want.variant is None:
        return True
    return _default_variant(arch, variant) == _default_variant(arch, want.variant)


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CmbuildError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CmbuildError(f"{what} is not a JSON object")
    return doc


def parse_descriptor(d: Any, where: str) -> Descriptor:
    if not isinstance(d, dict):
        raise CmbuildError("a descriptor must be an object", where=where)
    digest = d.get("digest")
    check_digest(digest, where)
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CmbuildError(f"descriptor size must be a non-negative integer, got {size!r}",
                           where=where)
    media = d.get("mediaType")
    if not isinstance(media, str):
        raise CmbuildError("descriptor has no mediaType", where=where)
    platform = d.get("platform") if isinstance(d.get("platform"), dict) else None
    ann = d.get("annotations") if isinstance(d.get("annotations"), dict) else None
    return Descriptor(media, digest, size, platform, ann)


def document_kind(doc: dict[str, Any], media_type: str | None = None) -> str:
    """``"index"`` or ``"manifest"`` for a parsed document (from its mediaType, the
    ``Content-Type`` it came with, or its shape)."""
    media = doc.get("mediaType") or media_type or ""
    if media in INDEX_TYPES:
        return "index"
    if media in MANIFEST_TYPES:
        return "manifest"
    if media in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise CmbuildError("Docker image manifest schema 1 is not supported",
                           hint="push the image again with a current client (schema 2 or OCI)")
    if "manifests" in doc:
        return "index"
    if "config" in doc and "layers" in doc:
        return "manifest"
    raise CmbuildError(f"unsupported manifest media type {media!r}")


def index_descriptors(doc: dict[str, Any], where: str) -> list[Descriptor]:
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise CmbuildError("an image index must have a list of manifests", where=where)
    return [parse_descriptor(m, f"{where} manifests[{i}]") for i, m in enumerate(manifests)]


def is_attestation(d: Descriptor) -> bool:
    ann = d.annotations or {}
    if ann.get(DOCKER_REFERENCE_TYPE) == "attestation-manifest":
        return True
    p = d.platform or {}
    return p.get("os") == "unknown" and p.get("architecture") == "unknown"


def select_platform(descs: list[Descriptor], want: Platform, where: str) -> Descriptor:
    """The manifest for ``want`` among an index's entries (attestations skipped). Among
    several matches, one without a variant (or with the exact wanted variant) comes first."""
    candidates = [d for d in descs if not is_attestation(d) and d.platform is not None
                  and platform_matches(want, d.platform.get("os"),
                                       d.platform.get("architecture"),
                                       d.platform.get("variant"))]
    if not candidates:
        have = sorted({_platform_text(d.platform) for d in descs
                       if d.platform and not is_attestation(d)})
        raise CmbuildError(
            f"the image has no {want} manifest (it has: {', '.join(have) or 'none'})",
            where=where,
            hint=f"build the image for {want} (e.g. docker buildx build --platform {want})")
    exact = [d for d in candidates if (d.platform or {}).get("variant") in (None, "", want.variant)]
    return (exact or candidates)[0]


def _platform_text(p: dict[str, Any] | None) -> str:
    p = p or {}
    return "/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: list[Descriptor]


def parse_manifest(doc: dict[str, Any], where: str) -> Manifest:
    config = parse_descriptor(doc.get("config"), f"{where} config")
    if config.media_type not in CONFIG_TYPES:
        raise CmbuildError(f"unsupported config media type {config.media_type!r} "
                           "(this is not a container image)", where=where)
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise CmbuildError("a manifest must have a list of layers", where=where)
    layers = [parse_descriptor(x, f"{where} layers[{i}]") for i, x in enumerate(layers_raw)]
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise CmbuildError(f"unsupported layer media type {layer.media_type!r}",
                               where=f"{where} layers[{i}]")
    return Manifest(config, layers)


def check_config(config: dict[str, Any], want: Platform, n_layers: int, where: str) -> list[str]:
    """Check the image config's os/architecture against ``want`` and return its diff_ids."""
    os_, arch = config.get("os"), config.get("architecture")
    if not platform_matches(want, os_, arch, config.get("variant")):
        have = "/".join(str(x) for x in (os_, arch, config.get("variant")) if x)
        raise CmbuildError(f"the image is for {have or 'an unknown platform'}, not {want}",
                           where=where,
                           hint=f"use an image built for {want}")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise CmbuildError("the image config has no rootfs.diff_ids", where=where)
    for i, d in enumerate(diff_ids):
        check_digest(d, f"{where} rootfs.diff_ids[{i}]")
    if len(diff_ids) != n_layers:
        raise CmbuildError(f"the manifest has {n_layers} layers but the config lists "
                           f"{len(diff_ids)} diff_ids", where=where)
    return list(diff_ids)


def image_record(platform: str, index: str | None, manifest: str, config: str,
                 layers: list[Descriptor], diff_ids: list[str],
                 source_ref: str | None, source_digest: str | None) -> dict[str, Any]:
    """The image record ``pull`` stores: no host paths, no times."""
    return {
        "schemaVersion": 1,
        "platform": platform,
        "index": index,
        "manifest": manifest,
        "config": config,
        "layers": [d.to_layer_json() for d in layers],
        "diff_ids": diff_ids,
        "source": {"ref": source_ref, "digest": source_digest},
    }
