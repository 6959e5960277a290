"""audit and verify: a clean build audits clean; a one-byte change in the store, or a changed
source, is caught and named; verify --repair lets the next build restore a corrupt object."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

from test_pipeline import EXAMPLE, cmbuild, make_project, ran


def _flip_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _store_object(proj: Path, digest: str) -> Path:
    return proj / "cache" / "objects" / "sha256" / digest[7:]


def test_clean_build_audits_clean(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p")
    cmbuild(proj, "app")
    p = cmbuild(proj, "audit", "--stage", "app")
    assert "every output matches cartesi.lock" in p.stdout
    for stage in ("pull", "unpack", "config", "squashfs"):
        assert any(line.startswith(stage) and line.rstrip().endswith("ok") for line in p.stdout.splitlines()), stage


def test_one_byte_changed_in_a_store_drive_fails_audit_naming_stage_and_file(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p")
    cmbuild(proj, "app")
    lock = json.loads((proj / "cartesi.lock").read_text())
    app = _store_object(proj, lock["stages"]["squashfs"]["output"])
    # find hello.sh's bytes inside the uncompressed squashfs and change one of them
    data = app.read_bytes()
    offset = data.index(b"Hello from cmbuild!")
    _flip_byte(app, offset)
    p = cmbuild(proj, "audit", "--stage", "app", check=False)
    assert p.returncode != 0
    assert "CORRUPT IN STORE" in p.stdout
    assert "squashfs:" in p.stdout and "file app/hello.sh" in p.stdout


def test_changed_source_fails_audit(tmp_path: Path) -> None:
    img = tmp_path / "img"
    shutil.copytree(EXAMPLE, img)
    proj = make_project(tmp_path / "p", image=img)
    cmbuild(proj, "app")
    # someone replaces the image at the same path: same config, a different layout
    from test_pipeline import retag_with_new_config
    shutil.rmtree(img)
    retag_with_new_config(EXAMPLE, img, "changed")
    p = cmbuild(proj, "audit", "--stage", "app", check=False)
    assert p.returncode != 0
    rows = {line.split()[0]: line.split()[-1] for line in p.stdout.splitlines()
            if line.split() and line.split()[0] in ("pull", "unpack", "config", "squashfs")}
    # the layers are the same bytes: unpack and the image's drive still match; the image
    # record and the runtime config (its annotations) differ
    assert rows == {"pull": "MISMATCH", "unpack": "ok", "config": "MISMATCH", "squashfs": "ok"}
    assert "key annotations.test.label differs" in p.stdout      # explained, in the config.json
    assert "audit: MISMATCH: not reproducible as locked" in p.stdout


def test_verify_finds_corruption_and_repair_lets_the_build_restore(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p")
    cmbuild(proj, "app")
    lock = json.loads((proj / "cartesi.lock").read_text())
    unpack = _store_object(proj, lock["stages"]["unpack"]["output"])
    _flip_byte(unpack, 1000)
    p = cmbuild(proj, "verify", check=False)
    assert p.returncode != 0 and "corrupt: " + lock["stages"]["unpack"]["output"] in p.stderr
    cmbuild(proj, "verify", "--repair")
    assert not unpack.exists()
    assert cmbuild(proj, "verify").returncode == 0
    rebuilt = cmbuild(proj, "app")
    assert "unpack" in ran(rebuilt)
    assert unpack.exists()
    assert json.loads((proj / "cartesi.lock").read_text()) == lock
    with tarfile.open(unpack) as t:
        assert "app/hello.sh" in [m.name.lstrip("./") for m in t]


def test_audit_of_a_partial_build_checks_what_the_lock_holds(tmp_path: Path) -> None:
    """After `cmbuild app` (no kernel, no runtime layer), audit checks those stages and
    reports the others as not built: it neither rebuilds nor fails on them."""
    proj = make_project(tmp_path / "p")
    cmbuild(proj, "app")
    p = cmbuild(proj, "audit")
    rows = {line.split()[0]: line for line in p.stdout.splitlines() if line.split()}
    for stage in ("pull", "unpack", "config", "squashfs"):
        assert rows[stage].rstrip().endswith("ok"), p.stdout
    for stage in ("init", "runtime", "kernel", "snapshot"):
        assert rows[stage].rstrip().endswith("not built (not in cartesi.lock)"), p.stdout
    assert "audit: rebuilding kernel" not in p.stderr and "audit: rebuilding runtime" not in p.stderr
    assert "every output matches cartesi.lock" in p.stdout
    bad = cmbuild(proj, "audit", "--stage", "kernel", check=False)
    assert bad.returncode != 0 and "stage 'kernel' is not in cartesi.lock" in bad.stderr
