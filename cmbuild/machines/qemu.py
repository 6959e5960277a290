"""The qemu machine: boot the runtime layer and run the container under qemu-system-riscv64.

::

    qemu-system-riscv64 -machine virt -smp 1 -m RAM -nographic -bios default -no-reboot
        -kernel K -initrd I -append "console=ttyS0 quiet panic=-1 cmbuild.machine=qemu ..."
        -drive if=none,id=d0,file=F,format=raw[,readonly=on]
        -device virtio-blk-device,drive=d0,serial=<label>      (one pair per drive)

The guest finds each drive by its virtio serial (its label: ``root``, ``app``, extra drives).
The console is streamed line by line as it comes; the container's exit code is the number on
the LAST ``cmbuild: exit-code N`` line the guest's init prints before it powers off (init's own
failure codes, 100-123, come the same way: see docs/guest.md). QEMU stopping without that line,
or the timeout passing, is reported with a clear ``reason``, judged as on every backend by
:mod:`cmbuild.machines.outcome`.

A qemu machine cannot be snapshotted: only the Cartesi machine can.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, TextIO

from ..errors import CmbuildError
from . import DRIVE_LABEL_RULE, die_with_parent, valid_label
from . import outcome as oc

QEMU = "qemu-system-riscv64"
BASE_CMDLINE = ("console=ttyS0", "quiet", "panic=-1")
# OpenSBI's start-up banner: its first line, the logo, and "Name : value" lines
_BANNER_FIRST = re.compile(r"^OpenSBI v\d")
_BANNER_LINE = re.compile(r"^(|[ _/\\|()'.,<>-]+|(Platform|Firmware|Runtime|Domain\d*|Boot HART)"
                          r"[A-Za-z0-9 ]*: .*)$")

# RunResult.reason values
REASON_EXIT_LINE = "exit-code line"
REASON_TIMEOUT = "timeout"
REASON_NO_EXIT_LINE = "no exit line"


@dataclass
class Drive:
    """A drive of the machine: its label (the virtio serial the guest looks for), its image
    file, and whether the guest may write to it."""

    label: str
    path: Path
    read_only: bool = True
    # a writable drive whose writes must not reach its file (a store object): QEMU keeps them
    # in a temporary overlay (-drive snapshot=on) that disappears with the machine
    discard_writes: bool = False


@dataclass
class RunResult:
    """How a run ended. ``exit_code`` is the container's (or init's failure code) when
    ``reason`` is "exit-code line"; otherwise it is a cmbuild code (124 timeout, 125 no line)
    and ``reason`` says what happened."""

    exit_code: int
    output: str
    reason: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.reason == REASON_EXIT_LINE

    def outcome(self) -> oc.Outcome:
        if self.ok:
            return oc.reported(self.exit_code)
        hint = oc.TIMEOUT_HINT if self.reason.startswith(REASON_TIMEOUT) else ""
        return oc.Outcome(self.exit_code, False, self.reason + hint)


def validate_drives(drives: Sequence[Drive]) -> None:
    """Labels must be usable as virtio serials (at most 20 characters) and unique; the
    runtime layer (``root``) must be there; files must exist."""
    seen: set[str] = set()
    for d in drives:
        if not valid_label(d.label):
            raise CmbuildError(f"invalid drive label {d.label!r}: use {DRIVE_LABEL_RULE}",
                               where=str(d.path))
        if d.label in seen:
            raise CmbuildError(f"two drives are labelled {d.label!r}")
        seen.add(d.label)
        if not Path(d.path).is_file():
            raise CmbuildError(f"the image of drive {d.label!r} is not a file",
                               where=str(d.path))
        if "," in str(d.path):
            raise CmbuildError("QEMU cannot take a drive file name with a comma",
                               where=str(d.path), hint="move or link the file elsewhere")
    if "root" not in seen:
        raise CmbuildError("no drive labelled 'root' (the runtime layer)")


def qemu_command(*, kernel: Path, initrd: Path, drives: Sequence[Drive],
                 append: Iterable[str] = (), ram: str = "512M",
                 extra_args: Sequence[str] = ()) -> list[str]:
    """The qemu-system-riscv64 command line (see the module's documentation); ``extra_args``
    are appended as they are (tests use them for a device tree and memory-loaded drives)."""
    validate_drives(drives)
    # the caller's words come last, so that they win (a test may say cmbuild.machine=cartesi)
    words = [*BASE_CMDLINE, "cmbuild.machine=qemu", *append]
    for w in words:
        if not w or any(c.isspace() for c in w) or '"' in w:
            raise CmbuildError(f"kernel command line word {w!r} is empty or has spaces/quotes")
    cmd = [QEMU, "-machine", "virt", "-smp", "1", "-m", ram, "-nographic", "-bios", "default",
           "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", " ".join(words)]
    for i, d in enumerate(drives):
        opt = f"if=none,id=d{i},file={d.path},format=raw"
        if d.read_only:
            opt += ",readonly=on"
        elif d.discard_writes:
            opt += ",snapshot=on"
        cmd += ["-drive", opt, "-device", f"virtio-blk-device,drive=d{i},serial={d.label}"]
    return cmd + list(extra_args)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(*, kernel: Path, initrd: Path, drives: list[Drive], append: Sequence[str] = (),
        ram: str = "512M", timeout: float = 600, stream: TextIO | None = sys.stdout,
        extra_args: Sequence[str] = (), firmware_banner: bool = False,
        interactive: bool = False) -> RunResult:
    """Boot the machine, stream its console to ``stream`` line by line, and return how it
    ended. Never raises for what happens inside the guest: see :class:`RunResult`.
    OpenSBI's banner is left out of ``stream`` unless ``firmware_banner`` (``output`` has
    everything). ``interactive``: the guest's console reads this process's stdin (a terminal
    or a pipe); otherwise it reads nothing."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise CmbuildError(f"{QEMU} is not installed",
                           hint="install Debian's package qemu-system-misc (it also ships the "
                                "OpenSBI firmware that -bios default loads)")
    for what, p in (("kernel", kernel), ("initrd", initrd)):
        if not Path(p).is_file():
            raise CmbuildError(f"the {what} is not a file", where=str(p))
    cmd = qemu_command(kernel=kernel, initrd=initrd, drives=drives, append=append, ram=ram,
                       extra_args=extra_args)
    cmd[0] = qemu
    start = time.monotonic()
    # A terminal is handed to QEMU as it is. Piped input is held back until init has opened the
    # console (its first "cmbuild:" line): bytes that reach the UART before then are lost.
    piped = interactive and not os.isatty(0)
    stdin = subprocess.PIPE if piped else None if interactive else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=not interactive,
                            preexec_fn=die_with_parent)
    assert proc.stdout is not None
    forwarding: list[threading.Thread] = []

    def forward_stdin() -> None:
        assert proc.stdin is not None
        try:
            while chunk := os.read(0, 4096):
                proc.stdin.write(chunk)
                proc.stdin.flush()
        except OSError:   # QEMU is gone
            pass
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    console = oc.Console()
    lines: list[str] = []
    timed_out = False
    in_banner = False

    def show(new: list[str]) -> None:
        nonlocal in_banner
        for text in new:
            lines.append(text)
            if not firmware_banner:
                if len(lines) <= 2 and _BANNER_FIRST.match(text):
                    in_banner = True
                elif in_banner and not _BANNER_LINE.match(text):
                    in_banner = False
            if stream is not None and not in_banner:
                stream.write(text + "\n")
                stream.flush()

    try:
        eof = False
        while not eof:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                timed_out = True
                break
            for _key, _ev in sel.select(timeout=min(left, 1.0)):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    eof = True
                    break
                show(console.feed(chunk))
                if piped and not forwarding and console.init_spoke:
                    forwarding.append(threading.Thread(target=forward_stdin, daemon=True))
                    forwarding[0].start()
        show(console.close())
    finally:
        sel.close()
        _kill(proc)
        proc.stdout.close()
    rc = proc.wait()
    seconds = time.monotonic() - start
    output = "\n".join(lines) + ("\n" if lines else "")
    if timed_out:
        return RunResult(oc.TIMEOUT, output, f"{REASON_TIMEOUT}: the machine did not end within "
                         f"{timeout:g} s and was killed", seconds)
    if console.exit_code is None:
        how = oc.not_reported(console, f"QEMU exited (status {rc})").reason
        return RunResult(oc.NO_REPORT, output, f"{REASON_NO_EXIT_LINE}: {how}", seconds)
    return RunResult(console.exit_code, output, REASON_EXIT_LINE, seconds)
