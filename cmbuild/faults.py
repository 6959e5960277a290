"""Crash points for testing crash safety.

With ``CMBUILD_CRASH_AT=N`` in the environment, the N-th call of :func:`checkpoint` in the
process kills it with SIGKILL (no cleanup, no flush: as a power cut or an OOM kill would).
``CMBUILD_CRASH_LOG=FILE`` appends the label of every checkpoint reached, so that a test can
count them. Without these variables a checkpoint costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_count = 0
_lock = threading.Lock()   # stages write from several threads (unpack: the tar and the drive)
stage = "-"   # the stage being built (set by the pipeline), named in the log


def checkpoint(label: str) -> None:
    global _count
    target = os.environ.get("CMBUILD_CRASH_AT")
    log = os.environ.get("CMBUILD_CRASH_LOG")
    if not target and not log:
        return
    with _lock:
        _count += 1
        if log:
            with open(log, "a") as f:
                f.write(f"{_count} {stage} {label}\n")
        if target and _count == int(target):
            os.kill(os.getpid(), signal.SIGKILL)
