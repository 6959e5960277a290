"""rollups: the built-in rollups server (``cmbuild/guest/rollups``), compiled statically for
riscv64, reproducibly (:func:`cmbuild.guest.build.build_rollups`). It goes into every runtime
layer as ``/usr/sbin/rollups``; init starts it for a rollups app (``cmbuild.rollups=1``). It
answers the Rollup HTTP API on 127.0.0.1:5004 over ``/dev/cmio``. Output: the binary."""

from __future__ import annotations

from typing import Any

from ..pipeline import Context, Stage, compiler, file_digests
from .init import guest_dir


def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    src = guest_dir() / "rollups"
    return {"compiler": compiler(ctx)}, {"sources": file_digests(src.iterdir())}


def build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from ..guest.build import build_rollups
    return build_rollups(ctx.store), {}


def stage() -> Stage:
    return Stage("rollups", 1, (), "the built-in rollups server, compiled for riscv64", key_doc, build,
                 modules=("cmbuild.stages.rollups", "cmbuild.guest.build"))
