"""Build the guest programs (``init.c``, ``shim.c``) for riscv64, reproducibly.

Both are compiled with Debian's cross compiler into static binaries::

    riscv64-linux-gnu-gcc -static -Os -s -ffile-prefix-map=<dir>=. -Wl,--build-id=none

in a scratch directory with a fixed environment (``LC_ALL=C``, ``TZ=UTC``, no
``SOURCE_DATE_EPOCH``: nothing in the binaries depends on time). The same compiler and C
library give the same bytes; :func:`compiler_version` (compiler and static C library versions)
is part of the stage key, so a new toolchain means a new build.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from ..errors import CmbuildError
from ..store import Store, sha256_bytes, stage_key

CC = "riscv64-linux-gnu-gcc"
CFLAGS = ["-static", "-Os", "-s", "-std=gnu11", "-Wall", "-Wextra", "-Wno-format-truncation",
          "-fno-ident", "-Wl,--build-id=none", "-Wl,--hash-style=gnu"]
BUILD_VERSION = 1
GUEST_DIR = Path(__file__).resolve().parent
SOURCES = {"init": "init.c", "shim": "shim.c"}


def _env() -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C",
           "TZ": "UTC"}
    return env


def _need_cc() -> str:
    cc = shutil.which(CC, path=_env()["PATH"])
    if cc is None:
        raise CmbuildError(f"the riscv64 cross compiler '{CC}' is not installed",
                           hint="install Debian's packages gcc-riscv64-linux-gnu and "
                                "libc6-dev-riscv64-cross")
    return cc


@lru_cache(maxsize=None)
def compiler_version() -> str:
    """Identity of the toolchain: the compiler's version line and the version of the static C
    library it links (Debian's libc6-dev-riscv64-cross), for stage keys."""
    cc = _need_cc()
    p = subprocess.run([cc, "--version"], capture_output=True, text=True, env=_env())
    first = (p.stdout.splitlines() or ["unknown"])[0].strip()
    libc = "unknown"
    if shutil.which("dpkg-query"):
        q = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libc6-dev-riscv64-cross"],
                           capture_output=True, text=True, env=_env())
        if q.returncode == 0 and q.stdout.strip():
            libc = q.stdout.strip()
    return f"{first}; libc6-dev-riscv64-cross {libc}"


def compile_static(source: Path, out: Path) -> None:
    """Compile one C file into a static riscv64 binary at ``out``."""
    cc = _need_cc()
    work = out.parent
    src = work / source.name
    if src.resolve() != source.resolve():
        shutil.copyfile(source, src)
    cmd = [cc, *CFLAGS, f"-ffile-prefix-map={work}=.", "-o", out.name, src.name]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=_env())
    if p.returncode != 0:
        raise CmbuildError(f"compiling {source.name} failed (exit {p.returncode}):\n"
                           + p.stderr.strip()[-3000:], where=str(source))


def _build(store: Store, name: str, force: bool = False) -> str:
    source = GUEST_DIR / SOURCES[name]
    text = source.read_bytes()
    key = stage_key(f"guest-{name}", BUILD_VERSION, {"cflags": CFLAGS},
                    {"source": sha256_bytes(text), "compiler": compiler_version()})
    with store.key_lock(key):
        rec = None if force else store.get_key(key)
        if rec is not None:
            return rec.output
        with store.tmpdir(f"guest-{name}-") as work:
            (work / source.name).write_bytes(text)
            out = work / name
            compile_static(work / source.name, out)
            digest = store.add_file(out)
        store.put_key(key, f"guest-{name}", digest, {"source": SOURCES[name]})
        return digest


def build_init(store: Store, *, force: bool = False) -> str:
    """Build ``init.c`` (PID 1 of the runtime layer); return the store digest of the binary."""
    return _build(store, "init", force)


