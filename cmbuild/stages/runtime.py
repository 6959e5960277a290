"""The runtime layer: the read-only squashfs the machine boots.

It holds exactly (Debian's merged-/usr layout, ``/bin``, ``/sbin`` and ``/lib`` are symlinks into
``/usr``)::

    /sbin/init                     our init (the store object ``init_digest``), 0755
    /usr/bin/crun                  the OCI runtime, from Debian's crun package
    /usr/lib/...                   every library in crun's ELF closure, at its Debian path, with
                                   Debian's symlinks (libcap.so.2 -> libcap.so.2.75, the loader)
    /bin/busybox + applet links    busybox-static, and one symlink per recipe applet
    /proc /sys /dev /run /tmp /mnt empty mount points (the init puts everything dynamic on /run)

and nothing else. With ``libsystemd = "stub"`` in the recipe, crun's libsystemd.so.0 is cmbuild's
5 kB stub (``cmbuild/guest/sdstub``, built by :func:`build_sdstub`) instead of Debian's
libsystemd0, which also drops libm from the closure: see docs/runtime-layer.md. The packages come pinned from the recipe; the layer is written as one canonical
tar (sorted, owner 0:0, mtime 0, PAX) and turned into a squashfs by :mod:`cmbuild.drives`, so
the same recipe and init give the same bytes on any machine.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .. import debian, drives, elf
from ..errors import CmbuildError
from ..recipes import RuntimeRecipe
from ..store import Store, sha256_bytes, stage_key

if TYPE_CHECKING:
    from ..pipeline import Context, Stage

STAGE = "runtime"
STAGE_VERSION = 2  # 2: files 8-byte aligned in the squashfs
MOUNT_POINTS = ("dev", "mnt", "proc", "run", "sys", "tmp")
MERGED_USR = {"bin": "usr/bin", "lib": "usr/lib", "sbin": "usr/sbin"}
CRUN = "usr/bin/crun"
BUSYBOX = "usr/bin/busybox"
INIT = "usr/sbin/init"
ROLLUPS = "usr/sbin/rollups"   # the built-in rollups server (cmbuild/guest/rollups)
EM_RISCV = 243
SIZE_TARGET = 6 * 1000 * 1000  # bytes, uncompressed squashfs


@dataclass(frozen=True)
class Entry:
    """One entry of the layer. ``source`` is the file to copy (files only)."""

    path: str            # relative, no leading slash
    kind: str            # "file" | "dir" | "symlink"
    mode: int
    component: str       # what it belongs to, for the size table
    target: str = ""     # symlinks
    source: Path | None = None

    @property
    def size(self) -> int:
        return self.source.stat().st_size if self.source is not None else 0

    def describe(self) -> str:
        if self.kind == "symlink":
            return f"symlink {self.target}"
        return f"{self.kind} {self.mode:04o}"


def runtime_key(recipe: RuntimeRecipe, init_digest: str, compression: str,
                extra: dict[str, Any] | None = None) -> str:
    """The stage key of a runtime layer build (``extra``: the stub's digest, if any, and
    cmbuild's other programs)."""
    return stage_key(STAGE, STAGE_VERSION,
                     {"recipe": recipe.version, "recipe_sha256": recipe.sha256,
                      "compression": compression},
                     {"init": init_digest, **(extra or {})})


# ----- the libsystemd stub (recipe: libsystemd = "stub") -------------------------------------

SDSTUB_DIR = Path(__file__).resolve().parent.parent / "guest" / "sdstub"
SDSTUB_SOURCES = ("sdstub.c", "libsystemd.map")
SDSTUB_VERSION = 1
SDSTUB_FLAGS = ["-Os", "-s", "-shared", "-fPIC", "-nostdlib", "-ffreestanding", "-fno-ident",
                "-fvisibility=hidden", "-Wall", "-Wextra", "-Werror", "-Wl,--build-id=none",
                "-Wl,--hash-style=gnu", "-Wl,-z,noexecstack", "-Wl,-soname,libsystemd.so.0",
                "-Wl,--version-script=libsystemd.map"]
SDSTUB_PATH = "usr/lib/riscv64-linux-gnu/libsystemd.so.0"


def _toolchain() -> str:
    """Identity of the cross toolchain (compiler and linker version lines), for stage keys."""
    from ..guest.build import CC, compiler_version
    ld = CC.replace("-gcc", "-ld")
    try:
        p = subprocess.run([ld, "--version"], capture_output=True, text=True,
                           env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C"})
        ld_line = (p.stdout.splitlines() or ["unknown"])[0].strip()
    except OSError:
        ld_line = "absent"
    return f"{compiler_version()}; {ld_line}"


def build_sdstub(store: Store) -> str:
    """Compile cmbuild's libsystemd stub (``cmbuild/guest/sdstub``) for riscv64; return the
    store digest of the library. Keyed by its sources and the toolchain."""
    from ..guest.build import CC
    sources = {name: (SDSTUB_DIR / name).read_bytes() for name in SDSTUB_SOURCES}
    key = stage_key("sdstub", SDSTUB_VERSION, {"flags": SDSTUB_FLAGS},
                    {**{n: sha256_bytes(b) for n, b in sources.items()},
                     "toolchain": _toolchain()})
    with store.key_lock(key):
        rec = store.get_key(key)
        if rec is not None:
            return rec.output
        cc = shutil.which(CC)
        if cc is None:
            raise CmbuildError(f"the riscv64 cross compiler '{CC}' is not installed "
                               "(needed for the libsystemd stub)",
                               hint="install Debian's gcc-riscv64-linux-gnu")
        with store.tmpdir("sdstub-") as work:
            for name, data in sources.items():
                (work / name).write_bytes(data)
            p = subprocess.run([cc, *SDSTUB_FLAGS, f"-ffile-prefix-map={work}=.",
                                "-o", "libsystemd.so.0", "sdstub.c"], cwd=work,
                               capture_output=True, text=True,
                               env={"PATH": os.environ.get("PATH", ""), "LC_ALL": "C",
                                    "TZ": "UTC"})
            if p.returncode != 0:
                raise CmbuildError(f"compiling the libsystemd stub failed (exit "
                                   f"{p.returncode}):\n{p.stderr.strip()[-2000:]}",
                                   where=str(SDSTUB_DIR))
            digest = store.add_file(work / "libsystemd.so.0")
        store.put_key(key, "sdstub", digest, {})
        return digest


def prepare_tree(store: Store, recipe: RuntimeRecipe, tree: Path) -> dict[str, str]:
    """Unpack the recipe's packages into ``tree`` (and the libsystemd stub when the recipe
    asks for it). Returns the digests of what went in besides the pinned packages."""
    digests = debian.fetch_debs(store, recipe.debs(), suite=recipe.suite,
                                arch=recipe.architecture)
    for name in sorted(digests):
        debian.extract_deb(store.object_path(digests[name]), tree)
    extra: dict[str, str] = {}
    if recipe.libsystemd == "stub":
        stub = build_sdstub(store)
        dest = tree / SDSTUB_PATH
        if dest.exists() or dest.is_symlink():
            raise CmbuildError(f"a package of the recipe provides /{SDSTUB_PATH}, which the "
                               "stub replaces", where=str(recipe.path))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store.object_path(stub), dest)
        extra["sdstub"] = stub
    return extra


def _parents(path: str) -> Iterable[str]:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def _check_init(init: Path, init_digest: str) -> str:
    """What kind of program the init is: 'static', 'dynamic' or 'script'."""
    head = init.read_bytes()[:256]
    if head.startswith(b"#!"):
        return "script"
    if head[:4] != b"\x7fELF":
        raise CmbuildError(f"the init {init_digest} is neither an ELF program nor a script")
    info = elf.parse(init)
    if info.machine != EM_RISCV:
        raise CmbuildError(f"the init {init_digest} is not a RISC-V program "
                           f"(ELF machine {info.machine})", hint="build it for riscv64")
    return "dynamic" if info.interpreter or info.needed else "static"


def _check_program(path: Path, rel: str) -> None:
    info = elf.parse(path)
    if info.machine != EM_RISCV or info.interpreter:
        raise CmbuildError(f"/{rel} must be a static RISC-V program", where=str(path))


def _entries(recipe: RuntimeRecipe, tree: Path, init: Path, init_digest: str,
             programs: dict[str, Path] | None = None) -> list[Entry]:
    """The layer's entries, computed from the unpacked packages ``tree``; ``programs``: more
    static programs of cmbuild's own (``usr/sbin/rollups`` -> file)."""
    for rel, what in ((CRUN, "crun"), (BUSYBOX, "busybox-static")):
        if not (tree / rel).is_file():
            raise CmbuildError(f"package {what} has no /{rel}", where=str(recipe.path))
    if elf.parse(tree / BUSYBOX).interpreter:
        raise CmbuildError("/usr/bin/busybox is not static", where="busybox-static",
                           hint="pin busybox-static, not busybox")
    entries: dict[str, Entry] = {}

    def add(e: Entry) -> None:
        old = entries.get(e.path)
        if old is not None and old != e:
            raise CmbuildError(f"two different entries for /{e.path} in the runtime layer "
                               f"({old.component}, {e.component})")
        entries[e.path] = e

    add(Entry(CRUN, "file", 0o755, "crun", source=tree / CRUN))
    add(Entry(BUSYBOX, "file", 0o755, "busybox", source=tree / BUSYBOX))
    add(Entry(INIT, "file", 0o755, "init", source=init))
    for rel, path in sorted((programs or {}).items()):
        _check_program(path, rel)
        add(Entry(rel, "file", 0o755, Path(rel).name, source=path))
    for a in recipe.busybox_applets:
        add(Entry(f"usr/bin/{a}", "symlink", 0o777, "busybox", target="busybox"))
    kind = _check_init(init, init_digest)
    programs = [CRUN]
    if kind == "dynamic":
        # the init's libraries must come from the same packages
        (tree / INIT).parent.mkdir(parents=True, exist_ok=True)
        (tree / INIT).unlink(missing_ok=True)
        (tree / INIT).write_bytes(init.read_bytes())
        programs.append(INIT)
    for rel, src in elf.closure(programs, tree, aliases=MERGED_USR).items():
        if src.is_symlink():
            add(Entry(rel, "symlink", 0o777, "libraries", target=os.readlink(src)))
        else:
            mode = 0o755 if src.stat().st_mode & 0o111 else 0o644
            part = "libsystemd.so.0 (stub)" if (recipe.libsystemd == "stub"
                                                and rel == SDSTUB_PATH) else "libraries"
            add(Entry(rel, "file", mode, part, source=src))
    for link, target in MERGED_USR.items():
        add(Entry(link, "symlink", 0o777, "layout", target=target))
    for d in MOUNT_POINTS:
        add(Entry(d, "dir", 0o1777 if d == "tmp" else 0o755, "layout"))
    for e in list(entries.values()):
        for parent in _parents(e.path):
            if parent in MERGED_USR:
                raise CmbuildError(f"/{e.path} is under the merged-/usr link /{parent}")
            if parent not in entries:
                add(Entry(parent, "dir", 0o755, "layout"))
    if kind == "script":
        interp = init.read_bytes()[2:256].split(b"\n", 1)[0].strip().split(b" ")[0].decode()
        rel = interp.lstrip("/")
        for link, target in MERGED_USR.items():
            if rel.startswith(link + "/"):
                rel = target + rel[len(link):]
        if rel not in entries:
            raise CmbuildError(f"the init is a script for {interp}, which is not in the "
                               "runtime layer", hint="add the busybox applet (e.g. sh)")
    return [entries[k] for k in sorted(entries)]


def write_tar(entries: list[Entry], out: Path) -> None:
    """The canonical tar of the layer: sorted, owner 0:0, mtime 0, PAX; files whose size is not
    a multiple of 8 bytes last, so that the data of every program and library is 8-byte
    aligned in the uncompressed squashfs (as :func:`cmbuild.tarstream.copy_tar` does for the
    app drive, and why)."""
    from ..tarstream import data_aligned_last
    ordered = sorted(entries, key=lambda e: data_aligned_last(e.kind == "file", e.size))  # stable
    with open(out, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as t:
        for e in ordered:
            ti = tarfile.TarInfo(e.path)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            ti.mtime = 0
            ti.mode = e.mode
            if e.kind == "dir":
                ti.type = tarfile.DIRTYPE
                t.addfile(ti)
            elif e.kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = e.target
                ti.mode = 0o777
                t.addfile(ti)
            else:
                assert e.source is not None
                data = e.source.read_bytes()
                if not stat.S_ISREG(e.source.stat().st_mode):
                    raise CmbuildError("not a regular file", where=str(e.source))
                ti.type = tarfile.REGTYPE
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))


