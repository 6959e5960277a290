"""unpack: the image's layers flattened (whiteouts, opaque directories, hardlinks applied)
into one canonical tar: sorted, numeric owners, clamped times. Nothing is written as files on
the host. Output: that tar."""

from __future__ import annotations

from typing import Any

from ..pipeline import Context, Stage


def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    rec = ctx.image_record()
    img = ctx.project.image
    layers = [{"digest": layer["digest"], "mediaType": layer.get("mediaType", "")} for layer in rec["layers"]]
    return ({"max_unpacked_size": img.max_unpacked_size, "mtime_clamp": img.mtime_clamp},
            {"layers": layers})


def build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from ..oci.flatten import LayerInput, flatten
    img = ctx.project.image
    layers = [LayerInput(path=ctx.store.require(layer["digest"], "layer"), digest=layer["digest"],
                         media_type=layer["mediaType"])
              for layer in ctx.key_inputs("unpack")["inputs"]["layers"]]
    with ctx.store.tmpdir("unpack-") as scratch, ctx.store.writer() as w:
        stats = flatten(layers, w, scratch=scratch, max_unpacked_size=img.max_unpacked_size,
                        mtime_clamp=img.mtime_clamp)
    meta = {k: v for k, v in vars(stats).items() if isinstance(v, int)} if stats is not None else {}
    return w.digest, meta


def stage() -> Stage:
    return Stage("unpack", 1, ("pull",), "flatten the layers (whiteouts applied) into one canonical tar",
                 key_doc, build, modules=("cmbuild.stages.unpack", "cmbuild.oci.flatten", "cmbuild.oci.tarutil"))