def build_shim(store: Store, *, force: bool = False) -> str:
    """Build ``shim.c`` (the QEMU boot shim's /init); return the store digest of the binary."""
    return _build(store, "shim", force)


# ------------------------------------------------------------------ the rollups server -----

ROLLUPS_DIR = GUEST_DIR / "rollups"
# The machine's build: cmio.c talks to /dev/cmio. (cmio-fake.c replaces it in the host tests.)
ROLLUPS_SOURCES = ("sys.c", "keccak.c", "merkle.c", "hex.c", "abi.c", "json.c", "http.c", "cmio.c",
                   "rollups.c")
# Added to CFLAGS: no C library (a static glibc costs 420 KB before main; the server is written
# on system calls, cmbuild/guest/rollups/sys.c), libgcc for the compiler's helpers, unused
# sections dropped. -fno-tree-loop-distribute-patterns keeps the compiler from turning
# sys.c's memcpy/memset loops into calls to themselves.
ROLLUPS_CFLAGS = ["-nostdlib", "-ffreestanding", "-fno-stack-protector",
                  "-fno-asynchronous-unwind-tables", "-ffunction-sections", "-fdata-sections",
                  "-Wl,--gc-sections", "-fno-tree-loop-distribute-patterns"]
ROLLUPS_LIBS = ["-lgcc"]
ROLLUPS_BUILD_VERSION = 1


def rollups_source_files() -> list[Path]:
    """Every file the machine's rollups binary is built from (sources and headers), sorted."""
    names = set(ROLLUPS_SOURCES) | {p.name for p in ROLLUPS_DIR.glob("*.h")}
    return [ROLLUPS_DIR / n for n in sorted(names)]


def compile_many(sources: list[Path], out: Path, *, cc: str | None = None,
                 extra_flags: Sequence[str] = (), libs: Sequence[str] = ()) -> None:
    """Compile several C files (headers beside them) into one binary at ``out``, in
    ``out.parent``, with CFLAGS plus ``extra_flags``; ``cc`` defaults to the riscv64 cross
    compiler. The files are copied next to ``out`` so that no host path enters the binary."""
    cc = cc or _need_cc()
    work = out.parent
    for src in sources:
        dst = work / src.name
        if dst.resolve() != src.resolve():
            shutil.copyfile(src, dst)
    c_files = [s.name for s in sources if s.suffix == ".c"]
    cmd = [cc, *CFLAGS, *extra_flags, f"-ffile-prefix-map={work}=.", "-o", out.name, *c_files,
           *libs]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=_env())
    if p.returncode != 0:
        raise CmbuildError(f"compiling {', '.join(c_files)} failed (exit {p.returncode}):\n"
                           + p.stderr.strip()[-3000:], where=str(sources[0].parent))


def build_rollups(store: Store, *, force: bool = False) -> str:
    """Build the rollups HTTP server (cmbuild/guest/rollups, static riscv64, no C library);
    return the store digest of the binary. Reproducible like init: the stage key holds every
    source's sha256, the flags and the toolchain."""
    files = rollups_source_files()
    texts = {p.name: p.read_bytes() for p in files}
    key = stage_key("guest-rollups", ROLLUPS_BUILD_VERSION,
                    {"cflags": CFLAGS + ROLLUPS_CFLAGS, "libs": ROLLUPS_LIBS},
                    {"sources": {n: sha256_bytes(t) for n, t in texts.items()},
                     "compiler": compiler_version()})
    with store.key_lock(key):
        rec = None if force else store.get_key(key)
        if rec is not None:
            return rec.output
        with store.tmpdir("guest-rollups-") as work:
            for name, text in texts.items():
                (work / name).write_bytes(text)
            out = work / "rollups"
            compile_many([work / n for n in texts], out, extra_flags=ROLLUPS_CFLAGS,
                         libs=ROLLUPS_LIBS)
            digest = store.add_file(out)
        store.put_key(key, "guest-rollups", digest, {"sources": sorted(texts)})
        return digest
