"""The ``cartesi`` machine: how cmbuild invokes ``cartesi-machine`` (the Cartesi Machine emulator).

Everything here follows ``shared/cartesi-machine.md`` (facts from machine-emulator v0.21.0):

- ``--ram-image=FILE --ram-length=LEN``, then one ``--flash-drive=`` per drive in the order the
  guest sees them (``/dev/pmem0``, ``/dev/pmem1``, ...). The first is the root drive, label
  ``root``: the runtime layer, a read-only squashfs.
- The drive key naming the image file is ``data_filename:`` since 0.21 and ``filename:`` before;
  :func:`installed_version` reads ``cartesi-machine --version`` and :func:`flash_drive_arg`
  spells the flag for it. ``read_only`` is a 0.21 key: it is emitted only for 0.21 and later
  (0.18's option parser rejects unknown keys); older emulators get the drive without it, and the
  guest still mounts it ``ro``.
- ``--append-bootargs=`` starts with ``rootfstype=squashfs ro init=/sbin/init
  cmbuild.machine=cartesi`` (the runtime layer's init is ``/sbin/init``; a later ``init=`` wins
  over the emulator's default ``init=/usr/sbin/cartesi-init``), then the caller's bootargs.
- Never ``-i`` (it needs a TTY). No ``-- command``: that is the device-tree entrypoint of
  Cartesi's own init, which cmbuild's init does not read.
- A snapshot is ``--max-mcycle=0 --store=DIR`` (the initial state), or a run up to the first
  manual yield with ``--assert-rolling-template --store=DIR`` (a rollups app waiting for its
  first input), or a run to ``--max-mcycle=N``. Its root hash is read back with ``cartesi-machine-stored-hash DIR`` and must be
  the one the emulator printed (``--initial-hash`` / ``--final-hash``).
- How a run ended is judged by :mod:`cmbuild.machines.outcome`, as for every backend: the
  container's exit code is the one in init's ``cmbuild: exit-code N`` console line, and the
  machine must have halted with that payload (``Halted with payload: N``; a bare ``Halted``
  is payload 0). A bare ``Halted`` without init's line is a failure, not an exit code 0: a
  kernel panic ends the machine exactly that way.

Nothing is faked: without ``cartesi-machine`` on PATH the functions that need it raise a
:class:`CmbuildError` that says what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..errors import CmbuildError
from . import DRIVE_LABEL_RULE, die_with_parent, valid_label
from . import outcome as oc

EXECUTABLE = "cartesi-machine"
STORED_HASH_EXECUTABLE = "cartesi-machine-stored-hash"
SUPPORTED_RELEASE = "v0.21.0"
INSTALL_HINT = (
    f"install the Cartesi Machine emulator from the machine-emulator release {SUPPORTED_RELEASE} "
    "of the cartesi organisation (GitHub release assets of cartesi/machine-emulator) and put "
    f"'{EXECUTABLE}' and '{STORED_HASH_EXECUTABLE}' on PATH; no package registry ships it"
)

# Bootargs that every cmbuild machine needs, always first in --append-bootargs. panic=-1: a
# crashing init ends the machine (a reboot halts the Cartesi machine) instead of hanging it.
BASE_BOOTARGS = ("rootfstype=squashfs", "ro", "init=/sbin/init", "cmbuild.machine=cartesi", "panic=-1")
ROOT_LABEL = "root"
DATA_FILENAME_SINCE = (0, 21, 0)  # data_filename: and read_only since 0.21; filename: before

Version = tuple[int, int, int]

_VERSION_RE = re.compile(r"^\s*cartesi-machine\s+v?(\d+)\.(\d+)\.(\d+)\S*\s*$", re.MULTILINE)
_HASH_LINE_RE = re.compile(r"^(\d+): (?:0x)?([0-9a-fA-F]{64})$")
_HALTED_RE = re.compile(r"^Halted(?: with payload: (\d+))?$")
_CYCLES_RE = re.compile(r"^Cycles: (\d+)$")
_YIELD_RE = re.compile(r"^(Manual|Automatic|Unknown) yield (\S+)")
_STORED_HASH_RE = re.compile(r"^(?:0x)?([0-9a-fA-F]{64})$")
_NUMBER_RE = re.compile(r"^(?:0x[0-9a-fA-F]+|\d+)(?:Ki|Mi|Gi)?$|^\d+\s*<<\s*\d+$")


@dataclass
class Drive:
    """One flash drive. ``mount``: ``None`` leaves the emulator's default, ``False`` gives
    ``mount:false``, a string ``mount:<path>``; ``user`` gives ``user:<name>``."""

    label: str
    path: Path
    read_only: bool = True
    shared: bool = False
    mount: str | bool | None = None
    user: str | None = None


# --------------------------------------------------------------------------- version


def parse_version(text: str) -> Version:
    """The version in ``cartesi-machine --version`` output (first line ``cartesi-machine X.Y.Z``,
    possibly with a label such as ``-alpha1``)."""
    m = _VERSION_RE.search(text)
    if not m:
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise CmbuildError(
            f"cannot read a version from 'cartesi-machine --version' output: {first!r}",
            where=EXECUTABLE,
            hint=INSTALL_HINT,
        )
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)))


def installed_version() -> Version | None:
    """The version of the ``cartesi-machine`` on PATH, or ``None`` when there is none."""
    exe = shutil.which(EXECUTABLE)
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CmbuildError(f"'{EXECUTABLE} --version' failed: {e}", where=exe, hint=INSTALL_HINT) from e
    if proc.returncode != 0:
        raise CmbuildError(
            f"'{EXECUTABLE} --version' exited with {proc.returncode}: {proc.stderr.strip()[-500:]}",
            where=exe, hint=INSTALL_HINT,
        )
    return parse_version(proc.stdout)


def require_cartesi_machine(what: str = "this command") -> Version:
    """The installed version, or a :class:`CmbuildError` saying what to install."""
    version = installed_version()
    if version is None:
        raise CmbuildError(
            f"{what} needs '{EXECUTABLE}', which is not on PATH",
            where="PATH",
            hint=INSTALL_HINT,
        )
    return version


# --------------------------------------------------------------------------- command line


def _escape(value: str) -> str:
    """Escape a --flash-drive value for the emulator's option parser (``\\``, ``:`` and ``,``
    are written ``\\\\``, ``\\:``, ``\\,``)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _check_label(label: str) -> None:
    if not valid_label(label):
        raise CmbuildError(f"invalid flash drive label {label!r}", where="--flash-drive",
                           hint=f"use {DRIVE_LABEL_RULE}")