def _size_table(entries: list[Entry], image_size: int, compression: str) -> str:
    rows: dict[str, int] = {}
    for e in entries:
        if e.kind != "file":
            continue
        label = e.component if e.component != "libraries" else e.path.rsplit("/", 1)[-1]
        rows[label] = rows.get(label, 0) + e.size
    total = sum(rows.values())
    width = max(len(k) for k in rows) + 2
    lines = ["runtime layer:"]
    for k, v in sorted(rows.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {k:<{width}}{v / 1e6:8.3f} MB")
    lines.append(f"  {'files':<{width}}{total / 1e6:8.3f} MB")
    lines.append(f"  {'squashfs (' + compression + ')':<{width}}{image_size / 1e6:8.3f} MB")
    return "\n".join(lines)


def runtime_contents(recipe: RuntimeRecipe, store: Store, init_digest: str | None = None,
                     programs: dict[str, str] | None = None) -> dict[str, str]:
    """What the layer of ``recipe`` holds: ``/path`` -> ``"file 0755"``, ``"dir 0755"`` or
    ``"symlink <target>"``. Without ``init_digest`` the init is taken to be a static program."""
    with store.tmpdir("runtime-contents-") as tmp:
        tree = tmp / "tree"
        prepare_tree(store, recipe, tree)
        if init_digest is None:
            init = tree / BUSYBOX  # any static riscv64 program: the listing is the same
            init_digest = "static"
        else:
            init = store.require(init_digest, "init program")
        progs = {rel: store.require(d, rel) for rel, d in (programs or {}).items()}
        return {"/" + e.path: e.describe() for e in _entries(recipe, tree, init, init_digest, progs)}


def build_runtime(store: Store, recipe: RuntimeRecipe, *, init_digest: str,
                  compression: str = "none", quiet: bool = False,
                  programs: dict[str, str] | None = None) -> str:
    """Build the runtime layer squashfs; return its digest. ``programs``: more static programs
    of cmbuild's own, by path in the layer and store digest (``usr/sbin/rollups``)."""
    if compression not in drives.COMPRESSIONS:
        raise CmbuildError(f"unknown compression {compression!r}; choose one of "
                           f"{', '.join(drives.COMPRESSIONS)}")
    init = store.require(init_digest, "init program")
    extra = {"sdstub": build_sdstub(store)} if recipe.libsystemd == "stub" else {}
    progs = {rel: store.require(d, rel) for rel, d in sorted((programs or {}).items())}
    key_extra: dict[str, Any] = dict(extra)
    if programs:
        key_extra["programs"] = dict(sorted(programs.items()))
    key = runtime_key(recipe, init_digest, compression, key_extra)
    with store.key_lock(key):
        rec = store.get_key(key)
        if rec is not None:
            return rec.output
        with store.tmpdir("runtime-") as tmp:
            tree = tmp / "tree"
            if prepare_tree(store, recipe, tree) != extra:
                raise CmbuildError("the libsystemd stub changed during the build")
            entries = _entries(recipe, tree, init, init_digest, progs)
            tar_path = tmp / "layer.tar"
            write_tar(entries, tar_path)
            image = tmp / "layer.sqfs"
            drives.tar_to_squashfs(tar_path, image, compression)
            size = image.stat().st_size
            if not quiet:
                print(_size_table(entries, size, compression), file=sys.stderr)
            if compression == "none" and size > SIZE_TARGET:
                print(f"warning: the runtime layer is {size / 1e6:.2f} MB, over the "
                      f"{SIZE_TARGET / 1e6:.0f} MB target", file=sys.stderr)
            files = sum(e.size for e in entries)
            digest = store.add_file(image)
        store.put_key(key, STAGE, digest, {"recipe": recipe.version, "compression": compression,
                                           "files": files})
        return digest


# ----- the stage ----------------------------------------------------------------------------

def _recipe(ctx: "Context") -> RuntimeRecipe:
    from ..recipes import load_runtime_recipe, recipes_root
    return ctx.memo("runtime-recipe",
                    lambda: load_runtime_recipe(recipes_root(), ctx.project.runtime.version))


def key_doc(ctx: "Context") -> tuple[Any, dict[str, Any]]:
    from ..pipeline import compiler, file_digests
    from ..recipes import recipes_root
    from ..store import sha256_file
    from .init import guest_dir
    r = ctx.project.runtime
    recipe_file = recipes_root() / "runtime" / f"{r.version}.toml"
    _recipe(ctx)  # validates, and names the versions available when it does not exist
    sdstub = guest_dir() / "sdstub"
    stub = file_digests(sdstub.iterdir()) if sdstub.is_dir() else {}
    return ({"compression": r.compression, "version": r.version, "compiler": compiler(ctx)},
            {"recipe": sha256_file(recipe_file), "init": ctx.output("init"), "sdstub": stub,
             "programs": {ROLLUPS: ctx.output("rollups")}})


def build(ctx: "Context") -> tuple[str, dict[str, Any]]:
    digest = build_runtime(ctx.store, _recipe(ctx), init_digest=ctx.output("init"),
                           compression=ctx.project.runtime.compression,
                           programs={ROLLUPS: ctx.output("rollups")})
    return digest, {}


def stage() -> "Stage":
    from ..pipeline import Stage
    return Stage("runtime", 1, ("init", "rollups"),
                 "the runtime layer: init + crun + busybox + the rollups server, read-only squashfs",
                 key_doc, build, lambda ctx: "root.sqfs",
                 ("cmbuild.stages.runtime", "cmbuild.elf", "cmbuild.debian", "cmbuild.drives"),
                 drive_label="root")
