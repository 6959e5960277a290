"""init: our PID 1 (``cmbuild/guest/init.c``), compiled statically for riscv64,
reproducibly (:mod:`cmbuild.guest.build`). Output: the binary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..pipeline import Context, Stage, compiler, file_digests


def guest_dir() -> Path:
    from ..guest import build as gb
    return Path(gb.__file__).resolve().parent


def key_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    sources = file_digests(p for p in guest_dir().iterdir() if p.suffix in (".c", ".h"))
    return {"compiler": compiler(ctx)}, {"sources": sources}


def build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from ..guest.build import build_init
    return build_init(ctx.store), {}


def stage() -> Stage:
    return Stage("init", 1, (), "our init (PID 1), compiled for riscv64", key_doc, build,
                 modules=("cmbuild.stages.init", "cmbuild.guest.build"))
