"""The doit task graph: one task per stage, plus build, snapshot, boot (what ``doit run`` and
``cmbuild run`` start), hash, lock, audit and verify.

Each stage task is up to date when its key (computed from its options and the output digests
of its inputs) has an output in the store, that output is published in ``.cartesi/`` where it
has a place there, and ``cartesi.lock`` records it. ``doit info <stage>`` says which of these
is not the case, and which inputs changed since the lock was written.
"""

from __future__ import annotations

import atexit
from dataclasses import dataclass
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from doit.exceptions import TaskFailed

from . import __version__, drives
from .config import CONFIG_NAME, load_project
from .errors import CmbuildError
from .pipeline import Context, NotBuilt, changed_paths, choose_backend
from .publish import LOCK_VERSION, published_ok, publish, read_lock, write_lock
from .store import Store

DEFAULT_TASK = "snapshot"
QEMU_MIN_RAM = 512 << 20


def _say(msg: str) -> None:
    print(f"cmbuild: {msg}", file=sys.stderr, flush=True)


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit).absolute()
    env = os.environ.get("CMBUILD_CONFIG")
    return Path(env).absolute() if env else Path.cwd() / CONFIG_NAME


def open_context(path: Path, allow_unpinned: bool = False) -> Context:
    project = load_project(path)
    store = Store(project.cache.dir)
    store.clean_tmp()
    return Context(project, path.parent, store, allow_unpinned=allow_unpinned,
                   progress=sys.stderr.isatty())


# ----- the lock file -----------------------------------------------------------------------
def tool_versions(backend: str) -> dict[str, str]:
    tools = ["mksquashfs", "tar2sqfs", "genext2fs", "riscv64-linux-gnu-gcc"]
    tools.append("cartesi-machine" if backend == "cartesi" else "qemu-system-riscv64")
    return {t: drives.tool_version(t) for t in tools}


def update_lock(ctx: Context, names: list[str]) -> None:
    doc = read_lock(ctx.project_dir)
    stages = doc.get("stages", {}) if isinstance(doc.get("stages"), dict) else {}
    for name in names:
        rec = ctx.record(name)
        if rec is None:
            continue
        entry = {"key": ctx.key(name), **ctx.key_inputs(name), "output": rec.output}
        if rec.meta.get("root_hash"):
            entry["root_hash"] = rec.meta["root_hash"]
        if rec.meta.get("remote"):
            # where the output is shared: fetched from there, or pushed there after the build
            entry["remote"] = rec.meta["remote"]
        stages[name] = entry
    valid = set(ctx.graph)
    stages = {k: v for k, v in stages.items() if k in valid}
    old = doc
    doc = {"lock_version": LOCK_VERSION, "cmbuild": __version__, "stages": stages,
           "backend": ctx.backend, "tools": ctx.memo("tools", lambda: tool_versions(ctx.backend))}
    if "pull" in stages:
        try:
            rec = ctx.image_record()
            doc["image"] = {k: rec.get(k) for k in ("index", "manifest", "config", "layers", "diff_ids",
                                                    "platform")}
        except NotBuilt:   # pull has not run yet in this build: keep what the lock said
            if "image" in old:
                doc["image"] = old["image"]
    if "runtime" in stages:
        from .stages.runtime import _recipe
        doc["runtime_recipe"] = _recipe(ctx).model_dump(mode="json")
    if "snapshot" in stages and stages["snapshot"].get("root_hash"):
        doc["root_hash"] = stages["snapshot"]["root_hash"]
    write_lock(ctx.project_dir, doc)


