"""How a run of a machine ended, judged the same way for every backend.

The only proof that the container ended is init's own report on the console, its last line
``cmbuild: exit-code N`` (``cmbuild/guest/init.c``). A machine that halts, powers off or stops
without that line failed, however it stopped: a kernel panic halts a Cartesi machine with a
bare ``Halted`` and exit status 0, exactly like a clean power-off. So every backend feeds its
console through a :class:`Console`, and :func:`judge` turns what it saw, plus how the machine
stopped, into an :class:`Outcome`: the exit code cmbuild ends with and the words that explain it.

Host-side exit codes (the container's own are 0-255, init's failures 100-112, see docs/guest.md):

- ``124``: the machine did not end within ``[machine].timeout`` and was stopped;
- ``125``: the machine ended without init's report (panic, init never started or died, the
  ``max_mcycle`` limit, the emulator failing, an exit code out of range).
"""

from __future__ import annotations

import re
import signal
from collections import deque
from dataclasses import dataclass

EXIT_LINE = re.compile(r"^cmbuild: exit-code (\d+)\s*$")
TIMEOUT = 124
NO_REPORT = 125
TAIL_LINES = 40

# init's own failures (cmbuild/guest/init.c; keep in sync with docs/guest.md)
INIT_FAILURES = {
    100: "init: internal error",
    101: "init: a pseudo file system could not be mounted",
    102: "init: the kernel command line is unreadable or names an unknown machine",
    103: "init: the app drive (label app) was not found",
    104: "init: the app drive could not be mounted",
    105: "init: the config drive (label config) is missing or unreadable",
    106: "init: the container's writable root could not be prepared",
    107: "init: an extra drive could not be mounted",
    108: "init: crun could not be started",
    109: "init: waiting for crun failed",
    110: "crun could not create the container (the container's process never ran)",
    111: "init: the rollups server could not be started or ended while the container ran",
    112: "init: a service ([services.<name>]) could not be started, was not ready in time, "
         "or ended before the app",
    120: "boot shim (qemu): devtmpfs, proc or sysfs could not be mounted",
    121: "boot shim (qemu): a kernel module could not be loaded",
    122: "boot shim (qemu): no drive labelled root appeared",
    123: "boot shim (qemu): the runtime layer could not be mounted or its init not started",
}
_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
_INIT_ERROR = re.compile(r"^cmbuild: error: (.*)")


class Console:
    """Watches a machine's console as it streams: splits it into lines, remembers the last
    ``cmbuild: exit-code N`` line, init's error lines, a kernel panic, whether init said
    anything at all, and the last lines (for messages). Memory stays bounded whatever the
    container prints."""

    def __init__(self, keep: int = TAIL_LINES):
        self._pending = b""
        self.exit_code: int | None = None
        self.panic: str | None = None
        self.errors: list[str] = []
        self.init_spoke = False
        self.tail: deque[str] = deque(maxlen=keep)

    def feed(self, data: bytes) -> list[str]:
        """Take a chunk of console bytes; return the lines it completed."""
        self._pending += data
        *done, self._pending = self._pending.split(b"\n")
        return [self._take(line) for line in done]

    def close(self) -> list[str]:
        """The end of the stream: the last, unterminated line (if any)."""
        if not self._pending:
            return []
        line, self._pending = self._pending, b""
        return [self._take(line)]

    def _take(self, raw: bytes) -> str:
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n").replace("\r", "")
        self.tail.append(text)
        if text.startswith("cmbuild: "):
            self.init_spoke = True
            if m := EXIT_LINE.match(text):
                self.exit_code = int(m.group(1))
            elif m := _INIT_ERROR.match(text):
                self.errors.append(m.group(1))
        elif m := _PANIC.search(text):
            # a panic after an exit-code line (the container may print such a line itself)
            # means the machine did not end the way init ends it
            self.panic = self.panic or m.group(1).strip()
            self.exit_code = None
        return text

    def last_lines(self, n: int = 5) -> str:
        lines = [ln for ln in self.tail if ln.strip()][-n:]
        return " | ".join(lines) if lines else "(no output)"

    def diagnosis(self) -> str:
        """Why the machine ended without init's report, from what the console showed."""
        if self.panic is not None:
            return f"the kernel panicked: {self.panic}"
        if not self.init_spoke:
            return ("init never started (no line from cmbuild's init on the console); "
                    f"last output: {self.last_lines()}")
        if self.errors:
            return f"init failed: {self.errors[-1]}"
        return f"init never reported the container's end; last output: {self.last_lines()}"


@dataclass
class Outcome:
    """``code`` is what cmbuild exits with; ``ok`` when init reported the container's end
    (``code`` is then the container's exit code, or init's failure code); ``reason`` says
    what happened, in words."""

    code: int
    ok: bool
    reason: str


def describe(code: int) -> str:
    """Words for a reported exit code: init's failures, a signal, or the plain number."""
    if code in INIT_FAILURES:
        return f"{INIT_FAILURES[code]} (exit code {code}; the container may use this number "\
               "too: the 'cmbuild: error:' line above tells)"
    if 128 < code < 128 + 65:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"the container was killed by {name} (exit code {code} = 128 + {code - 128})"
    return f"the container exited with code {code}"


def reported(code: int) -> Outcome:
    """The outcome of a run whose init reported exit code ``code``."""
    if not 0 <= code <= 255:
        return Outcome(NO_REPORT, False, f"the machine reported exit code {code}, which is not "
                                         "an exit status (0-255)")
    return Outcome(code, True, describe(code))


TIMEOUT_HINT = " (raise [machine].timeout if the container needs longer)"


def timed_out(timeout: float) -> Outcome:
    return Outcome(TIMEOUT, False, f"the machine did not end within {timeout:g} s and was "
                                   f"stopped{TIMEOUT_HINT}")


def not_reported(console: Console, how: str) -> Outcome:
    """A machine that ended (``how``: in what way) without init's report."""
    return Outcome(NO_REPORT, False, f"{how} without the container's end: {console.diagnosis()}")
