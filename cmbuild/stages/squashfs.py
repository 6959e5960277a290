"""squashfs: the image's drive (label ``app``): the image's root file system and nothing
else: read-only squashfs (uncompressed by default), or ext2 when the container's root must be
writable in place (``[drives.app] format = "ext2"``).

It depends only on the image (its flattened layers and its config) and on the drive's own
options: the project's ``[machine]`` settings travel on the config drive (:mod:`.config`), so
a change there leaves this drive's bytes, and its store object, untouched, and two projects
with the same image share it. The mount points that any container of this image needs
(``/proc``, ``/dev``, ``/sys``, the image's volumes and working directory) are added when the
image lacks them, so that a read-only root works for minimal images too.

``app`` is kept as the name of the task and of the drive (``.cartesi/app.sqfs``)."""

from __future__ import annotations

from typing import Any

from .. import drives
from ..pipeline import Context, Stage

LABEL = "app"


def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    from ..oci.runtime_config import image_mount_points
    d = ctx.project.app_drive()
    image_config = ctx.memo("image-config", lambda: ctx.store.read_json(ctx.image_record()["config"]))
    return ({"format": d.format, "compression": d.compression, "extra_size": d.extra_size,
             "size": d.size},
            {"rootfs": ctx.output("unpack"), "mount_points": image_mount_points(image_config)})


def build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from ..tarstream import copy_tar, missing_dirs
    d = ctx.project.app_drive()
    rootfs = ctx.path("unpack")
    wanted = ctx.key_inputs("squashfs")["inputs"]["mount_points"]
    missing = missing_dirs(rootfs, wanted)
    with ctx.store.tmpdir("app-") as tmp:
        img = tmp / "app.img"
        if d.format == "squashfs":
            # streamed into mksquashfs/tar2sqfs (no copy on disk) with the mount points added,
            # in the order that 8-byte aligns the data of nearly every program and library
            # (an uncompressed drive holds file data in tar order; see copy_tar)
            drives.squashfs_from_writer(
                lambda f: copy_tar(rootfs, f, mount_points=wanted, aligned=d.compression == "none"),
                img, d.compression)
        else:
            tar_path = tmp / "rootfs.tar"
            with open(tar_path, "wb") as f:
                copy_tar(rootfs, f, mount_points=wanted)
            drives.make_drive(tar_path, img, d.format, d.compression, d.extra_size, label=LABEL,
                              size=d.size)
        digest = ctx.store.adopt(img)
    return digest, {"format": d.format, "added": [m.decode() for m in missing]}


def stage() -> Stage:
    return Stage("squashfs", 2, ("pull", "unpack"),
                 "the image's drive (app): its root file system as squashfs (or ext2)",
                 key_doc, build,
                 lambda ctx: "app." + drives.EXTENSIONS[ctx.project.app_drive().format],
                 ("cmbuild.stages.squashfs", "cmbuild.tarstream", "cmbuild.drives"),
                 drive_label=LABEL, read_only=lambda ctx: ctx.project.app_drive().format != "ext2")
