"""services: the containers started before the app (``[services.<name>]``), as one small
read-only drive (label ``services``) that init reads at boot:

* ``services.txt``: one line per service, in start order (the order of the tables in
  ``cartesi.toml``): ``<name> <drive label> <ready port or 0> <ready timeout in ms> <stop
  timeout in ms>``;
* ``<name>/config.json``: the service's OCI runtime config, generated from its image's config
  and its table's overrides exactly as the app's is from ``[machine]``.

Each service runs its own image: its drive (label ``svc-<name>``) comes from stages
``pull-<name>``, ``unpack-<name>`` and ``squashfs-<name>``, which share their keys with the
app's own stages (an image used by several projects, or as app and service, is one drive in
the store); a service whose image is the app's, or an earlier service's, uses that drive
(:func:`cmbuild.pipeline.service_images`)."""

from __future__ import annotations

import io
import json
from typing import Any

from .. import drives
from ..config import Project
from ..pipeline import Context, Stage, service_images
from ..tarstream import _dir_info, _file_info, _new_tar

LABEL = "services"
MANIFEST = "services.txt"


def _options(ctx: Context) -> list[dict[str, Any]]:
    uses = service_images(ctx.project)
    return [{"name": name, "drive": uses[name].label, "entrypoint": s.entrypoint, "cmd": s.cmd,
             "env": s.env, "workdir": s.workdir, "user": s.user, "ready_port": s.ready_port,
             "ready_timeout": s.ready_timeout, "stop_timeout": s.stop_timeout, "init": s.init}
            for name, s in ctx.project.services.items()]


def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    inputs = {name: {"config": ctx.image_record(u)["config"], "rootfs": ctx.output(u.name("unpack"))}
              for name, u in service_images(ctx.project).items()}
    return {"services": _options(ctx)}, inputs


def manifest(ctx: Context) -> bytes:
    return "".join(f"{o['name']} {o['drive']} {o['ready_port'] or 0} {round(o['ready_timeout'] * 1000)} "
                   f"{round(o['stop_timeout'] * 1000)}\n" for o in _options(ctx)).encode()


INIT_IN_MACHINE = "/usr/sbin/init"         # our init, in the runtime layer
INIT_IN_CONTAINER = "/dev/.cmbuild-init"    # /dev is a tmpfs in every container


def service_config(ctx: Context, name: str) -> dict[str, Any]:
    from ..oci.runtime_config import Mount
    from .config import container_config
    s = ctx.project.services[name]
    values = {"entrypoint": s.entrypoint, "cmd": s.cmd, "env": s.env or None,
              "workdir": s.workdir, "user": s.user}
    mounts = [Mount(destination=INIT_IN_CONTAINER, source=INIT_IN_MACHINE, type="bind",
                    options=["bind", "ro"])] if s.init else []
    config = container_config(ctx, service_images(ctx.project)[name], values, mounts)
    if s.init:   # init --reap ARGS: PID 1 that forwards signals to the service and reaps
        config["process"]["args"] = [INIT_IN_CONTAINER, "--reap", *config["process"]["args"]]
    return config


def build(ctx: Context) -> tuple[str, dict[str, Any]]:
    files = {MANIFEST: manifest(ctx)}
    for name in ctx.project.services:
        files[f"{name}/config.json"] = json.dumps(service_config(ctx, name), indent=2,
                                                  sort_keys=True).encode() + b"\n"
    with ctx.store.tmpdir("services-") as tmp:
        tar_path = tmp / "services.tar"
        with open(tar_path, "wb") as f, _new_tar(f) as tar:
            for name in sorted(set(files) | {n.split("/")[0] for n in files if "/" in n}):
                if name in files:
                    tar.addfile(_file_info(name, len(files[name])), io.BytesIO(files[name]))
                else:
                    tar.addfile(_dir_info(name))
        img = tmp / "services.sqfs"
        drives.make_drive(tar_path, img, "squashfs", "none", 0, label=LABEL)
        return ctx.store.adopt(img), {"services": list(ctx.project.services)}


def stage(project: Project) -> Stage:
    """``project``'s services stage: it needs the pull and unpack stages of every image a
    service runs."""
    deps: list[str] = []
    for u in service_images(project).values():
        deps += [n for n in (u.name("pull"), u.name("unpack")) if n not in deps]
    return Stage("services", 1, tuple(deps),
                 "the services' config.json files and start order ([services.<name>], its own drive)",
                 key_doc, build, lambda ctx: "services.sqfs",
                 modules=("cmbuild.stages.services", "cmbuild.stages.config",
                          "cmbuild.oci.runtime_config", "cmbuild.tarstream", "cmbuild.drives"),
                 drive_label=LABEL)
