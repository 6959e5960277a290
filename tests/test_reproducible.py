"""Reproducibility you can prove: the whole build (app drive, runtime layer, kernel) in two
separate folders and stores, under different umask, TZ, locale, input file times and
SOURCE_DATE_EPOCH, gives byte-identical drives and lock files; audit catches a changed recipe."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from test_pipeline import EXAMPLE, REPO, cmbuild

pytestmark = pytest.mark.slow


def _project(root: Path, image: Path) -> Path:
    root.mkdir(parents=True)
    (root / "cartesi.toml").write_text(f'[image]\npath = "{image}"\nref = "latest"\n\n[machine]\nbackend = "qemu"\n')
    return root


def test_full_build_is_byte_identical_across_environments(tmp_path: Path) -> None:
    img_a = tmp_path / "a-image"
    img_b = tmp_path / "b" / "image copy"
    shutil.copytree(EXAMPLE, img_a)
    shutil.copytree(EXAMPLE, img_b)
    for p in img_b.rglob("*"):                       # different input file times
        os.utime(p, (1234567890, 1234567890))
    a = _project(tmp_path / "a", img_a)
    b = _project(tmp_path / "b" / "deeper" / "proj", img_b)
    cmbuild(a, "build", umask=0o022, env={"TZ": "UTC", "LC_ALL": "C"})
    cmbuild(b, "build", umask=0o077, env={"TZ": "America/Sao_Paulo", "LC_ALL": "C.UTF-8",
                                         "LANG": "C.UTF-8", "SOURCE_DATE_EPOCH": "1600000000"})
    for name in ("app.sqfs", "root.sqfs"):
        assert (a / ".cartesi" / name).read_bytes() == (b / ".cartesi" / name).read_bytes(), name
    assert (a / "cartesi.lock").read_bytes() == (b / "cartesi.lock").read_bytes()


def test_audit_names_the_stage_when_a_recipe_input_changed(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", recipes)
    proj = _project(tmp_path / "p", EXAMPLE)
    env = {"CMBUILD_RECIPES": str(recipes)}
    cmbuild(proj, "build", env=env)
    ok = cmbuild(proj, "audit", "--stage", "runtime", env=env)
    assert "every output matches cartesi.lock" in ok.stdout
    # the recipe file is edited in place (which a recipe version must never be): one applet fewer
    recipe = recipes / "runtime" / "0.1.0.toml"
    recipe.write_text(recipe.read_text().replace('"uname",', ""))
    bad = cmbuild(proj, "audit", "--stage", "runtime", env=env, check=False)
    assert bad.returncode != 0
    assert any(line.startswith("runtime") and "MISMATCH" in line for line in bad.stdout.splitlines())
    assert "usr/bin/uname: only in the locked output" in bad.stdout
