"""Crash safety and concurrency: builds killed with SIGKILL at every crash point, then
rebuilt, give the same digests as an uninterrupted build and leave no corrupt object; two
builds at once on one store both succeed with identical outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pipeline import cmbuild, make_project


def _outputs(proj: Path) -> dict[str, str]:
    lock = json.loads((proj / "cartesi.lock").read_text())
    return {k: v["output"] for k, v in lock["stages"].items()}


def test_sigkill_at_every_crash_point_then_rebuild(tmp_path: Path) -> None:
    """A fresh project per crash point: killed there, then built again."""
    ref = make_project(tmp_path / "ref")
    log = tmp_path / "points.log"
    cmbuild(ref, "app", env={"CMBUILD_CRASH_LOG": str(log)})
    expected = _outputs(ref)
    labels = [line.split(" ", 2)[2] for line in log.read_text().splitlines()]
    assert len(labels) >= 20, f"only {len(labels)} crash points in a build"
    kills = 0
    for n in range(1, len(labels) + 1):
        proj = make_project(tmp_path / f"k{n}")
        p = cmbuild(proj, "app", env={"CMBUILD_CRASH_AT": str(n)}, check=False)
        assert p.returncode == -9, (n, labels[n - 1], p.returncode, p.stderr[-500:])
        kills += 1
        cmbuild(proj, "app")
        assert _outputs(proj) == expected, (n, labels[n - 1])
        assert (proj / ".cartesi" / "app.sqfs").read_bytes() == (ref / ".cartesi" / "app.sqfs").read_bytes()
        assert "0 corrupt" in cmbuild(proj, "verify").stderr
    assert kills >= 20
    report = os.environ.get("CMBUILD_RELIABILITY_DIR")
    if report:   # scripts/reliability_report.py collects this for docs/reliability.md
        Path(report, "kills.json").write_text(json.dumps({"points": labels, "kills": kills}))


def test_killed_again_and_again_while_resuming(tmp_path: Path) -> None:
    """One project killed at its n-th crash point for n = 1, 2, ...: every run resumes what the
    previous one left, until a run finishes."""
    ref = make_project(tmp_path / "ref")
    cmbuild(ref, "app")
    proj = make_project(tmp_path / "victim")
    for n in range(1, 60):
        p = cmbuild(proj, "app", env={"CMBUILD_CRASH_AT": str(n)}, check=False)
        if p.returncode == 0:
            break
        assert p.returncode == -9
    else:
        raise AssertionError("the build never finished")
    assert _outputs(proj) == _outputs(ref)
    assert "0 corrupt" in cmbuild(proj, "verify").stderr


def test_two_builds_of_one_project_at_once(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p")
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-m", "cmbuild", "app"], cwd=proj, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    ref = make_project(tmp_path / "ref")
    cmbuild(ref, "app")
    assert _outputs(proj) == _outputs(ref)
    assert "0 corrupt" in cmbuild(proj, "verify").stderr


def test_two_projects_share_one_store(tmp_path: Path) -> None:
    store = tmp_path / "shared-cache"
    a = make_project(tmp_path / "a", extra=f'[cache]\ndir = "{store}"\n')
    b = make_project(tmp_path / "b", env='GREETING = "other"', extra=f'[cache]\ndir = "{store}"\n')
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "cmbuild", "app"], cwd=d, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for d in (a, b)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert time.monotonic() - t0 < 120
    oa, ob = _outputs(a), _outputs(b)
    assert oa["unpack"] == ob["unpack"]          # shared work, one object
    assert oa["config"] != ob["config"]          # different env, different config
    assert "0 corrupt" in cmbuild(a, "verify").stderr


@pytest.mark.slow
def test_kills_across_every_stage_of_a_full_build(tmp_path: Path) -> None:
    """The whole build (pull, unpack, squashfs, config, init, runtime with its package downloads,
    kernel) killed again and again at varying crash points while it resumes, until it finishes:
    same digests as an uninterrupted build, nothing corrupt."""
    toml = 'backend = "qemu"\n'     # goes into make_project's [machine] table
    ref = make_project(tmp_path / "ref", extra=toml)
    cmbuild(ref, "build")
    proj = make_project(tmp_path / "victim", extra=toml)
    log = tmp_path / "kills.log"
    kills, stages = 0, set()
    for i in range(300):
        at = 4 + (i * 5) % 7             # 4..10: the 4th point commits an object, so runs progress
        open(log, "w").close()
        p = cmbuild(proj, "build", env={"CMBUILD_CRASH_AT": str(at), "CMBUILD_CRASH_LOG": str(log)},
                    check=False)
        if p.returncode == 0:
            break
        assert p.returncode == -9, p.stderr[-2000:]
        kills += 1
        last = log.read_text().splitlines()[-1].split(" ", 2)
        stages.add(last[1])
    else:
        raise AssertionError("the build never finished")
    assert kills >= 20
    # a full build streams the app drive from unpack's own tree (the squashfs stage then only
    # records it), so the drive's writes are killed inside unpack; which of the two the crash
    # points fall in varies with the threads' timing
    assert {"unpack", "runtime", "kernel"} <= stages, stages
    assert _outputs(proj) == _outputs(ref)
    for name in ("app.sqfs", "root.sqfs"):
        assert (proj / ".cartesi" / name).read_bytes() == (ref / ".cartesi" / name).read_bytes()
    assert "0 corrupt" in cmbuild(proj, "verify").stderr
