"""drive-<name>: one stage per extra ``[drives.<name>]``: a host directory, a tar (made
canonical like a one-layer image) or an empty ext2 drive, as squashfs or ext2. The container
sees it as a volume at its ``mount`` (init mounts it at ``/run/drives/<name>``)."""

from __future__ import annotations

from typing import Any

from .. import drives
from ..pipeline import Context, Stage, source_digest
from ..store import tree_digest


def stage(name: str) -> Stage:
    def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
        d = ctx.project.drives[name]
        options = {"builder": d.builder, "format": d.format, "compression": d.compression,
                   "extra_size": d.extra_size, "size": d.size}
        if d.builder == "directory":
            return options, {"directory": tree_digest(d.directory, modes=True)}
        if d.builder == "tar":
            return options, {"tar": source_digest(ctx.store, d.filename)}
        return options, {}

    def build(ctx: Context) -> tuple[str, dict[str, Any]]:
        from ..oci.flatten import LayerInput, flatten
        from ..tarstream import directory_tar, empty_tar
        d = ctx.project.drives[name]
        with ctx.store.tmpdir("drive-") as tmp:
            tar_path = tmp / "drive.tar"
            with open(tar_path, "wb") as f:
                if d.builder == "directory":
                    directory_tar(d.directory, f)
                elif d.builder == "tar":
                    # a user's tar is made canonical like a one-layer image: sorted, parents
                    # made, paths cleaned, owners numeric, times clamped
                    flatten([LayerInput(path=d.filename, digest=f"tar {d.filename.name}")], f,
                            scratch=tmp, max_unpacked_size=ctx.project.image.max_unpacked_size,
                            mtime_clamp=ctx.project.image.mtime_clamp)
                else:
                    empty_tar(f)
            img = tmp / "drive.img"
            drives.make_drive(tar_path, img, d.format, d.compression, d.extra_size, label=name,
                              size=d.size)
            return ctx.store.adopt(img), {"format": d.format}

    return Stage(f"drive-{name}", 1, (), f"the {name} drive ([drives.{name}])", key_doc, build,
                 lambda ctx: f"{name}.{drives.EXTENSIONS[ctx.project.drives[name].format]}",
                 ("cmbuild.stages.drives", "cmbuild.tarstream", "cmbuild.drives",
                  "cmbuild.oci.flatten", "cmbuild.oci.tarutil"),
                 drive_label=name, read_only=lambda ctx: ctx.project.drives[name].format != "ext2")
