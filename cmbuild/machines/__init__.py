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
