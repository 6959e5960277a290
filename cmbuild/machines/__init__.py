"""The machines that boot the drives: ``cartesi`` (cartesi-machine) and ``qemu``
(qemu-system-riscv64), and how a run's end is judged for both (:mod:`.outcome`)."""

from __future__ import annotations

import re

# One rule for drive labels, checked when cartesi.toml is read: cartesi-machine 0.21 takes
# [a-z][a-z0-9-]{0,30}, a QEMU virtio-blk serial at most 20 bytes, and a drive's label is also
# its directory under /run/drives in the machine. Both are satisfied by:
DRIVE_LABEL = re.compile(r"[a-z][a-z0-9-]{0,15}")
DRIVE_LABEL_RULE = "1 to 16 lowercase letters, digits or '-', starting with a letter"


def valid_label(label: str) -> bool:
    return DRIVE_LABEL.fullmatch(label or "") is not None


def die_with_parent() -> None:
    """``preexec_fn`` of a machine's process: the kernel kills it (SIGKILL) when cmbuild dies,
    however cmbuild dies (a SIGKILL or a closed terminal runs no Python cleanup), so that no
    emulator keeps running, orphaned, with the project's drives open."""
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