# ----- stage tasks -------------------------------------------------------------------------
class StageCheck:
    """doit ``uptodate`` object: True when the stage's output for its current key exists,
    is published and is recorded in cartesi.lock. ``str()`` says why not (doit info)."""

    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name, self.reason = ctx, name, "not checked yet"

    def __call__(self) -> bool:
        ctx, name = self.ctx, self.name
        try:
            key = ctx.key(name)
        except NotBuilt as e:
            self.reason = f"its input stage '{e.stage}' has not been built yet"
            return False
        except CmbuildError as e:
            self.reason = f"its inputs cannot be read: {e}"
            return False
        rec = ctx.store.get_key(key) or ctx.pointer(key)
        locked = read_lock(ctx.project_dir).get("stages", {}).get(name)
        if rec is None:
            why = "no output in the store for its key " + key[7:19]
            if locked:
                changed = changed_paths({"options": locked.get("options"), "inputs": locked.get("inputs")},
                                ctx.key_inputs(name))
                if changed:
                    why += "; changed since cartesi.lock: " + ", ".join(changed)
            else:
                why += " (first build)"
            self.reason = why
            return False
        pub = ctx.graph[name].publish_as(ctx)
        if pub and not published_ok(ctx.project_dir, pub, ctx.store, rec.output):
            self.reason = f".cartesi/{pub} is missing or is not the built output"
            return False
        if not locked or locked.get("key") != key or locked.get("output") != rec.output:
            self.reason = "cartesi.lock does not record this output"
            return False
        remote = ctx.remote
        if remote is not None and remote.push and remote.broken is None and "remote" not in rec.meta:
            self.reason = f"not pushed to the remote cache {remote.spec} yet"
            return False
        self.reason = "up to date"
        return True

    def __str__(self) -> str:
        return f"stage '{self.name}': {self.reason}"


class StageAction:
    def __init__(self, ctx: Context, name: str):
        self.ctx, self.name = ctx, name

    def __call__(self) -> Any:
        ctx, name = self.ctx, self.name
        t0 = time.monotonic()
        try:
            before = ctx.record(name)
            rec = ctx.ensure(name)
            pub = ctx.graph[name].publish_as(ctx)
            if pub:
                publish(ctx.project_dir, pub, ctx.store, rec.output)
            update_lock(ctx, [name])
        except NotBuilt as e:
            return TaskFailed(f"stage '{e.stage}' has no output in the store; build it first")
        except CmbuildError as e:
            return TaskFailed(f"{name}: {e}")
        remote = ctx.remote
        if before is not None:
            what = "restored"
        elif remote is not None and name in remote.fetched:
            what = f"downloaded from {remote.spec}"
        elif remote is not None and name in remote.pointed:
            what = f"found on {remote.spec}, not downloaded (no stage here has read it yet)"
        else:
            what = "built"
        size = ""
        obj = ctx.store.object_path(rec.output)
        if obj.is_file():
            size = f", {obj.stat().st_size / 1e6:.2f} MB"
        if remote is not None and name in remote.fetched and before is None:
            size += f" ({remote.fetched[name] / 1e6:.2f} MB received)"
        where = f" -> .cartesi/{pub}" if pub else ""
        _say(f"{name}: {what} {rec.output[7:19]}{size} in {time.monotonic() - t0:.1f} s{where}")
        if rec.meta.get("root_hash"):
            _say(f"root hash: {rec.meta['root_hash']}")
        return None


def stage_task(ctx: Context, name: str) -> dict[str, Any]:
    stage = ctx.graph[name]
    return {"name": name, "doc": stage.doc, "actions": [StageAction(ctx, name)],
            "uptodate": [StageCheck(ctx, name)], "task_dep": list(stage.deps), "verbosity": 2}


# ----- commands ----------------------------------------------------------------------------
_EXIT_CODE: dict[str, int] = {}


def _exit_with_container_code() -> None:
    code = _EXIT_CODE.get("run")
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def machine_words(ctx: Context) -> str:
    """Which backend and kernel this build uses, and why: said by ``build`` and ``run``."""
    backend, why = choose_backend(ctx.project)
    ram_image = ctx.project.machine.ram_image
    if backend == "cartesi" and ram_image is not None:
        kernel = f"{ram_image} ([machine].ram_image)"
    else:
        from .stages.kernel import DEFAULT_KERNELS
        kernel = f"recipes/kernel/{DEFAULT_KERNELS[backend]}.toml"
        if backend == "cartesi":
            kernel += " (Cartesi's, pinned by sha256)"
    return f"backend: {backend} ({why}); kernel: {kernel}"


def build_action(ctx: Context) -> None:
    _say(machine_words(ctx))


@dataclass
class RunRequest:
    """What ``cmbuild run`` was asked beyond the project: ``cmd`` (``run -- CMD ARGS``: the
    image's Cmd replaced, as ``docker run IMAGE CMD`` does) or ``shell`` (``run --shell``: the
    image's /bin/sh with the console as its input: this terminal, or on QEMU a pipe)."""

    cmd: list[str] | None = None
    shell: bool = False

    @property
    def interactive(self) -> bool:
        return self.shell


