"""The stages of a build and how their keys chain (osbuild / Nix style).

A stage is (name, implementation version, options, upstream stages) plus a ``build`` function.
Its key is ``stage_key(name, version, options, inputs)`` where ``inputs`` are the *output
digests* of the upstream stages (or the digests of source files). Because outputs are content
addressed, an upstream stage that re-runs and produces the same bytes leaves every downstream
key unchanged: early cutoff comes for free.

This module is the machinery only: :class:`Stage`, :class:`Context` (one build: keys, records,
running a stage under its key's lock), and :class:`Graph`, the stages of one project, made by
:func:`project_graph` from the stage modules in :mod:`cmbuild.stages` (one module per stage,
each holding its key inputs and its build function). It knows nothing of doit:
:mod:`cmbuild.tasks` turns the graph into doit tasks, and :mod:`cmbuild.audit` rebuilds it in
a fresh store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .config import Project
from .errors import CmbuildError
from .store import KeyRecord, Store, sha256_file, stage_key



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
    drive_label: str | None = None  # the output is a drive of the machine, with this label
    read_only: Callable[["Context"], bool] = lambda ctx: True  # (drives) the machine may not write it
    # (remote cache) store objects pushed along with the output, which later stages read
    remote_extras: Callable[["Context"], list[str]] | None = None
    # (remote cache) checks an output fetched from the remote, with its metadata; raises
    check_fetched: Callable[["Context", str, dict[str, Any], str], None] | None = None
    # (remote cache) on a hit, download the output only when a stage here reads it (an
    # intermediate output that later stages, themselves found on the remote, never read)
    remote_lazy: bool = False
    # what the key is named after (default: the stage's name): a service's own image goes
    # through pull, unpack and squashfs as the app's does, under the same keys
    kind: str | None = None

    @property
    def key_name(self) -> str:
        return self.kind or self.name


@dataclass(frozen=True)
class ImageUse:
    """Which image a pull, unpack or squashfs stage works on: the app's (``[image]``) or the
    own image of a service (``[services.<name>]``), whose stages are ``<stage>-<name>``."""

    service: str | None = None

    def name(self, base: str) -> str:
        return base if self.service is None else f"{base}-{self.service}"

    def image(self, project: Project) -> Any:
        return project.image if self.service is None else project.services[self.service]

    def drive(self, project: Project) -> Any:
        from .config import DriveConfig
        return project.app_drive() if self.service is None else DriveConfig(builder="image")

    @property
    def label(self) -> str:
        return "app" if self.service is None else f"svc-{self.service}"

    @property
    def table(self) -> str:
        return "[image]" if self.service is None else f"[services.{self.service}]"


APP = ImageUse()


def service_images(project: Project) -> dict[str, ImageUse]:
    """The image each service runs: the app's own when it is the same image, else the first
    service's that names it (one image, one drive), else its own."""
    from .config import image_identity
    seen = {image_identity(project.image): APP}
    out = {}
    for name, svc in project.services.items():
        out[name] = seen.setdefault(image_identity(svc), ImageUse(name))
    return out


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


