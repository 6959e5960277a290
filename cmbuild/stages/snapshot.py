"""snapshot: the stored machine (``cartesi-machine --store``) and its root hash, the template
hash that goes on-chain (cartesi backend only). Its inputs are the kernel and every drive, by
output digest, and the emulator's version."""

from __future__ import annotations

import sys
from typing import Any

from ..errors import CmbuildError
from ..pipeline import Context, Stage


def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    from ..machines import cartesi as cm
    m = ctx.project.machine
    version = ctx.memo("cm-version", cm.installed_version)
    if version is None:
        raise CmbuildError("snapshots are made by cartesi-machine, which is not installed",
                           hint=f"{cm.INSTALL_HINT}; or set [machine].backend = \"qemu\" and use "
                                "`cmbuild run` to run the container under QEMU")
    drives_in = {ctx.graph[n].drive_label: ctx.output(n) for n in ctx.graph.drives()}
    options = {"ram_length": m.ram_length, "bootargs": ctx.bootargs(), "max_mcycle": m.max_mcycle,
               "assert_rolling_template": ctx.rolling_template,
               "emulator": ".".join(map(str, version))}
    return options, {"kernel": ctx.output("kernel"), "drives": drives_in}


def build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from ..machines import cartesi as cm
    m = ctx.project.machine
    drives_list = [cm.Drive(label=label, path=p, read_only=ro) for label, p, ro in ctx.machine_drives()]
    with ctx.store.tmpdir("snapshot-") as tmp:
        out_dir = tmp / "image"
        result = cm.snapshot(version=ctx.memo("cm-version", cm.installed_version),
                             ram_image=ctx.path("kernel"), ram_length=str(m.ram_length),
                             drives=drives_list, bootargs=ctx.bootargs(), store_dir=out_dir,
                             max_mcycle=m.max_mcycle, assert_rolling_template=ctx.rolling_template,
                             # the machine's console is a log here: standard error
                             console=cm.stream_sink(sys.stderr), timeout=m.timeout)
        root_hash = result.root_hash
        digest = ctx.store.add_tree(out_dir)
    return digest, {"root_hash": root_hash}


def check_fetched(ctx: Context, digest: str, meta: dict[str, Any], where: str) -> None:
    """A stored machine from a remote cache must have the root hash it is said to have, by its
    stored hash tree and by its contents."""
    from ..machines import cartesi as cm
    got = cm.checked_hash(ctx.store.object_path(digest))
    if got != meta.get("root_hash"):
        raise CmbuildError(f"the stored machine's root hash is {got}, the artifact says "
                           f"{meta.get('root_hash')}", where=where)


def stage(deps: tuple[str, ...]) -> Stage:
    """``deps``: the kernel and every drive stage of the project."""
    return Stage("snapshot", 1, deps, "the stored machine (cartesi-machine --store) and its root hash",
                 key_doc, build, lambda ctx: "image",
                 ("cmbuild.stages.snapshot", "cmbuild.machines.cartesi", "cmbuild.machines.outcome"),
                 check_fetched=check_fetched)
