"""cmbuild.machines.outcome: how a run's end is read from the console, the same for every
backend (the judgement of real runs is in test_cartesi_e2e.py and test_e2e.py)."""

from __future__ import annotations

import re
from pathlib import Path

from cmbuild.machines import outcome as oc

REPO = Path(__file__).resolve().parent.parent


def test_console_lines_split_across_chunks_and_last_exit_line_wins() -> None:
    c = oc.Console()
    text = b"boot\r\ncmbuild: exit-code 3\nmore\ncmbuild: exit-code 42\r\n[ 1.0] reboot: Power down"
    done: list[str] = []
    for i in range(0, len(text), 5):              # chunk boundaries fall inside lines
        done += c.feed(text[i:i + 5])
    done += c.close()
    assert done == ["boot", "cmbuild: exit-code 3", "more", "cmbuild: exit-code 42", "[ 1.0] reboot: Power down"]
    assert c.exit_code == 42 and c.init_spoke and c.panic is None


def test_console_keeps_a_bounded_tail() -> None:
    c = oc.Console(keep=3)
    c.feed(b"".join(b"line %d\n" % i for i in range(100_000)))
    assert list(c.tail) == ["line 99997", "line 99998", "line 99999"]
    assert c.last_lines(2) == "line 99998 | line 99999"


def test_diagnosis_names_what_went_wrong() -> None:
    panic = oc.Console()
    panic.feed(b"cmbuild: x\n[    2.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n")
    assert panic.diagnosis() == "the kernel panicked: Attempted to kill init! exitcode=0x00000100"
    silent = oc.Console()
    silent.feed(b"OpenSBI v1.3\n")
    assert silent.diagnosis().startswith("init never started") and "OpenSBI v1.3" in silent.diagnosis()
    failed = oc.Console()
    failed.feed(b"cmbuild: error: mount overlay on /run/bundle/rootfs: No such device\n")
    assert failed.diagnosis() == "init failed: mount overlay on /run/bundle/rootfs: No such device"
    quiet = oc.Console()
    quiet.feed(b"cmbuild: writable root: overlayfs\nhello\n")
    assert quiet.diagnosis().startswith("init never reported the container's end")
    # a container printing "exit-code" in the middle of a line is not init's report
    fake = oc.Console()
    fake.feed(b"echo: cmbuild: exit-code 0 is what I say\n")
    assert fake.exit_code is None
    # nor is a line the container printed before the kernel panicked
    spoof = oc.Console()
    spoof.feed(b"cmbuild: exit-code 0\n[ 3.0] Kernel panic - not syncing: Attempted to kill init!\n")
    assert spoof.exit_code is None and spoof.diagnosis().startswith("the kernel panicked")


def test_reported_codes() -> None:
    assert oc.reported(0) == oc.Outcome(0, True, "the container exited with code 0")
    assert oc.reported(143).reason == "the container was killed by SIGTERM (exit code 143 = 128 + 15)"
    assert oc.reported(110).reason.startswith("crun could not create the container")
    bad = oc.reported(256)
    assert (bad.code, bad.ok) == (oc.NO_REPORT, False)
    assert oc.timed_out(20).code == 124 and "within 20 s" in oc.timed_out(20).reason


def test_failure_codes_match_docs_and_init() -> None:
    doc = (REPO / "docs" / "guest.md").read_text()
    documented = {int(m) for m in re.findall(r"^\| (1[0-9]{2}) \|", doc, re.M)}
    assert set(oc.INIT_FAILURES) == documented