def flash_drive_arg(d: Drive, version: Version) -> str:
    """The value of ``--flash-drive=`` for ``d``: ``data_filename:`` since 0.21, ``filename:``
    before."""
    _check_label(d.label)
    new = tuple(version) >= DATA_FILENAME_SINCE
    parts = [f"label:{d.label}", f"{'data_filename' if new else 'filename'}:{_escape(str(d.path))}"]
    if d.read_only and new:
        parts.append("read_only")
    if d.shared:
        parts.append("shared")
    if d.mount is False:
        parts.append("mount:false")
    elif d.mount is True:
        parts.append("mount:true")
    elif isinstance(d.mount, str):
        parts.append(f"mount:{_escape(d.mount)}")
    if d.user is not None:
        parts.append(f"user:{_escape(d.user)}")
    return ",".join(parts)


def _check_drives(drives: Sequence[Drive]) -> None:
    if not drives or drives[0].label != ROOT_LABEL:
        raise CmbuildError(
            f"the first flash drive must be the root drive (label '{ROOT_LABEL}'), "
            f"got {[d.label for d in drives]}",
            where="--flash-drive",
        )
    labels = [d.label for d in drives]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise CmbuildError(f"flash drive labels must be unique, repeated: {dup}", where="--flash-drive")
    if drives[0].shared:
        raise CmbuildError("the root drive (the runtime layer) must not be shared", where="--flash-drive")


def _bootargs(extra: Sequence[str]) -> str:
    for arg in extra:
        if not arg or any(c.isspace() for c in arg):
            raise CmbuildError(f"a boot argument must be one word without blanks, got {arg!r}",
                               where="bootargs")
    return " ".join([*BASE_BOOTARGS, *extra])