def _drives_for(ctx: Context, req: RunRequest) -> list[tuple[str, Path, bool]]:
    """The machine's drives; for a ``run --shell`` or ``run -- CMD``, a config drive of its own
    (kept in the store by content, never published nor locked): the project's drives and
    cartesi.lock stay as they are."""
    dlist = ctx.machine_drives()
    if not req.shell and req.cmd is None:
        return dlist
    from .stages.config import LABEL, drive_bytes, runtime_config
    changes: dict[str, Any] = ({"entrypoint": ["/bin/sh"], "cmd": None} if req.shell
                               else {"cmd": req.cmd})
    doc = runtime_config(ctx, **changes)
    if req.shell:
        doc["process"]["args"] = ["/bin/sh"]
    path = ctx.store.object_path(ctx.store.add_bytes(drive_bytes(doc)))
    _say("running " + " ".join(doc["process"]["args"]) + " in the container (not the project's command)")
    return [(label, path if label == LABEL else p, ro) for label, p, ro in dlist]


def run_action(ctx: Context, req: RunRequest | None = None) -> Any:
    """Boot the machine and run the container. The command ends with the container's exit
    code when init reported it, else with 124 (timeout) or 125 (the machine ended without the
    container's end), never 0 for a failure (see cmbuild.machines.outcome)."""
    req = req or RunRequest()
    backend, _why = choose_backend(ctx.project)
    _say(machine_words(ctx))
    m = ctx.project.machine
    try:
        dlist = _drives_for(ctx, req)
        if backend == "qemu":
            from .machines import qemu
            kernel = ctx.store.read_json(ctx.output("kernel"))
            result = qemu.run(kernel=ctx.store.object_path(kernel["kernel"]),
                              initrd=ctx.store.object_path(kernel["initrd"]),
                              # drives are store objects: a writable one is written in a
                              # throw-away overlay, never in the store (cartesi-machine without
                              # `shared` behaves the same)
                              drives=[qemu.Drive(label=label, path=p, read_only=ro, discard_writes=True)
                                      for label, p, ro in dlist],
                              append=list(kernel.get("cmdline", [])) + ctx.bootargs(),
                              ram=f"{max(m.ram_length, QEMU_MIN_RAM) >> 20}M", timeout=m.timeout,
                              stream=sys.stdout, interactive=req.interactive)
            outcome = result.outcome()
        else:
            from .machines import cartesi as cm
            if req.interactive and not os.isatty(0):
                return TaskFailed("run --shell: on the cartesi backend the shell needs a terminal "
                                  "(cartesi-machine -i opens one); run it from a terminal, or pipe "
                                  "commands into `cmbuild run --shell` with backend = \"qemu\"")
            result = cm.run(version=cm.require_cartesi_machine("`cmbuild run` on the cartesi backend"),
                            ram_image=ctx.path("kernel"), ram_length=str(m.ram_length),
                            drives=[cm.Drive(label=label, path=p, read_only=ro) for label, p, ro in dlist],
                            bootargs=ctx.bootargs(), max_mcycle=m.max_mcycle, timeout=m.timeout,
                            final_hash=not req.interactive,  # -i: no hashes (not reproducible)
                            interactive=req.interactive)
            outcome = result.outcome()
            if result.final_hash:
                _say(f"final hash: {result.final_hash}")
            if result.cycles is not None:
                _say(f"cycles: {result.cycles}")
    except NotBuilt as e:
        return TaskFailed(f"stage '{e.stage}' has no output in the store; build it first")
    except CmbuildError as e:
        return TaskFailed(f"run: {e}")
    if outcome.ok:
        _say(outcome.reason)
    else:
        _say(f"error: {outcome.reason}")
        _say(f"exit code {outcome.code}")
    _EXIT_CODE["run"] = outcome.code
    atexit.register(_exit_with_container_code)
    return None


def snapshot_qemu_action(ctx: Context) -> Any:
    from .machines.cartesi import INSTALL_HINT
    _backend, why = choose_backend(ctx.project)
    return TaskFailed("snapshot: snapshots are made by the Cartesi backend (cartesi-machine), and this "
                      f"build uses qemu ({why}).\n  hint: {INSTALL_HINT}; meanwhile `cmbuild run` "
                      "(`doit run`) runs the container under QEMU")


