"""config: the OCI runtime ``config.json``, generated from the image config and ``[machine]``
(:mod:`cmbuild.oci.runtime_config`), and the drive that carries it into the machine.

The config travels apart from the image's drive, so that a change of env, args, user, workdir
or mounts rebuilds only this small piece, and one image used by projects with different
configs shares one app drive. The output is the JSON itself, padded with spaces (JSON allows
trailing white space) to a whole number of 4 KiB blocks: that file *is* a flash drive (label
``config``), read raw by init into ``/run/bundle/config.json``; no file system is needed."""

from __future__ import annotations

import json
from typing import Any

from ..pipeline import APP, Context, ImageUse, Stage

DRIVES_DIR = "/run/drives"   # where init mounts the extra drives (see cmbuild/guest/init.c)
LABEL = "config"
BLOCK = 4096
ROLLUP_HTTP_SERVER_URL = "http://127.0.0.1:5004"   # the built-in rollups server (cmbuild/guest/rollups)
CMIO_DEVICE = "/dev/cmio"


def drive_bytes(doc: dict[str, Any]) -> bytes:
    """``doc`` as canonical JSON padded with spaces to whole 4 KiB blocks, ending in a newline."""
    data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    size = -(-(len(data) + 1) // BLOCK) * BLOCK
    return data + b" " * (size - len(data) - 1) + b"\n"


def user_db(ctx: Context, use: ImageUse = APP) -> tuple[bytes | None, bytes | None]:
    """``/etc/passwd`` and ``/etc/group`` of the image (to resolve ``user``), read from the
    flattened tree once per tree and kept in the store under that tree's digest: a change of
    ``[machine]`` does not read a large image again."""
    from ..oci.runtime_config import read_user_db
    from ..store import stage_key
    rootfs = ctx.output(use.name("unpack"))
    key = stage_key("user-db", 1, {}, {"rootfs": rootfs})
    with ctx.store.key_lock(key):
        rec = ctx.store.get_key(key)
        if rec is None:
            passwd, group = read_user_db(ctx.path(use.name("unpack")))
            doc = {"passwd": None if passwd is None else passwd.decode("latin-1"),
                   "group": None if group is None else group.decode("latin-1")}
            rec = ctx.store.put_key(key, "user-db", ctx.store.add_bytes(json.dumps(doc, sort_keys=True).encode()), {})
    doc = ctx.store.read_json(rec.output)
    return tuple(None if doc[k] is None else doc[k].encode("latin-1") for k in ("passwd", "group"))  # type: ignore[return-value]


def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    m = ctx.project.machine
    mounts = {name: {"mount": d.mount, "writable": d.format == "ext2"}
              for name, d in ctx.project.extra_drives().items()}
    r = ctx.project.rollups
    options = {"entrypoint": m.entrypoint, "cmd": m.cmd, "env": m.env, "workdir": m.workdir,
               "user": m.user, "mounts": mounts, "rollups": None if r is None else r.server}
    return options, {"config": ctx.image_record()["config"], "rootfs": ctx.output("unpack")}


def runtime_config(ctx: Context, **changes: Any) -> dict[str, Any]:
    """The runtime config of this project; ``changes`` replace ``[machine]`` values
    (``cmd=[...]`` for ``cmbuild run -- CMD``, as ``docker run IMAGE CMD`` does)."""
    from ..oci.runtime_config import Mount
    m = ctx.project.machine
    mounts = [Mount(destination=d.mount or "", source=f"{DRIVES_DIR}/{name}", type="bind",
                    options=["rbind", "rw" if d.format == "ext2" else "ro"])
              for name, d in ctx.project.extra_drives().items()]
    r = ctx.project.rollups
    env = dict(m.env)
    if r is not None and r.server == "builtin":
        # the app finds the built-in server as it finds Cartesi's own (the container shares
        # the machine's network namespace); the project's env may still say otherwise
        env = {"ROLLUP_HTTP_SERVER_URL": ROLLUP_HTTP_SERVER_URL, **env}
    if r is not None and r.server == "image":
        # the image's own guest tools talk to the cmio device themselves
        mounts.append(Mount(destination=CMIO_DEVICE, source=CMIO_DEVICE, type="bind",
                            options=["bind", "rw"]))
    values: dict[str, Any] = {"entrypoint": m.entrypoint, "cmd": m.cmd, "env": env or None,
                              "workdir": m.workdir, "user": m.user}
    values.update(changes)
    return container_config(ctx, APP, values, mounts)


def container_config(ctx: Context, use: ImageUse, values: dict[str, Any], mounts: list[Any]) -> dict[str, Any]:
    """The runtime config of a container of image ``use`` with the overrides ``values``
    (entrypoint, cmd, env, workdir, user) and extra ``mounts``."""
    from ..oci.runtime_config import Overrides, make_runtime_config
    passwd, group = ctx.memo(f"user-db:{use.service}", lambda: user_db(ctx, use))
    return make_runtime_config(ctx.image_config(use), Overrides(**values), passwd=passwd,
                               group=group, extra_mounts=mounts)


def build(ctx: Context) -> tuple[str, dict[str, Any]]:
    return ctx.store.add_bytes(drive_bytes(runtime_config(ctx))), {}


def stage() -> Stage:
    return Stage("config", 2, ("pull", "unpack"),
                 "the OCI runtime config.json from the image config and [machine] (its own small drive)",
                 key_doc, build, lambda ctx: "config.json",
                 modules=("cmbuild.stages.config", "cmbuild.oci.runtime_config"), drive_label=LABEL)