def build_command(
    *,
    version: Version,
    ram_image: Path,
    ram_length: str,
    drives: list[Drive],
    bootargs: list[str],
    store_dir: Path | None = None,
    max_mcycle: int | None = None,
    assert_rolling_template: bool = False,
    initial_hash: bool = False,
    final_hash: bool = False,
    interactive: bool = False,
) -> list[str]:
    """The ``cartesi-machine`` command line (argv, executable first, looked up on PATH).
    ``interactive`` (``cmbuild run --shell``, ``run -- CMD``) adds ``-i``: the guest console
    reads this terminal; never for snapshots (the emulator calls it non-reproducible)."""
    if not _NUMBER_RE.match(str(ram_length)):
        raise CmbuildError(f"invalid RAM length {ram_length!r}", where="--ram-length",
                           hint="a number like 134217728, 0x8000000 or 128Mi")
    _check_drives(drives)
    cmd = [EXECUTABLE, f"--ram-image={ram_image}", f"--ram-length={ram_length}"]
    cmd += [f"--flash-drive={flash_drive_arg(d, version)}" for d in drives]
    cmd.append(f"--append-bootargs={_bootargs(bootargs)}")
    if max_mcycle is not None:
        if max_mcycle < 0:
            raise CmbuildError(f"max_mcycle must be >= 0, got {max_mcycle}", where="--max-mcycle")
        cmd.append(f"--max-mcycle={max_mcycle}")
    if initial_hash:
        cmd.append("--initial-hash")
    if final_hash:
        cmd.append("--final-hash")
    if store_dir is not None:
        if "%" in str(store_dir):
            raise CmbuildError(f"the store directory must not contain '%' (the emulator substitutes "
                               f"%h in it): {store_dir}", where="--store")
        cmd.append(f"--store={store_dir}")
    if assert_rolling_template:
        cmd.append("--assert-rolling-template")
    if interactive:
        if store_dir is not None:
            raise CmbuildError("an interactive run is not reproducible and cannot be stored",
                               where="--store")
        cmd.append("-i")
    return cmd


# --------------------------------------------------------------------------- output parsing


def parse_hash(output: str) -> dict:
    """Read the emulator's report (its stderr): ``{"hashes": [(mcycle, "0x<64 hex>"), ...],
    "halted": bool, "payload": int | None, "cycles": int | None, "yield": str | None}``.

    ``hashes`` are the ``<mcycle>: <hash>`` lines in order (``--initial-hash`` first,
    ``--final-hash`` last); a hash is returned as ``0x`` + lowercase hex whether or not the
    emulator printed the ``0x``. ``payload`` is N of ``Halted with payload: N``, 0 for a bare
    ``Halted``, ``None`` when the machine did not halt. ``yield`` is the reason of the last
    manual yield (``rx-accepted``, ...).
    """
    result: dict = {"hashes": [], "halted": False, "payload": None, "cycles": None, "yield": None}
    for raw in re.split(r"[\r\n]", output):
        line = raw.strip()
        if m := _HASH_LINE_RE.match(line):
            result["hashes"].append((int(m.group(1)), "0x" + m.group(2).lower()))
        elif m := _HALTED_RE.match(line):
            result["halted"] = True
            result["payload"] = int(m.group(1)) if m.group(1) is not None else 0
        elif m := _CYCLES_RE.match(line):
            result["cycles"] = int(m.group(1))
        elif (m := _YIELD_RE.match(line)) and m.group(1) == "Manual":
            result["yield"] = m.group(2)
    return result