def hash_action(ctx: Context, json_out: bool) -> Any:
    """The root hash of the snapshot that the current configuration builds, never a stale one:
    when the inputs changed since the last snapshot, say so and fail."""
    why = None
    rec = None
    try:
        rec = ctx.record("snapshot")
    except NotBuilt as e:
        why = f"its input stage '{e.stage}' has no output for the current configuration"
    except CmbuildError as e:
        why = str(e)
    if rec is None:
        locked = read_lock(ctx.project_dir).get("stages", {}).get("snapshot")
        if not locked:
            return TaskFailed("hash: no snapshot has been built; run `cmbuild snapshot` first "
                              "(snapshots need the Cartesi backend)" + (f" ({why})" if why else ""))
        if why is None:
            changed = changed_paths({"options": locked.get("options"), "inputs": locked.get("inputs")},
                                    ctx.key_inputs("snapshot"))
            why = "changed since: " + (", ".join(changed) or "its stage implementation")
        return TaskFailed(f"hash: the snapshot in cartesi.lock ({locked.get('root_hash', '?')}) is out "
                          f"of date: {why}; run `cmbuild snapshot` to build the current one")
    root_hash = rec.meta.get("root_hash")
    if not root_hash:
        return TaskFailed("hash: the stored snapshot has no root hash; run `cmbuild snapshot` again")
    # as cartesi-machine-stored-hash (which `cartesi hash` uses) prints it: 0x<64 hex>
    hexhash = root_hash if root_hash.startswith("0x") else "0x" + root_hash
    print(json.dumps({"hash": hexhash}) if json_out else hexhash, flush=True)
    return None


def lock_action(ctx: Context, cfg: Path) -> Any:
    images = [(None, ctx.project.image), *ctx.project.services.items()]
    todo = [(name, img) for name, img in images if img.ref is not None and img.path is None]
    if not todo:
        return TaskFailed("lock: [image].ref names no registry image to pin (local sources are "
                          "pinned by their content already)")
    for name, img in todo:
        try:
            from .oci.pull import resolve_digest
            from .pin import pin_config
            digest = resolve_digest(img.ref, img.platform, img.insecure)
            pin_config(cfg, digest, name)
        except CmbuildError as e:
            return TaskFailed(f"lock: {e}")
        _say(f"pinned {img.ref} to {digest} in {cfg.name}" + (f" ([services.{name}])" if name else ""))
    return None


def audit_action(ctx: Context, stage: str) -> Any:
    from .audit import audit
    try:
        ok = audit(ctx, only=stage or None)
    except CmbuildError as e:
        return TaskFailed(f"audit: {e}")
    return None if ok else TaskFailed("audit: outputs differ from cartesi.lock (see the table above)")


def verify_action(ctx: Context, repair: bool) -> Any:
    from .audit import verify_store
    bad = verify_store(ctx.store, repair=repair)
    if bad and not repair:
        return TaskFailed(f"verify: {len(bad)} corrupt object(s); run with --repair to remove them")
    return None


def make_tasks(ctx: Context, cfg: Path, run: RunRequest | None = None) -> list[dict[str, Any]]:
    project = ctx.project
    graph = ctx.graph
    drive_stages = graph.drives()
    order = graph.order(*drive_stages, "kernel")
    tasks = [stage_task(ctx, n) for n in order]
    tasks.append({"name": "app", "doc": "the image's drive and its config drive (squashfs + config)",
                  "actions": None, "task_dep": ["squashfs", "config"]})
    tasks.append({"name": "build", "doc": "build every drive and the kernel (all that run and snapshot need)",
                  "actions": [(build_action, [ctx])], "verbosity": 2,
                  "task_dep": [*drive_stages, "kernel"]})
    backend, _why = choose_backend(project)
    if backend == "cartesi":
        snap = stage_task(ctx, "snapshot")
        snap["task_dep"] = ["build"]
        tasks.append(snap)
    else:
        tasks.append({"name": "snapshot", "doc": graph["snapshot"].doc, "task_dep": ["build"],
                      "actions": [(snapshot_qemu_action, [ctx])], "uptodate": [False], "verbosity": 2})
    # doit reserves the task name "run" (its own command): `doit run` with no task runs this
    # one (see _default_tasks), and so does `doit boot` / `cmbuild run`.
    tasks.append({"name": "boot", "doc": "boot the machine and run the container (`doit run`); exits with its exit code",
                  "task_dep": ["build"], "actions": [(run_action, [ctx, run])], "uptodate": [False],
                  "verbosity": 2})
    tasks.append({"name": "hash", "doc": "print the template hash (root hash of the snapshot), like `cartesi hash`",
                  "actions": [(hash_action, [ctx])], "uptodate": [False], "verbosity": 2,
                  "params": [{"name": "json_out", "long": "json", "type": bool, "default": False,
                              "help": "print {\"hash\": ...} as JSON"}]})
    tasks.append({"name": "lock", "doc": "pin [image].ref to its digest in cartesi.toml",
                  "actions": [(lock_action, [ctx, cfg])], "uptodate": [False], "verbosity": 2})
    tasks.append({"name": "audit", "doc": "rebuild every stage in a fresh store and compare with cartesi.lock",
                  "actions": [(audit_action, [ctx])], "uptodate": [False], "verbosity": 2,
                  "params": [{"name": "stage", "long": "stage", "type": str, "default": "",
                              "help": "audit only this stage (and what it needs)"}]})
    tasks.append({"name": "verify", "doc": "re-hash every object in the store; --repair removes corrupt ones",
                  "actions": [(verify_action, [ctx])], "uptodate": [False], "verbosity": 2,
                  "params": [{"name": "repair", "long": "repair", "type": bool, "default": False,
                              "help": "remove corrupt objects so the next build rebuilds them"}]})
    return tasks


