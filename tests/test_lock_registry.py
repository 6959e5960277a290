"""`cmbuild lock` and registry builds end to end: the example image pushed to a real registry on
loopback, pinned into a commented cartesi.toml (only the digest line changes), then built."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_pipeline import EXAMPLE, cmbuild, make_project, ran

TEMPLATE = """# my app
[image]
# where the image lives
ref = "{host}/examples/hello:v1"   # the tag we track
digest = "sha256:{old}"   # pinned by cmbuild lock

[machine]
# say hello
env = {{ GREETING = "from the registry" }}
"""


def test_lock_pins_only_the_digest_line_then_builds(pull_registry, tmp_path: Path) -> None:
    # the layout's tag is "latest"; the registry tag "v1" is what the project tracks
    pull_registry.push(EXAMPLE, "latest", "examples/hello")
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                    "--preserve-digests", f"docker://{pull_registry.host}/examples/hello:latest",
                    f"docker://{pull_registry.host}/examples/hello:v1"], check=True, timeout=120)
    proj = tmp_path / "p"
    proj.mkdir()
    before = TEMPLATE.format(host=pull_registry.host, old="0" * 64)
    (proj / "cartesi.toml").write_text(before)
    cmbuild(proj, "lock")
    after = (proj / "cartesi.toml").read_text()
    manifest = json.loads((EXAMPLE / "index.json").read_text())["manifests"][0]["digest"]
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(before.splitlines()) == len(after.splitlines())
    assert len(changed) == 1
    assert changed[0][1] == f'digest = "{manifest}"   # pinned by cmbuild lock'

    first = cmbuild(proj, "app")
    assert ran(first) == {"pull", "unpack", "config", "squashfs"}
    assert ran(cmbuild(proj, "app")) == set()
    lock = json.loads((proj / "cartesi.lock").read_text())
    assert lock["image"]["manifest"] == manifest
    assert list((proj / "cache" / "tmp").iterdir()) == []   # the layers inflated on the way are gone
    # the layers inflated while they downloaded give the drive that the layout gives
    local = make_project(tmp_path / "local", env='GREETING = "from the registry"')
    cmbuild(local, "app")
    assert ((local / ".cartesi" / "app.sqfs").read_bytes() == (proj / ".cartesi" / "app.sqfs").read_bytes())
    local_lock = json.loads((local / "cartesi.lock").read_text())
    assert local_lock["stages"]["unpack"]["output"] == lock["stages"]["unpack"]["output"]


def test_unpinned_build_needs_the_flag_and_says_which_digest(pull_registry, tmp_path: Path) -> None:
    pull_registry.push(EXAMPLE, "latest", "examples/unpinned")
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "cartesi.toml").write_text(f'[image]\nref = "{pull_registry.host}/examples/unpinned:latest"\n')
    refused = cmbuild(proj, "app", check=False)
    assert refused.returncode != 0 and "has no digest" in refused.stdout + refused.stderr
    done = subprocess.run([sys.executable, "-m", "cmbuild", "--allow-unpinned", "app"], cwd=proj,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((EXAMPLE / "index.json").read_text())["manifests"][0]["digest"]
    assert f"using {manifest}" in done.stderr