def stored_hash(store_dir: Path) -> str:
    """The root hash of a stored machine (``cartesi-machine-stored-hash DIR``): ``0x<64 hex>``."""
    exe = shutil.which(STORED_HASH_EXECUTABLE)
    if exe is None:
        raise CmbuildError(f"'{STORED_HASH_EXECUTABLE}' is not on PATH", where="PATH", hint=INSTALL_HINT)
    if not Path(store_dir).is_dir():
        raise CmbuildError("not a stored machine directory", where=str(store_dir))
    try:
        proc = subprocess.run([exe, str(store_dir)], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CmbuildError(f"'{STORED_HASH_EXECUTABLE}' failed: {e}", where=str(store_dir)) from e
    lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
    m = _STORED_HASH_RE.match(lines[-1]) if lines else None
    if proc.returncode != 0 or not m:
        raise CmbuildError(
            f"'{STORED_HASH_EXECUTABLE}' exited with {proc.returncode} and printed "
            f"{proc.stdout.strip()[-200:]!r} {proc.stderr.strip()[-500:]!r}; expected 0x<64 hex>",
            where=str(store_dir),
        )
    return "0x" + m.group(1).lower()


_HASH_TREE_FILES = ("dht_filename", "dpt_filename", "sht_filename", "phtc_filename")


def recomputed_hash(store_dir: Path) -> str:
    """The root hash of a stored machine computed from its memory and drive contents alone.

    ``cartesi-machine-stored-hash`` trusts the hash trees stored beside the data (``.dht``,
    ``.dpt``, ``hash_tree.sht``/``.phtc``): a machine whose RAM or drives were altered but whose
    hash tree files were kept prints the original hash. To check a machine that came from
    elsewhere, its configuration is loaded afresh (``cartesi-machine --load-config``) with
    every backing file named but no stored hash tree, read-only, so the emulator hashes every
    page it holds; nothing runs (``--max-mcycle=0``) and nothing is written."""
    import json
    import tempfile
    exe = shutil.which(EXECUTABLE)
    if exe is None:
        raise CmbuildError(f"'{EXECUTABLE}' is not on PATH", where="PATH", hint=INSTALL_HINT)
    store_dir = Path(store_dir).resolve()
    where = str(store_dir / "config.json")
    try:
        doc = json.loads((store_dir / "config.json").read_text())
        config = doc["config"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CmbuildError(f"not a stored machine's configuration: {e}", where=where) from None

    def rewrite(x: object) -> None:
        if isinstance(x, dict):
            for k in list(x):
                v = x[k]
                if k in _HASH_TREE_FILES:
                    del x[k]
                elif k == "data_filename" and v:
                    name = str(v)[2:] if str(v).startswith("./") else str(v)
                    if not name or "/" in name or name in (".", ".."):
                        raise CmbuildError(f"a backing file {v!r} outside the machine's "
                                           "directory", where=where)
                    x[k] = str(store_dir / name)
                elif k in ("shared", "create", "truncate"):
                    x[k] = False
                else:
                    rewrite(v)
        elif isinstance(x, list):
            for v in x:
                rewrite(v)

    rewrite(config)
    with tempfile.TemporaryDirectory(prefix="cmbuild-hash-") as tmp:
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps(config))
        try:
            proc = subprocess.run([exe, f"--load-config={cfg}", "--initial-hash", "--max-mcycle=0",
                                   "--quiet"], stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=1800, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CmbuildError(f"'{EXECUTABLE} --load-config' failed: {e}", where=str(store_dir)) from e
    hashes = [m.group(2).lower() for ln in (proc.stdout + "\n" + proc.stderr).splitlines()
              if (m := _HASH_LINE_RE.match(ln.strip()))]   # the CLI prints it on stderr
    if proc.returncode != 0 or not hashes:
        raise CmbuildError(
            f"'{EXECUTABLE} --load-config --initial-hash' exited with {proc.returncode} and printed "
            f"{proc.stdout.strip()[-200:]!r} {proc.stderr.strip()[-500:]!r}", where=str(store_dir))
    return "0x" + hashes[0]


def checked_hash(store_dir: Path) -> str:
    """The root hash of a stored machine from elsewhere, checked: the stored hash
    (:func:`stored_hash`) must be the one its contents give (:func:`recomputed_hash`)."""
    stored = stored_hash(store_dir)
    computed = recomputed_hash(store_dir)
    if stored != computed:
        raise CmbuildError(f"the stored machine's hash tree says {stored} but its contents hash "
                           f"to {computed}", where=str(store_dir),
                           hint="its memory or drives were altered after it was stored")
    return stored


# --------------------------------------------------------------------------- running


Sink = Callable[[bytes], None]


def _stream_sink(stream: BinaryIO | None) -> Sink:
    def write(data: bytes) -> None:
        if stream is not None:
            stream.write(data)
            stream.flush()
    return write


def stream_sink(text_stream) -> Sink:
    buffer = getattr(text_stream, "buffer", None)
    if buffer is not None:
        return _stream_sink(buffer)

    def write(data: bytes) -> None:
        text_stream.write(data.decode("utf-8", "replace"))
        text_stream.flush()
    return write


def _pump(pipe: BinaryIO, sink: Sink, keep: list[bytes] | None) -> None:
    fd = pipe.fileno()
    while chunk := os.read(fd, 65536):
        sink(chunk)
        if keep is not None:
            keep.append(chunk)


@dataclass
class RunResult:
    command: list[str]
    returncode: int
    exit_code: int  # the guest's halt payload when it halted, else the process's return code
    halted: bool
    payload: int | None
    cycles: int | None
    initial_hash: str | None
    final_hash: str | None
    yield_reason: str | None
    report: str = field(repr=False, default="")  # the emulator's stderr
    console: oc.Console = field(repr=False, default_factory=oc.Console)
    max_mcycle: int | None = None
    timeout: float | None = None
    timed_out: bool = False

    @property
    def reason(self) -> str:
        """How the emulator stopped, in words."""
        if self.timed_out:
            return f"stopped after the {self.timeout:g} s timeout"
        if self.halted:
            return f"halted with payload {self.payload}"
        if self.yield_reason:
            return f"manual yield {self.yield_reason}"
        return f"emulator exit code {self.returncode}" if self.returncode else "stopped (--max-mcycle)"

    def outcome(self) -> oc.Outcome:
        """How the container's run ended (see :mod:`cmbuild.machines.outcome`)."""
        console, code = self.console, self.console.exit_code
        if self.timed_out:
            return oc.timed_out(self.timeout or 0)
        if self.halted:
            if code is None:
                how = "the machine halted" + (f" with payload {self.payload}" if self.payload else "")
                return oc.not_reported(console, how)
            if self.payload != code or self.returncode != code & 0xFF:
                return oc.Outcome(oc.NO_REPORT, False,
                                  f"init reported exit code {code}, but the machine halted with "
                                  f"payload {self.payload} and {EXECUTABLE} exited with "
                                  f"{self.returncode}")
            return oc.reported(code)
        if self.returncode != 0:
            return oc.Outcome(oc.NO_REPORT, False, f"{EXECUTABLE} failed with exit code "
                                                   f"{self.returncode}: {emulator_error(self.report)}")
        if self.yield_reason:
            return oc.not_reported(console, f"the machine stopped at a manual yield "
                                            f"({self.yield_reason})")
        if code is not None:  # the container ended; the limit came before the power-off
            return oc.reported(code)
        return oc.not_reported(console, f"the machine reached max_mcycle = {self.max_mcycle} "
                                        f"(cycle {self.cycles})")


def run(
    *,
    ram_image: Path,
    ram_length: str,
    drives: list[Drive],
    bootargs: Sequence[str] = (),
    store_dir: Path | None = None,
    max_mcycle: int | None = None,
    assert_rolling_template: bool = False,
    initial_hash: bool = False,
    final_hash: bool = False,
    console: Sink | None = None,
    report: Sink | None = None,
    timeout: float | None = None,
    version: Version | None = None,
    interactive: bool = False,
) -> RunResult:
    """Run the machine, streaming the guest console (the emulator's stdout) to ``console`` and
    the emulator's own messages (its stderr) to ``report`` as they come (default: this
    process's stdout and stderr). ``interactive``: the console reads this process's stdin."""
    if version is None:
        version = require_cartesi_machine("running a Cartesi machine")
    cmd = build_command(version=version, ram_image=ram_image, ram_length=ram_length, drives=drives,
                        bootargs=list(bootargs), store_dir=store_dir, max_mcycle=max_mcycle,
                        assert_rolling_template=assert_rolling_template,
                        initial_hash=initial_hash, final_hash=final_hash, interactive=interactive)
    for path, what in [(Path(ram_image), "RAM image"), *[(Path(d.path), f"drive {d.label}") for d in drives]]:
        if not path.is_file():
            raise CmbuildError(f"{what} not found", where=str(path))
    sink = console or stream_sink(sys.stdout)
    watch = oc.Console()

    def console_sink(data: bytes) -> None:
        watch.feed(data)
        sink(data)
    report = report or stream_sink(sys.stderr)
    stderr_chunks: list[bytes] = []
    try:
        proc = subprocess.Popen(cmd, stdin=None if interactive else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=die_with_parent)
    except OSError as e:
        raise CmbuildError(f"cannot start {EXECUTABLE}: {e}", where="PATH", hint=INSTALL_HINT) from e
    assert proc.stdout is not None and proc.stderr is not None
    err_thread = threading.Thread(target=_pump, args=(proc.stderr, report, stderr_chunks), daemon=True)
    err_thread.start()
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        proc.kill()
    timer = threading.Timer(timeout, stop) if timeout else None
    if timer:
        timer.start()
    try:
        _pump(proc.stdout, console_sink, None)
        rc = proc.wait()
        err_thread.join()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    watch.close()
    text = b"".join(stderr_chunks).decode("utf-8", "replace")
    if timed_out.is_set():
        return RunResult(command=cmd, returncode=rc, exit_code=oc.TIMEOUT, halted=False, payload=None,
                         cycles=None, initial_hash=None, final_hash=None, yield_reason=None,
                         report=text, console=watch, max_mcycle=max_mcycle, timeout=timeout,
                         timed_out=True)
    result = _result(cmd, rc, text, initial_hash=initial_hash, final_hash=final_hash)
    result.console, result.max_mcycle, result.timeout = watch, max_mcycle, timeout
    return result


_LUA_ERROR = re.compile(r"^lua[0-9.]*: (?:\S+?:\d+: )?(.*)$")


def emulator_error(text: str) -> str:
    """The emulator's own error message in its stderr (a Lua error line before the stack
    traceback, its source position left out), else its last lines."""
    for line in text.splitlines():
        if m := _LUA_ERROR.match(line.strip()):
            return m.group(1)
    return " | ".join(text.strip().splitlines()[-5:]) or "(no message)"


def _result(cmd: list[str], rc: int, text: str, *, initial_hash: bool, final_hash: bool) -> RunResult:
    parsed = parse_hash(text)
    hashes = parsed["hashes"]
    ran = parsed["halted"] or parsed["cycles"] is not None or bool(hashes)
    if rc != 0 and not ran:
        raise CmbuildError(f"{EXECUTABLE} failed (exit code {rc}): {emulator_error(text)}",
                           where=" ".join(cmd))
    return RunResult(
        command=cmd,
        returncode=rc,
        exit_code=parsed["payload"] if parsed["halted"] else rc,
        halted=parsed["halted"],
        payload=parsed["payload"],
        cycles=parsed["cycles"],
        initial_hash=hashes[0][1] if initial_hash and hashes else None,
        final_hash=hashes[-1][1] if final_hash and hashes else None,
        yield_reason=parsed["yield"],
        report=text,
    )


@dataclass
class Snapshot:
    store_dir: Path
    root_hash: str  # 0x<64 hex>, from cartesi-machine-stored-hash, equal to the printed hash
    mcycle: int
    run: RunResult

    def __str__(self) -> str:
        return self.root_hash


def snapshot(
    *,
    ram_image: Path,
    ram_length: str,
    drives: list[Drive],
    store_dir: Path,
    bootargs: Sequence[str] = (),
    max_mcycle: int | None = None,
    assert_rolling_template: bool = False,
    console: Sink | None = None,
    report: Sink | None = None,
    timeout: float | None = None,
    version: Version | None = None,
) -> Snapshot:
    """Store a machine in ``store_dir`` (which must not exist yet) and return its root hash.

    - default (``max_mcycle`` None or 0): the initial state, ``--max-mcycle=0 --initial-hash``;
    - ``assert_rolling_template``: run to the first manual yield (``--assert-rolling-template
      --final-hash``, ``max_mcycle`` as an upper bound if given): a rollups app waiting for its
      first input; anything else is an error;
    - ``max_mcycle=N > 0``: the state at cycle N (or at the halt before it), ``--final-hash``.

    The hash read back with ``cartesi-machine-stored-hash`` must equal the printed one.
    """
    if version is None:
        version = require_cartesi_machine("'cmbuild snapshot' (the cartesi machine)")
    if shutil.which(STORED_HASH_EXECUTABLE) is None:
        raise CmbuildError(f"'{STORED_HASH_EXECUTABLE}' is not on PATH", where="PATH", hint=INSTALL_HINT)
    store_dir = Path(store_dir)
    if store_dir.exists():
        raise CmbuildError("the snapshot directory already exists", where=str(store_dir),
                           hint="pass a path that does not exist yet; the emulator creates it")
    if not store_dir.parent.is_dir():
        raise CmbuildError("the parent of the snapshot directory does not exist", where=str(store_dir))
    initial = not assert_rolling_template and not max_mcycle
    try:
        result = run(ram_image=ram_image, ram_length=ram_length, drives=drives, bootargs=bootargs,
                     store_dir=store_dir, max_mcycle=0 if initial else max_mcycle,
                     assert_rolling_template=assert_rolling_template, initial_hash=initial,
                     final_hash=not initial, console=console, report=report, timeout=timeout,
                     version=version)
        return _check_snapshot(store_dir, result, rolling=assert_rolling_template, initial=initial)
    except BaseException:
        shutil.rmtree(store_dir, ignore_errors=True)
        raise


def _check_snapshot(store_dir: Path, result: RunResult, *, rolling: bool, initial: bool) -> Snapshot:
    if result.timed_out:
        raise CmbuildError(f"{EXECUTABLE} did not finish within {result.timeout:g} s and was stopped",
                           where=" ".join(result.command),
                           hint="raise [machine].timeout if the machine needs longer")
    if rolling and result.returncode != 0:
        if result.halted:
            # with --assert-rolling-template the emulator fails (status 1) at any halt: the
            # container's end is what init reported, when the halt's payload agrees
            code = result.console.exit_code
            out = oc.reported(code) if code is not None and result.payload == code else result.outcome()
            what = f"the machine halted before its first input: {out.reason}"
            if out.ok:
                what += f"; last console lines: {result.console.last_lines()}"
        else:
            what = (f"the machine stopped at {result.yield_reason or 'no manual yield'} "
                    f"(emulator exit code {result.returncode})")
        raise CmbuildError(
            f"not a rollups template: {what}",
            where=" ".join(result.command),
            hint="the app must ask for its first input (rollups /finish with status accept) "
                 "before a rolling snapshot can be taken",
        )
    if not rolling and not initial and result.halted:
        # the machine ended before max_mcycle: it is stored halted, which is only a state worth
        # keeping when the container ended well
        out = result.outcome()
        if not out.ok or out.code != 0:
            raise CmbuildError(f"the machine halted before max_mcycle = {result.max_mcycle}: "
                               f"{out.reason}", where=" ".join(result.command))
    elif result.returncode != 0:
        raise CmbuildError(f"{EXECUTABLE} exited with {result.returncode}: "
                           f"{emulator_error(result.report)}", where=" ".join(result.command))
    printed = result.initial_hash if initial else result.final_hash
    hashes = parse_hash(result.report)["hashes"]
    if printed is None or not hashes:
        raise CmbuildError(f"{EXECUTABLE} printed no root hash", where=" ".join(result.command))
    mcycle = hashes[0][0] if initial else hashes[-1][0]
    if not store_dir.is_dir():
        raise CmbuildError(f"{EXECUTABLE} did not store the machine", where=str(store_dir))
    stored = stored_hash(store_dir)
    if stored != printed:
        raise CmbuildError(
            f"the stored machine's root hash {stored} differs from the printed one {printed}",
            where=str(store_dir),
        )
    return Snapshot(store_dir=store_dir, root_hash=stored, mcycle=mcycle, run=result)
