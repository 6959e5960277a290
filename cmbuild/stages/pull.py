"""pull: fetch the image (registry by digest, OCI layout or docker-save tarball) and verify
every blob's sha256. Output: the image record (JSON: index, manifest, config, layers, diff_ids,
platform), with every blob it names in the store."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ..errors import CmbuildError
from ..pipeline import APP, Context, ImageUse, Stage, source_digest

if TYPE_CHECKING:
    from ..oci.flatten import LayerInflater
    from ..oci.image import Descriptor


def key_doc(ctx: Context, use: ImageUse = APP) -> tuple[Any, dict[str, Any]]:
    img = use.image(ctx.project)
    options = {"platform": img.platform}
    if img.path is not None:
        p = img.path
        if p.is_dir():
            # an OCI layout: its index.json names everything else by digest
            index = p / "index.json"
            if not index.is_file():
                raise CmbuildError("not an OCI image layout (no index.json)", where=str(p))
            inputs = {"layout-index": source_digest(ctx.store, index), "ref": img.ref, "digest": img.digest}
        else:
            inputs = {"tarball": source_digest(ctx.store, p), "ref": img.ref, "digest": img.digest}
        return options, inputs
    digest = img.digest
    if digest is None:
        if not ctx.allow_unpinned:
            raise CmbuildError(f"{use.table}.ref = {img.ref!r} has no digest: the build would not be "
                               "reproducible", where="cartesi.toml",
                               hint="run `cmbuild lock` (or `doit lock`) to pin it, or pass --allow-unpinned")
        from ..oci.pull import resolve_digest
        digest = ctx.memo(f"resolved-digest:{use.service}",
                          lambda: resolve_digest(img.ref, img.platform, img.insecure))
        print(f"cmbuild: warning: {img.ref} is not pinned; using {digest}", file=sys.stderr)
    return options, {"ref": img.ref, "digest": digest}


def build(ctx: Context, use: ImageUse = APP) -> tuple[str, dict[str, Any]]:
    from ..oci.flatten import LayerInflater
    from ..oci.pull import pull
    img = use.image(ctx.project)
    digest = ctx.key_inputs(use.name("pull"))["inputs"].get("digest")
    inflaters: dict[str, LayerInflater] = {}

    def sink(desc: Descriptor) -> LayerInflater | None:
        """When this run unpacks too, each layer downloaded is inflated on the way: the
        network time and the decompression overlap, and the unpack stage finds the tars."""
        if not ctx.plans(use.name("unpack")) or desc.digest in inflaters:
            return None
        path = ctx.scratch() / f"{desc.digest.split(':', 1)[-1]}.tar"
        inflaters[desc.digest] = LayerInflater(path, img.max_unpacked_size)
        return inflaters[desc.digest]

    out = pull(ctx.store, ref=img.ref, digest=digest, path=img.path, platform=img.platform,
               insecure=img.insecure, allow_unpinned=True, progress=ctx.progress, sink=sink)
    for layer, inflater in inflaters.items():
        if (tar := inflater.result()) is not None:
            ctx.inflated[layer] = tar
    return out, {}


def documents(ctx: Context, use: ImageUse = APP) -> list[str]:
    """The image's small documents in the store (index, manifest, config): a remote cache
    carries them with the pull stage's output; the layers it leaves to the image's source,
    fetched again by :func:`fetch_layers` only if a later stage must be built here."""
    rec = ctx.image_record(use)
    return [d for d in (rec.get("index"), rec.get("manifest"), rec.get("config"))
            if isinstance(d, str) and ctx.store.has(d)]


def fetch_layers(ctx: Context, use: ImageUse = APP) -> None:
    """Bring the layers that the pull's record names into the store (after the record came
    from a remote cache), from the image's own source, verified as a pull does."""
    got = build(ctx, use)[0]
    want = ctx.output(use.name("pull"))
    if got != want:
        raise CmbuildError(f"the image's source now gives record {got}, not {want}",
                           where=use.name("pull"), hint="the image changed at its source")


def stage(use: ImageUse = APP) -> Stage:
    what = "the image" if use.service is None else f"service {use.service}'s image"
    return Stage(use.name("pull"), 1, (),
                 f"fetch {what} (registry, OCI layout or docker-save tarball), verify every blob",
                 lambda ctx: key_doc(ctx, use), lambda ctx: build(ctx, use),
                 remote_extras=lambda ctx: documents(ctx, use), kind="pull",
                 modules=("cmbuild.stages.pull", "cmbuild.oci.pull", "cmbuild.oci.image", "cmbuild.oci.layout",
                          "cmbuild.oci.dockersave", "cmbuild.oci.registry", "cmbuild.oci.auth",
                          "cmbuild.oci.blobs", "cmbuild.oci.reference"))