class Graph:
    """The stages of one project by name, in the order they were given (upstream first)."""

    def __init__(self, stages: list[Stage]):
        self.stages: dict[str, Stage] = {}
        for s in stages:
            missing = [d for d in s.deps if d not in self.stages]
            if missing:
                raise CmbuildError(f"stage {s.name} needs {missing}, which come later or not at all")
            self.stages[s.name] = s

    def __getitem__(self, name: str) -> Stage:
        try:
            return self.stages[name]
        except KeyError:
            raise CmbuildError(f"no stage named {name!r}; stages: {', '.join(self.stages)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.stages

    def __iter__(self) -> Iterator[str]:
        return iter(self.stages)

    def order(self, *targets: str) -> list[str]:
        """The stages ``targets`` need, upstream first."""
        order: list[str] = []

        def visit(n: str) -> None:
            if n in order:
                return
            for d in self[n].deps:
                visit(d)
            order.append(n)

        for t in targets:
            visit(t)
        return order

    def drives(self) -> list[str]:
        """The stages that make a drive of the machine, in machine order (root, app, config,
        then the extra drives)."""
        return [n for n in self.stages if self.stages[n].drive_label is not None]


def project_graph(project: Project) -> Graph:
    """The stages that build ``project``, as the README's pipeline draws them."""
    from .stages import (config, drives, init, kernel, pull, rollups, runtime, services, snapshot,
                         squashfs, unpack)
    extra = [drives.stage(name) for name in project.extra_drives()]
    own = sorted({u for u in service_images(project).values() if u.service is not None},
                 key=lambda u: list(project.services).index(u.service))
    images = [s for u in own for s in (pull.stage(u), unpack.stage(u))]
    svc = ([*(squashfs.stage(u) for u in own), services.stage(project)] if project.services else [])
    # drives in machine order: root (the runtime layer) first, then app, config, the extras,
    # then the services' image drives and their configs
    base = [pull.stage(), unpack.stage(), *images, init.stage(), rollups.stage(), runtime.stage(),
            squashfs.stage(), config.stage(), kernel.stage(), *extra, *svc]
    machine = [s.name for s in base if s.drive_label is not None] + ["kernel"]
    return Graph([*base, snapshot.stage(tuple(machine))])


@dataclass
class Context:
    """One build: the project, its folder, the store, its stage graph, and the keys computed
    so far."""

    project: Project
    project_dir: Path
    store: Store
    allow_unpinned: bool = False
    progress: bool = True
    graph: Graph = field(default=None)  # type: ignore[assignment]  # made from the project
    planned: frozenset[str] | None = None   # the stages this run may build (None: any of them)
    _keys: dict[str, str] = field(default_factory=dict)
    _docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    _memo: dict[str, Any] = field(default_factory=dict)
    _offers: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    # layer blob digest -> its uncompressed tar, inflated while the pull stage downloaded it,
    # for the unpack stage of the same run (in the run's scratch folder, see scratch())
    inflated: dict[str, Path] = field(default_factory=dict)
    # the remote stage cache (see :mod:`cmbuild.remote`); opened on first use
    use_remote: bool = True

    def __post_init__(self) -> None:
        if self.graph is None:
            self.graph = project_graph(self.project)

    @property
    def remote(self) -> Any:
        """The remote stage cache of this build, or None."""
        if not self.use_remote:
            return None
        from .remote import open_remote
        return self.memo("remote", lambda: open_remote(self.project))

    # ----- keys ----------------------------------------------------------------------------
    def key(self, name: str) -> str:
        if name not in self._keys:
            stage = self.graph[name]
            options, inputs = stage.key_doc(self)
            self._docs[name] = {"options": options, "inputs": inputs}
            version = f"{stage.version}+{implementation_digest(stage)}"
            self._keys[name] = stage_key(stage.key_name, version, options, inputs)
        return self._keys[name]

    def key_inputs(self, name: str) -> dict[str, Any]:
        self.key(name)
        return self._docs[name]

    def record(self, name: str) -> KeyRecord | None:
        """The stage's record for its current key: its output in the store, or (while the
        remote cache it names is in use) a pointer to an output the remote holds."""
        key = self.key(name)
        return self.store.get_key(key) or self.pointer(key)

    def pointer(self, key: str) -> KeyRecord | None:
        """A pointer record (:meth:`Store.put_pointer`) of this build's remote, or None."""
        remote = self.remote
        if remote is None:
            return None
        rec = self.store.get_pointer(key)
        return rec if rec is not None and rec.meta["remote"].startswith(remote.spec + "@") else None

    def output(self, name: str) -> str:
        """The output digest of an upstream stage (which must have been built)."""
        rec = self.record(name)
        if rec is None:
            raise NotBuilt(name)
        return rec.output

    def path(self, name: str) -> Path:
        """The output of an upstream stage in the store (downloaded now if it was only
        pointed to on the remote)."""
        digest = self.output(name)
        if not self.store.has(digest):
            digest = self.materialize(name).output
        return self.store.object_path(digest)

    def materialize(self, name: str) -> KeyRecord:
        """Bring the output that a pointer names into the store: from the remote, else built
        here; it must be the output the pointer named (later keys were made from it)."""
        key = self.key(name)
        said = self.pointer(key) or self.store.get_pointer(key)
        planned = self.planned
        self.planned = frozenset({name})   # nothing else is made on the way
        try:
            rec = self.ensure(name, lazy=False)
        finally:
            self.planned = planned
        self.store.drop_pointer(key)
        if said is not None and rec.output != said.output:
            raise CmbuildError(f"stage '{name}' gives {rec.output}, but the remote cache said "
                               f"{said.output} ({said.meta.get('remote')}) and later stages were "
                               "keyed on that", where=name,
                               hint="run the build again: it now uses the output made here")
        return rec

    def forget(self, *names: str) -> None:
        for n in names or tuple(self._keys):
            self._keys.pop(n, None)
            self._docs.pop(n, None)

    def memo(self, name: str, fn: Callable[[], Any]) -> Any:
        if name not in self._memo:
            self._memo[name] = fn()
        return self._memo[name]

    def scratch(self) -> Path:
        """A folder in the store's tmp for what one stage leaves to a later one in this run,
        removed when the process ends (or, after a crash, by :meth:`Store.clean_tmp`)."""
        def make() -> Path:
            import atexit
            import tempfile
            path = Path(tempfile.mkdtemp(prefix="run-", dir=self.store.tmp))
            atexit.register(shutil.rmtree, path, True)
            return path
        return self.memo("scratch", make)

    def plans(self, name: str) -> bool:
        """Whether this run may build stage ``name``."""
        return self.planned is None or name in self.planned

    def offer(self, name: str, digest: str, meta: dict[str, Any]) -> None:
        """Called by a stage's build that made the output of stage ``name`` on the way (a
        store object, ``digest``), because it had everything at hand: once the running stage
        is stored, that output is recorded under ``name``'s own key (which may depend on the
        running stage's output), unless that key has an output already."""
        self._offers.append((name, digest, meta))

    # ----- running -------------------------------------------------------------------------
    def ensure(self, name: str, lazy: bool = True) -> KeyRecord:
        """Build a stage unless its key already has an output (holding the key's lock).
        ``lazy``: a stage marked ``remote_lazy`` that the remote cache holds gets a pointer
        record, not its bytes (:meth:`path` downloads them when a stage reads them)."""
        stage = self.graph[name]
        for dep in stage.deps:
            if self.record(dep) is None:
                raise NotBuilt(dep)
        key = self.key(name)
        from . import faults
        with self.store.key_lock(key):
            rec = self.store.get_key(key)
            remote = self.remote
            if rec is not None:
                if remote is not None and remote.push and "remote" not in rec.meta:
                    rec = remote.offer(self, name, key, rec)   # built before pushing was on
                return rec
            if remote is not None:
                if lazy and stage.remote_lazy:
                    rec = self.pointer(key) or remote.point(self, name, key)
                    if rec is not None:
                        return rec
                rec = remote.fetch(self, name, key)
                if rec is not None:
                    return rec
            faults.stage = name
            try:
                self._offers.clear()
                digest, meta = stage.build(self)
                rec = self.store.put_key(key, name, digest, meta)
            finally:
                faults.stage = "-"
            if remote is not None:
                rec = remote.offer(self, name, key, rec)
        self._record_offers()
        return rec

    def _record_offers(self) -> None:
        """Record the outputs offered by the stage just stored (see :meth:`offer`)."""
        from . import faults
        offers, self._offers = list(self._offers), []
        for name, digest, meta in offers:
            try:
                key = self.key(name)
            except NotBuilt:
                continue   # its other inputs are missing: the object waits in the store
            with self.store.key_lock(key):
                if self.store.get_key(key) is None:
                    faults.stage = name
                    try:
                        rec = self.store.put_key(key, name, digest, meta)
                    finally:
                        faults.stage = "-"
                    if self.remote is not None:
                        self.remote.offer(self, name, key, rec)

    @property
    def backend(self) -> str:
        return self.memo("backend", lambda: choose_backend(self.project)[0])

    def image_record(self, use: ImageUse = APP) -> dict[str, Any]:
        return self.memo(f"image-record:{use.service}",
                         lambda: self.store.read_json(self.output(use.name("pull"))))

    def image_config(self, use: ImageUse = APP) -> dict[str, Any]:
        return self.memo(f"image-config:{use.service}",
                         lambda: self.store.read_json(self.image_record(use)["config"]))

    def bootargs(self) -> list[str]:
        """The kernel command line words of this project's machine (after each backend's own):
        ``cmbuild.rollups=1`` when init must start the built-in rollups server, then
        ``[machine].bootargs`` (last, so that the user's words win)."""
        r = self.project.rollups
        return (["cmbuild.rollups=1"] if r is not None and r.server == "builtin" else []) + \
            list(self.project.machine.bootargs)

    @property
    def rolling_template(self) -> bool:
        """A snapshot is a rollups template: the machine runs until the app asks for its first
        input (``--assert-rolling-template``)."""
        return self.project.machine.assert_rolling_template or self.project.rollups is not None

    def machine_drives(self) -> list[tuple[str, Path, bool]]:
        """(label, path, read_only) of every drive, in machine order: root, app, config,
        then the extra drives."""
        return [(self.graph[n].drive_label or n, self.path(n), self.graph[n].read_only(self))
                for n in self.graph.drives()]


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


def compiler(ctx: Context) -> str:
    """The riscv64 cross compiler's version (it shapes init, the stub and the boot shim)."""
    from .guest.build import compiler_version
    return ctx.memo("cc", compiler_version)
