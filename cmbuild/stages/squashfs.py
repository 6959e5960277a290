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

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import drives
from ..pipeline import APP, Context, ImageUse, Stage

if TYPE_CHECKING:
    from ..tarstream import Entries

LABEL = "app"


def mount_points(ctx: Context, use: ImageUse = APP) -> list[str]:
    """The directories every container of this image mounts on (added when missing)."""
    from ..oci.runtime_config import image_mount_points
    return image_mount_points(ctx.image_config(use))


def key_doc(ctx: Context, use: ImageUse = APP) -> tuple[Any, dict[str, Any]]:
    d = use.drive(ctx.project)
    return ({"format": d.format, "compression": d.compression, "extra_size": d.extra_size,
             "size": d.size},
            {"rootfs": ctx.output(use.name("unpack")), "mount_points": mount_points(ctx, use)})


def streams(ctx: Context, use: ImageUse = APP) -> bool:
    """Whether the drive is made from a stream of the tree (squashfs), so that the unpack
    stage can make it from its own tree while it writes the canonical tar (an ext2 drive
    needs a tar file first)."""
    return use.drive(ctx.project).format == "squashfs"


def write_squashfs(ctx: Context, entries: Entries, img: Path, use: ImageUse = APP) -> dict[str, Any]:
    """Make the squashfs drive at ``img`` from the entries of the image's canonical tree;
    returns the stage's metadata. The entries are streamed into mksquashfs/tar2sqfs (no copy
    on disk) with the mount points added, in the order that 8-byte aligns the data of nearly
    every program and library (an uncompressed drive holds file data in tar order; see
    :func:`cmbuild.tarstream.write_tree`)."""
    from ..tarstream import write_tree
    d = use.drive(ctx.project)
    wanted = mount_points(ctx, use)
    added: list[bytes] = []
    drives.squashfs_from_writer(
        lambda f: added.extend(write_tree(entries, f, mount_points=wanted,
                                          aligned=d.compression == "none")),
        img, d.compression)
    return {"format": d.format, "added": [m.decode() for m in added]}


def build(ctx: Context, use: ImageUse = APP) -> tuple[str, dict[str, Any]]:
    from ..tarstream import copy_tar, missing_dirs, tar_entries
    d = use.drive(ctx.project)
    rootfs = ctx.path(use.name("unpack"))
    with ctx.store.tmpdir("app-") as tmp:
        img = tmp / "app.img"
        if streams(ctx, use):
            with tar_entries(rootfs) as entries:
                meta = write_squashfs(ctx, entries, img, use)
        else:
            wanted = mount_points(ctx, use)
            tar_path = tmp / "rootfs.tar"
            with open(tar_path, "wb") as f:
                copy_tar(rootfs, f, mount_points=wanted)
            drives.make_drive(tar_path, img, d.format, d.compression, d.extra_size, label=use.label,
                              size=d.size)
            meta = {"format": d.format, "added": [m.decode() for m in missing_dirs(rootfs, wanted)]}
        digest = ctx.store.adopt(img)
    return digest, meta


def stage(use: ImageUse = APP) -> Stage:
    return Stage(use.name("squashfs"), 2, (use.name("pull"), use.name("unpack")),
                 f"the image's drive ({use.label}): its root file system as squashfs (or ext2)",
                 lambda ctx: key_doc(ctx, use), lambda ctx: build(ctx, use),
                 lambda ctx: use.label + "." + drives.EXTENSIONS[use.drive(ctx.project).format],
                 ("cmbuild.stages.squashfs", "cmbuild.tarstream", "cmbuild.drives", "cmbuild.oci.tarutil",
                  "cmbuild.oci.flatten"),   # flatten: the unpack stage makes the drive from its tree
                 drive_label=use.label, read_only=lambda ctx: use.drive(ctx.project).format != "ext2",
                 kind="squashfs")
