"""The stages of a build and how their keys chain (osbuild / Nix style).

A stage is (name, implementation version, options, upstream stages) plus a ``build`` function.
Its key is ``stage_key(name, version, options, inputs)`` where ``inputs`` are the *output
digests* of the upstream stages (or the digests of source files). Because outputs are content
addressed, an upstream stage that re-runs and produces the same bytes leaves every downstream
key unchanged: early cutoff comes for free.

This module knows nothing of doit: :mod:`cmbuild.tasks` turns the stages into doit tasks, and
:mod:`cmbuild.audit` rebuilds them in a fresh store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import drives
from .config import Project
from .errors import CmbuildError
from .store import KeyRecord, Store, sha256_file, stage_key, tree_digest

from .recipes import recipes_root


class NotBuilt(Exception):
    """An upstream stage has no output in the store yet."""

    def __init__(self, stage: str):
        self.stage = stage
        super().__init__(stage)


@dataclass
class Stage:
    name: str
    version: int
    deps: tuple[str, ...]
    doc: str
    key_doc: Callable[["Context"], tuple[Any, dict[str, Any]]]   # -> (options, inputs)
    build: Callable[["Context"], tuple[str, dict[str, Any]]]     # -> (output digest, meta)
    publish_as: Callable[["Context"], str | None] = lambda ctx: None  # file name in .cartesi/
    modules: tuple[str, ...] = ()   # the code that makes the output: its source is in the key


_IMPL: dict[str, str] = {}


def implementation_digest(stage: Stage) -> str:
    """sha256 of the source of the modules that implement a stage: a change to the code that
    makes an output changes the stage's key (as a builder's hash does in Nix)."""
    if stage.name not in _IMPL:
        import importlib.util
        h = hashlib.sha256()
        for mod in sorted(stage.modules):
            spec = importlib.util.find_spec(mod)
            if spec is None or spec.origin is None:
                raise CmbuildError(f"stage {stage.name}: module {mod} is missing from this installation")
            h.update(mod.encode() + b"\0" + Path(spec.origin).read_bytes() + b"\0")
        _IMPL[stage.name] = h.hexdigest()[:16]
    return _IMPL[stage.name]


@dataclass
class Context:
    """One build: the project, its folder, the store, and the keys computed so far."""

    project: Project
    project_dir: Path
    store: Store
    allow_unpinned: bool = False
    progress: bool = True
    _keys: dict[str, str] = field(default_factory=dict)
    _docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict)

    # ----- keys ----------------------------------------------------------------------------
    def key(self, name: str) -> str:
        if name not in self._keys:
            stage = STAGES[name]
            options, inputs = stage.key_doc(self)
            self._docs[name] = {"options": options, "inputs": inputs}
            version = f"{stage.version}+{implementation_digest(stage)}"
            self._keys[name] = stage_key(name, version, options, inputs)
        return self._keys[name]

    def key_inputs(self, name: str) -> dict[str, Any]:
        self.key(name)
        return self._docs[name]

    def record(self, name: str) -> KeyRecord | None:
        return self.store.get_key(self.key(name))

    def output(self, name: str) -> str:
        """The output digest of an upstream stage (which must have been built)."""
        rec = self.record(name)
        if rec is None:
            raise NotBuilt(name)
        return rec.output

    def path(self, name: str) -> Path:
        return self.store.object_path(self.output(name))

    def forget(self, *names: str) -> None:
        for n in names or tuple(self._keys):
            self._keys.pop(n, None)
            self._docs.pop(n, None)

    def memo(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = fn()
        return self._memo[name]

    # ----- running -------------------------------------------------------------------------
    def ensure(self, name: str) -> KeyRecord:
        """Build a stage unless its key already has an output (holding the key's lock)."""
        stage = STAGES[name]
        for dep in stage.deps:
            if self.record(dep) is None:
                raise NotBuilt(dep)
        key = self.key(name)
        with self.store.key_lock(key):
            rec = self.store.get_key(key)
            if rec is not None:
                return rec
            from . import faults
            faults.stage = name
            try:
                digest, meta = stage.build(self)
                return self.store.put_key(key, name, digest, meta)
            finally:
                faults.stage = "-"

    @property
    def backend(self) -> str:
        return self.memo("backend", lambda: choose_backend(self.project)[0])

    def image_record(self) -> dict[str, Any]:
        return self.memo("image-record", lambda: self.store.read_json(self.output("pull")))


def choose_backend(project: Project) -> tuple[str, str]:
    """The machine backend and why it was chosen."""
    if project.machine.backend:
        return project.machine.backend, "set in [machine].backend"
    if shutil.which("cartesi-machine"):
        return "cartesi", "cartesi-machine is on PATH"
    return "qemu", "cartesi-machine is not on PATH"


# ----- source digests (stat-memoised: hashing a large tarball once, not on every no-op) -------
def source_digest(store: Store, path: Path) -> str:
    """sha256 of a local file, remembered by (path, size, mtime, inode) in the store."""
    st = path.stat()
    memo_path = store.root / "memo.json"
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if ident in memo:
        return memo[ident]
    digest = sha256_file(path)
    memo[ident] = digest
    tmp = memo_path.with_name(f"memo.json.{os.getpid()}")
    tmp.write_text(json.dumps(memo, sort_keys=True))
    os.replace(tmp, memo_path)
    return digest


def file_digests(paths: Any) -> dict[str, str]:
    """{file name: sha256} of source files (the inputs of a compiled stage)."""
    return {p.name: sha256_file(p) for p in sorted(paths) if p.is_file()}


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON documents differ (``options.env.GREETING``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += changed_paths(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [prefix or "(all)"]


# ======================================================================================
# pull
# ======================================================================================
def _pull_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    img = ctx.project.image
    options = {"platform": img.platform}
    if img.path is not None:
        p = img.path
        if p.is_dir():
            # an OCI layout: its index.json names everything else by digest
            index = p / "index.json"
            if not index.is_file():
                raise CmbuildError("not an OCI image layout (no index.json)", where=str(p))
            inputs = {"layout-index": source_digest(ctx.store, index), "ref": img.ref, "digest": img.digest}
        else:
            inputs = {"tarball": source_digest(ctx.store, p), "ref": img.ref, "digest": img.digest}
        return options, inputs
    digest = img.digest
    if digest is None:
        if not ctx.allow_unpinned:
            raise CmbuildError(f"[image].ref = {img.ref!r} has no digest: the build would not be "
                               "reproducible", where="cartesi.toml",
                               hint="run `cmbuild lock` (or `doit lock`) to pin it, or pass --allow-unpinned")
        from .oci.pull import resolve_digest
        digest = ctx.memo("resolved-digest", lambda: resolve_digest(img.ref, img.platform, img.insecure))
        print(f"cmbuild: warning: {img.ref} is not pinned; using {digest}", file=sys.stderr)
    return options, {"ref": img.ref, "digest": digest}


def _pull_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from .oci.pull import pull
    img = ctx.project.image
    digest = ctx.key_inputs("pull")["inputs"].get("digest")
    out = pull(ctx.store, ref=img.ref, digest=digest, path=img.path, platform=img.platform,
               insecure=img.insecure, allow_unpinned=True, progress=ctx.progress)
    return out, {}


# ======================================================================================
# unpack: the layers flattened into one canonical tar
# ======================================================================================
def _unpack_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    rec = ctx.image_record()
    img = ctx.project.image
    layers = [{"digest": layer["digest"], "mediaType": layer.get("mediaType", "")} for layer in rec["layers"]]
    return ({"max_unpacked_size": img.max_unpacked_size, "mtime_clamp": img.mtime_clamp},
            {"layers": layers})


def _unpack_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from .oci.flatten import LayerInput, flatten
    img = ctx.project.image
    layers = [LayerInput(path=ctx.store.require(layer["digest"], "layer"), digest=layer["digest"],
                         media_type=layer["mediaType"])
              for layer in ctx.key_inputs("unpack")["inputs"]["layers"]]
    with ctx.store.tmpdir("unpack-") as scratch, ctx.store.writer() as w:
        stats = flatten(layers, w, scratch=scratch, max_unpacked_size=img.max_unpacked_size,
                        mtime_clamp=img.mtime_clamp)
    meta = {k: v for k, v in vars(stats).items() if isinstance(v, int)} if stats is not None else {}
    return w.digest, meta


# ======================================================================================
# config: the OCI runtime config.json
# ======================================================================================
DRIVES_DIR = "/run/drives"   # where the init mounts the extra drives (see cmbuild/guest/init.c)


def _config_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    m = ctx.project.machine
    mounts = {name: {"mount": d.mount, "writable": d.format == "ext2"}
              for name, d in ctx.project.extra_drives().items()}
    options = {"entrypoint": m.entrypoint, "cmd": m.cmd, "env": m.env, "workdir": m.workdir,
               "user": m.user, "mounts": mounts}
    return options, {"config": ctx.image_record()["config"], "rootfs": ctx.output("unpack")}


def _config_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from .oci.runtime_config import Mount, Overrides, make_runtime_config, read_user_db
    m = ctx.project.machine
    image_config = ctx.store.read_json(ctx.image_record()["config"])
    passwd, group = read_user_db(ctx.path("unpack"))
    mounts = [Mount(destination=d.mount or "", source=f"{DRIVES_DIR}/{name}", type="bind",
                    options=["rbind", "rw" if d.format == "ext2" else "ro"])
              for name, d in ctx.project.extra_drives().items()]
    overrides = Overrides(entrypoint=m.entrypoint, cmd=m.cmd, env=m.env or None, workdir=m.workdir, user=m.user)
    doc = make_runtime_config(image_config, overrides, passwd=passwd, group=group, extra_mounts=mounts)
    data = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
    return ctx.store.add_bytes(data), {}


# ======================================================================================
# app: the image's drive: an OCI bundle (rootfs/ + config.json)
# ======================================================================================
def _app_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    d = ctx.project.app_drive()
    return ({"format": d.format, "compression": d.compression, "extra_size": d.extra_size,
             "size": d.size},
            {"rootfs": ctx.output("unpack"), "config": ctx.output("config")})


def bundle_tar(rootfs_tar: Path, config_json: bytes, out: Any) -> None:
    """Write the bundle tar: ``config.json``, ``rootfs/`` and the rootfs entries under it,
    in sorted order ('config.json' < 'rootfs'), streaming the rootfs tar through. Every mount
    point the config needs is in the tree, so that the container runs on a read-only root
    too (a kernel without overlayfs, ``cmbuild.overlay=0``)."""
    from .oci.runtime_config import mount_points
    from .tarstream import prefix_tar
    prefix_tar(rootfs_tar, out, prefix="rootfs", extra_files={"config.json": config_json},
               mount_points=mount_points(json.loads(config_json)))


def _app_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    d = ctx.project.app_drive()
    cfg = ctx.path("config").read_bytes()
    rootfs = ctx.path("unpack")
    with ctx.store.tmpdir("app-") as tmp:
        img = tmp / "app.img"
        if d.format == "squashfs":
            # the bundle tar is streamed into mksquashfs/tar2sqfs: no second copy on disk
            drives.squashfs_from_writer(lambda f: bundle_tar(rootfs, cfg, f), img, d.compression)
        else:
            tar_path = tmp / "bundle.tar"
            with open(tar_path, "wb") as f:
                bundle_tar(rootfs, cfg, f)
            drives.make_drive(tar_path, img, d.format, d.compression, d.extra_size, label="app",
                              size=d.size)
        digest = ctx.store.adopt(img)
    return digest, {"format": d.format}


def _app_name(ctx: Context) -> str:
    return "app." + drives.EXTENSIONS[ctx.project.app_drive().format]


# ======================================================================================
# init: our PID 1, compiled for riscv64
# ======================================================================================
def _guest_dir() -> Path:
    from .guest import build as gb
    return Path(gb.__file__).resolve().parent


def _compiler(ctx: Context) -> str:
    """The riscv64 cross compiler's version (it shapes init, the stub and the boot shim)."""
    from .guest.build import compiler_version
    return ctx.memo("cc", compiler_version)


def _init_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    sources = file_digests(p for p in _guest_dir().iterdir() if p.suffix in (".c", ".h"))
    return {"compiler": _compiler(ctx)}, {"sources": sources}


def _init_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from .guest.build import build_init
    return build_init(ctx.store), {}


# ======================================================================================
# runtime: the runtime layer
# ======================================================================================
def _runtime_recipe(ctx: Context) -> Any:
    from .recipes import load_runtime_recipe
    return ctx.memo("runtime-recipe", lambda: load_runtime_recipe(recipes_root(), ctx.project.runtime.version))


def _runtime_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    r = ctx.project.runtime
    recipe_file = recipes_root() / "runtime" / f"{r.version}.toml"
    _runtime_recipe(ctx)  # validates, and names the versions available when it does not exist
    sdstub = _guest_dir() / "sdstub"
    stub = file_digests(sdstub.iterdir()) if sdstub.is_dir() else {}
    return ({"compression": r.compression, "version": r.version, "compiler": _compiler(ctx)},
            {"recipe": sha256_file(recipe_file), "init": ctx.output("init"), "sdstub": stub})


def _runtime_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from .stages.runtime import build_runtime
    digest = build_runtime(ctx.store, _runtime_recipe(ctx), init_digest=ctx.output("init"),
                           compression=ctx.project.runtime.compression)
    return digest, {}


# ======================================================================================
# kernel
# ======================================================================================
def _kernel_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    from .stages import kernel as k
    backend = ctx.backend
    if backend == "cartesi" and ctx.project.machine.ram_image is not None:
        return {"backend": backend}, {"ram_image": source_digest(ctx.store, ctx.project.machine.ram_image)}
    recipe_file = k.recipe_path(recipes_root(), backend)
    inputs: dict[str, Any] = {"recipe": sha256_file(recipe_file)}
    if backend == "qemu":
        inputs["shim"] = file_digests(k.shim_sources())
        inputs["compiler"] = _compiler(ctx)
    return {"backend": backend}, inputs


def _kernel_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from .stages import kernel as k
    if ctx.backend == "cartesi" and ctx.project.machine.ram_image is not None:
        return k.build_kernel_from_file(ctx.store, ctx.project.machine.ram_image), {}
    return k.build_kernel(ctx.store, recipes_root(), ctx.backend), {}


# ======================================================================================
# extra drives: [drives.<name>] with builder directory | tar | empty
# ======================================================================================
def _drive_stage(name: str) -> Stage:
    def doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
        d = ctx.project.drives[name]
        options = {"builder": d.builder, "format": d.format, "compression": d.compression,
                   "extra_size": d.extra_size, "size": d.size}
        if d.builder == "directory":
            return options, {"directory": tree_digest(d.directory, modes=True)}
        if d.builder == "tar":
            return options, {"tar": source_digest(ctx.store, d.filename)}
        return options, {}

    def build(ctx: Context) -> tuple[str, dict[str, Any]]:
        from .oci.flatten import LayerInput, flatten
        from .tarstream import directory_tar, empty_tar
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

    return Stage(f"drive-{name}", 1, (), f"the {name} drive ([drives.{name}])", doc, build,
                 lambda ctx: f"{name}.{drives.EXTENSIONS[ctx.project.drives[name].format]}",
                 ("cmbuild.tarstream", "cmbuild.drives", "cmbuild.oci.flatten", "cmbuild.oci.tarutil"))


# ======================================================================================
# snapshot (cartesi backend)
# ======================================================================================
def machine_drives(ctx: Context) -> list[tuple[str, Path, bool]]:
    """(label, path, read_only) of every drive, in machine order: root, app, extras."""
    out = [("root", ctx.path("runtime"), True),
           ("app", ctx.path("app"), ctx.project.app_drive().format != "ext2")]
    for name, d in ctx.project.extra_drives().items():
        out.append((name, ctx.path(f"drive-{name}"), d.format != "ext2"))
    return out


def _snapshot_doc(ctx: Context) -> tuple[Any, dict[str, Any]]:
    from .machines import cartesi as cm
    m = ctx.project.machine
    version = ctx.memo("cm-version", cm.installed_version)
    if version is None:
        raise CmbuildError("snapshots are made by cartesi-machine, which is not installed",
                           hint=f"{cm.INSTALL_HINT}; or set [machine].backend = \"qemu\" and use "
                                "`cmbuild run` to run the container under QEMU")
    drives_in = {label: ctx.output("runtime" if label == "root" else "app" if label == "app" else f"drive-{label}")
                 for label, _p, _ro in machine_drives(ctx)}
    options = {"ram_length": m.ram_length, "bootargs": m.bootargs, "max_mcycle": m.max_mcycle,
               "assert_rolling_template": m.assert_rolling_template,
               "emulator": ".".join(map(str, version))}
    return options, {"kernel": ctx.output("kernel"), "drives": drives_in}


def _snapshot_build(ctx: Context) -> tuple[str, dict[str, Any]]:
    from .machines import cartesi as cm
    m = ctx.project.machine
    drives_list = [cm.Drive(label=label, path=p, read_only=ro) for label, p, ro in machine_drives(ctx)]
    with ctx.store.tmpdir("snapshot-") as tmp:
        out_dir = tmp / "image"
        result = cm.snapshot(version=ctx.memo("cm-version", cm.installed_version),
                             ram_image=ctx.path("kernel"), ram_length=str(m.ram_length),
                             drives=drives_list, bootargs=m.bootargs, store_dir=out_dir,
                             max_mcycle=m.max_mcycle, assert_rolling_template=m.assert_rolling_template,
                             # the machine's console is a log here: standard error
                             console=cm.stream_sink(sys.stderr), timeout=m.timeout)
        root_hash = result.root_hash
        digest = ctx.store.add_tree(out_dir)
    return digest, {"root_hash": root_hash}


STAGE_LIST: list[Stage] = [
    Stage("pull", 1, (), "fetch the image (registry, OCI layout or docker-save tarball), verify every blob",
          _pull_doc, _pull_build, modules=("cmbuild.oci.pull", "cmbuild.oci.image", "cmbuild.oci.layout",
                                            "cmbuild.oci.dockersave", "cmbuild.oci.registry",
                                            "cmbuild.oci.auth", "cmbuild.oci.blobs", "cmbuild.oci.reference")),
    Stage("unpack", 1, ("pull",), "flatten the layers (whiteouts applied) into one canonical tar",
          _unpack_doc, _unpack_build, modules=("cmbuild.oci.flatten", "cmbuild.oci.tarutil")),
    Stage("config", 1, ("pull", "unpack"), "the OCI runtime config.json from the image config and [machine]",
          _config_doc, _config_build, modules=("cmbuild.oci.runtime_config",)),
    Stage("app", 1, ("unpack", "config"), "the app drive: rootfs/ + config.json as squashfs or ext2",
          _app_doc, _app_build, _app_name, ("cmbuild.tarstream", "cmbuild.drives")),
    Stage("init", 1, (), "our init (PID 1), compiled for riscv64", _init_doc, _init_build,
          modules=("cmbuild.guest.build",)),
    Stage("runtime", 1, ("init",), "the runtime layer: init + crun + busybox, read-only squashfs",
          _runtime_doc, _runtime_build, lambda ctx: "root.sqfs",
          ("cmbuild.stages.runtime", "cmbuild.elf", "cmbuild.debian", "cmbuild.drives")),
    Stage("kernel", 1, (), "the machine's kernel (Cartesi's, or Debian's with a boot shim for QEMU)",
          _kernel_doc, _kernel_build, modules=("cmbuild.stages.kernel", "cmbuild.debian")),
    Stage("snapshot", 1, ("kernel", "runtime", "app"), "the stored machine (cartesi-machine --store) and its root hash",
          _snapshot_doc, _snapshot_build, lambda ctx: "image", ("cmbuild.machines.cartesi",)),
]
STAGES: dict[str, Stage] = {s.name: s for s in STAGE_LIST}


def register_drives(project: Project) -> list[str]:
    """Add one stage per extra drive; returns their names."""
    names = []
    for name in project.extra_drives():
        stage = _drive_stage(name)
        STAGES[stage.name] = stage
        names.append(stage.name)
    snap = STAGES["snapshot"]
    snap.deps = ("kernel", "runtime", "app", *names)
    return names


def build_order(project: Project, target: str) -> list[str]:
    """The stages ``target`` needs, upstream first."""
    extra = register_drives(project)
    order: list[str] = []

    def visit(n: str) -> None:
        if n in order:
            return
        for d in STAGES[n].deps:
            visit(d)
        order.append(n)

    if target in ("run", "build"):
        for n in ("app", "runtime", "kernel", *extra):
            visit(n)
    else:
        visit(target)
    return order