def _default_tasks(argv: list[str]) -> list[str]:
    """``doit run`` (the doit command with no task) means our run task, not the default."""
    args = [a for a in argv if not a.startswith("-")]
    if args[:1] == ["run"] and len(args) == 1:
        return ["boot"]
    return [DEFAULT_TASK]


def planned_stages(tasks: list[dict[str, Any]], argv: list[str]) -> frozenset[str]:
    """The tasks that the doit command line ``argv`` names (else its default ones) and every
    task they depend on: the stages this run may build."""
    deps = {t["name"]: t.get("task_dep", []) for t in tasks}
    todo = [a for a in argv if a in deps] or _default_tasks(argv)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(deps.get(name, []))
    return frozenset(seen)


def make_namespace(cfg: str | os.PathLike[str] | None = None, argv: list[str] | None = None,
                   allow_unpinned: bool = False, run: RunRequest | None = None) -> dict[str, Any]:
    """The namespace of a dodo file: ``DOIT_CONFIG`` and ``task_*`` generators."""
    path = config_path(cfg)
    allow_unpinned = allow_unpinned or os.environ.get("CMBUILD_ALLOW_UNPINNED") == "1"
    try:
        ctx = open_context(path, allow_unpinned=allow_unpinned)
    except CmbuildError as e:
        print(f"cmbuild: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    backend, why = choose_backend(ctx.project)
    if backend == "cartesi" and shutil.which("cartesi-machine") is None:
        from .machines.cartesi import INSTALL_HINT
        print("cmbuild: warning: [machine].backend = \"cartesi\" but cartesi-machine is not on PATH: "
              f"snapshot and run need it ({INSTALL_HINT}), or set backend = \"qemu\" to run under QEMU",
              file=sys.stderr)
    tasks = make_tasks(ctx, path, run)
    ctx.planned = planned_stages(tasks, sys.argv[1:] if argv is None else argv)
    # doit's own state lives in the store, one database per project folder (projects may share
    # a store); sqlite3 because two builds of one project may finish at the same moment.
    import hashlib
    doit_dir = ctx.store.root / "doit"
    doit_dir.mkdir(exist_ok=True)
    dep_file = doit_dir / (hashlib.sha256(str(ctx.project_dir).encode()).hexdigest()[:16] + ".sqlite")
    namespace: dict[str, Any] = {
        # doit's own lines ("-- kernel", ". snapshot") go to standard error: standard output
        # carries only what scripts read (the hash, JSON) and the container's output
        "DOIT_CONFIG": {"dep_file": str(dep_file), "backend": "sqlite3", "outfile": sys.stderr,
                        "default_tasks": _default_tasks(sys.argv[1:] if argv is None else argv),
                        "verbosity": 2, "action_string_formatting": "new"},
    }
    for t in tasks:
        namespace[f"task_{t['name'].replace('-', '_')}"] = _task_creator(t)
    namespace["CMBUILD_CONTEXT"] = ctx
    return namespace


def _task_creator(task: dict[str, Any]) -> Any:
    def creator() -> dict[str, Any]:
        t = dict(task)
        t.pop("name", None)
        t["basename"] = task["name"]
        return t
    creator.__name__ = f"task_{task['name']}"
    creator.__doc__ = task.get("doc")
    return creator
