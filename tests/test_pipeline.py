"""The task graph end to end on the example image, as far as the app drive: incrementality,
early cutoff, determinism, the lock file and audit. Runs the real `cmbuild` command."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello" / "image"


def cmbuild(project: Path, *args: str, env: dict[str, str] | None = None, check: bool = True,
            umask: int | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.pop("CMBUILD_CONFIG", None)
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-m", "cmbuild", *args], cwd=project, env=full_env, text=True,
                       capture_output=True, timeout=600,
                       preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    if check and p.returncode != 0:
        raise AssertionError(f"cmbuild {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def ran(p: subprocess.CompletedProcess[str]) -> set[str]:
    """Stages doit executed ('.  name'), as opposed to up to date ('-- name')."""
    return set(re.findall(r"^\.\s+(\S+)", p.stderr, re.M))


def uptodate(p: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"^--\s+(\S+)", p.stderr, re.M))


def make_project(root: Path, image: Path = EXAMPLE, extra: str = "", env: str = 'GREETING = "hi"') -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cartesi.toml").write_text(
        f'[image]\npath = "{image}"\nref = "latest"\n\n[machine]\nenv = {{ {env} }}\n{extra}')
    return root


def write_blob(layout: Path, data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / hexd).write_bytes(data)
    return "sha256:" + hexd


def retag_with_new_config(src: Path, dst: Path, label: str) -> None:
    """A copy of an OCI layout whose config (and so manifest) differs but whose layers don't."""
    shutil.copytree(src, dst)
    index = json.loads((dst / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads((dst / "blobs" / "sha256" / mdesc["digest"][7:]).read_bytes())
    config = json.loads((dst / "blobs" / "sha256" / manifest["config"]["digest"][7:]).read_bytes())
    config["config"].setdefault("Labels", {})["test.label"] = label
    cbytes = json.dumps(config, sort_keys=True).encode()
    manifest["config"] = {**manifest["config"], "digest": write_blob(dst, cbytes), "size": len(cbytes)}
    mbytes = json.dumps(manifest, sort_keys=True).encode()
    mdesc.update(digest=write_blob(dst, mbytes), size=len(mbytes))
    (dst / "index.json").write_text(json.dumps(index, sort_keys=True))


def lock(project: Path) -> dict:
    return json.loads((project / "cartesi.lock").read_text())


def test_second_build_runs_nothing_and_env_change_reruns_only_dependents(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p")
    first = cmbuild(proj, "app")
    assert ran(first) == {"pull", "unpack", "config", "squashfs"}
    assert (proj / ".cartesi" / "app.sqfs").is_file() and (proj / ".cartesi" / "config.json").is_file()
    second = cmbuild(proj, "app")
    assert ran(second) == set() and uptodate(second) == {"pull", "unpack", "config", "squashfs"}
    drive = proj / ".cartesi" / "app.sqfs"
    before = (drive.stat().st_ino, hashlib.sha256(drive.read_bytes()).hexdigest(), lock(proj)["stages"]["squashfs"])

    # one [machine] env value changes: only the config (its own drive) re-runs; the image's
    # drive keeps its bytes, its store object and its published file
    make_project(proj, env='GREETING = "changed"')
    third = cmbuild(proj, "app")
    assert ran(third) == {"config"}
    assert uptodate(third) >= {"pull", "unpack", "squashfs"}
    assert (drive.stat().st_ino, hashlib.sha256(drive.read_bytes()).hexdigest(),
            lock(proj)["stages"]["squashfs"]) == before
    cfg = json.loads(_read_config(proj))
    assert "GREETING=changed" in cfg["process"]["env"]
    assert len(_read_config(proj)) % 4096 == 0          # the file is the drive: whole 4 KiB blocks

    # `doit info` says why a stage would run
    make_project(proj, env='GREETING = "again"')
    info = cmbuild(proj, "info", "config", check=False)
    assert "changed since cartesi.lock: options.env.GREETING" in info.stdout


def test_cold_app_makes_the_drive_while_unpacking_and_stage_by_stage_gives_the_same_bytes(tmp_path: Path) -> None:
    """`cmbuild app` on an empty store makes the app drive from the unpack stage's tree while
    it writes the canonical tar, and records it under the squashfs stage's own key; `cmbuild
    unpack` alone does not, and the squashfs stage then makes the same drive from the stored
    tar."""
    together = make_project(tmp_path / "together")
    p = cmbuild(together, "app")
    assert "app drive stored beside it" in p.stderr
    assert re.search(r"^cmbuild: squashfs: restored ", p.stderr, re.M), p.stderr
    apart = make_project(tmp_path / "apart")
    for stage in ("pull", "unpack"):
        q = cmbuild(apart, stage)
    assert "app drive stored beside it" not in q.stderr
    q = cmbuild(apart, "squashfs")
    assert re.search(r"^cmbuild: squashfs: built ", q.stderr, re.M), q.stderr
    cmbuild(apart, "config")
    assert lock(apart)["stages"] == lock(together)["stages"]
    assert (apart / ".cartesi" / "app.sqfs").read_bytes() == (together / ".cartesi" / "app.sqfs").read_bytes()


def _read_config(proj: Path) -> bytes:
    return (proj / ".cartesi" / "config.json").read_bytes()


def test_new_image_digest_with_same_layers_reruns_pull_but_not_unpack(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", image=tmp_path / "img1")
    shutil.copytree(EXAMPLE, tmp_path / "img1")
    cmbuild(proj, "app")
    old = lock(proj)
    retag_with_new_config(EXAMPLE, tmp_path / "img2", "v2")
    make_project(proj, image=tmp_path / "img2")
    p = cmbuild(proj, "app")
    assert "pull" in ran(p)
    assert "unpack" in uptodate(p)            # early cutoff: same layers, same rootfs
    new = lock(proj)
    assert new["image"]["manifest"] != old["image"]["manifest"]
    assert new["stages"]["unpack"]["output"] == old["stages"]["unpack"]["output"]


def test_touching_the_source_without_changing_it_rebuilds_nothing(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "img")
    proj = make_project(tmp_path / "p", image=tmp_path / "img")
    cmbuild(proj, "app")
    os.utime(tmp_path / "img" / "index.json", (1, 1))
    assert ran(cmbuild(proj, "app")) == set()


def test_builds_are_identical_across_folders_umask_tz_locale_and_epoch(tmp_path: Path) -> None:
    a = make_project(tmp_path / "a")
    b = make_project(tmp_path / "deeper" / "b")
    cmbuild(a, "app", umask=0o022, env={"TZ": "UTC", "LC_ALL": "C"})
    cmbuild(b, "app", umask=0o077, env={"TZ": "Asia/Tokyo", "LC_ALL": "C.UTF-8", "SOURCE_DATE_EPOCH": "1700000000"})
    assert (a / ".cartesi" / "app.sqfs").read_bytes() == (b / ".cartesi" / "app.sqfs").read_bytes()
    assert (a / "cartesi.lock").read_bytes() == (b / "cartesi.lock").read_bytes()


def test_deleting_a_published_drive_republishes_without_rebuilding(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p")
    cmbuild(proj, "app")
    digest = lock(proj)["stages"]["squashfs"]["output"]
    (proj / ".cartesi" / "app.sqfs").unlink()
    p = cmbuild(proj, "app")
    assert ran(p) == {"squashfs"}
    assert "restored" in p.stderr
    assert "sha256:" + hashlib.sha256((proj / ".cartesi" / "app.sqfs").read_bytes()).hexdigest() == digest


def test_bad_config_is_one_clear_message(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "cartesi.toml").write_text('[image]\nref = "x"\ndigest = "sha256:123"\n')
    p = cmbuild(proj, "app", check=False)
    assert p.returncode == 2
    assert "cartesi.toml: [image].digest: expected sha256:<64 hex>, got 'sha256:123'" in p.stderr
    assert "Traceback" not in p.stderr


def test_unpinned_ref_is_refused(tmp_path: Path) -> None:
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "cartesi.toml").write_text('[image]\nref = "127.0.0.1:9/none/app:latest"\n')
    p = cmbuild(proj, "pull", check=False)
    assert p.returncode != 0
    assert "has no digest" in (p.stdout + p.stderr) and "cmbuild lock" in (p.stdout + p.stderr)


def test_list_shows_the_stages(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p")
    out = cmbuild(proj, "list").stdout
    for name in ("pull", "unpack", "squashfs", "config", "app", "init", "rollups", "runtime", "kernel",
                 "snapshot", "boot", "audit", "verify", "hash", "lock"):
        assert re.search(rf"^{name}\s", out, re.M), name


def test_init_writes_a_project_that_plain_doit_builds(tmp_path: Path) -> None:
    proj = tmp_path / "new"
    proj.mkdir()
    cmbuild(proj, "init", str(EXAMPLE))
    assert (proj / "dodo.py").read_text().strip().endswith("from cmbuild.dodo import *  # noqa: F401,F403")
    text = (proj / "cartesi.toml").read_text()
    assert f'path = "{EXAMPLE}"' in text
    (proj / "cartesi.toml").write_text(text.replace(f'path = "{EXAMPLE}"', f'path = "{EXAMPLE}"\nref = "latest"'))
    again = cmbuild(proj, "init")
    assert "exists; left as it is" in again.stderr
    p = subprocess.run([sys.executable, "-m", "doit", "app"], cwd=proj, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (proj / ".cartesi" / "app.sqfs").is_file()


def test_init_for_a_rollups_app(tmp_path: Path) -> None:
    from cmbuild.config import load_project
    plain = tmp_path / "plain"
    plain.mkdir()
    cmbuild(plain, "init", str(EXAMPLE))
    assert load_project(plain / "cartesi.toml").rollups is None
    assert "# a rollups app? add:  [rollups]" in (plain / "cartesi.toml").read_text()
    for flag, server in (("--rollups", "builtin"), ("--rollups=image", "image")):
        proj = tmp_path / server
        proj.mkdir()
        cmbuild(proj, "init", str(EXAMPLE), flag)
        assert load_project(proj / "cartesi.toml").rollups.server == server
    bad = cmbuild(tmp_path, "init", "x", "--rollup", check=False)
    assert bad.returncode == 2 and "unknown option --rollup" in bad.stderr


def test_docker_save_tarball_written_by_skopeo_builds_the_same_drive(tmp_path: Path) -> None:
    """The example as a `docker save` tarball made by an independent tool gives the same
    flattened rootfs and the same app drive as the OCI layout it came from."""
    archive = tmp_path / "hello.tar"
    subprocess.run(["skopeo", "copy", "-q", f"oci:{EXAMPLE}:latest", f"docker-archive:{archive}:hello:latest"],
                   check=True, timeout=120)
    a = make_project(tmp_path / "layout")
    b = tmp_path / "tarball"
    b.mkdir()
    (b / "cartesi.toml").write_text((a / "cartesi.toml").read_text()
                                    .replace(f'path = "{EXAMPLE}"', f'path = "{archive}"')
                                    .replace('ref = "latest"', 'ref = "hello:latest"'))
    cmbuild(a, "app")
    cmbuild(b, "app")
    la, lb = lock(a), lock(b)
    assert la["stages"]["unpack"]["output"] == lb["stages"]["unpack"]["output"]
    assert (a / ".cartesi" / "app.sqfs").read_bytes() == (b / ".cartesi" / "app.sqfs").read_bytes()


def test_extra_drive_builders(tmp_path: Path) -> None:
    """[drives.<name>] with builder directory, tar and empty: built, published, read back."""
    import tarfile as _tarfile
    src = tmp_path / "dir"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha\n")
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o700)
    tar = tmp_path / "in.tar"
    with _tarfile.open(tar, "w") as t:
        t.add(src / "sub" / "a.txt", arcname="only/a.txt")
    proj = make_project(tmp_path / "p", extra=(
        f'[drives.docs]\nbuilder = "directory"\ndirectory = "{src}"\nmount = "/docs"\n'
        f'[drives.blob]\nbuilder = "tar"\nfilename = "{tar}"\nformat = "ext2"\nmount = "/blob"\n'
        '[drives.scratch]\nbuilder = "empty"\nsize = "2Mi"\nformat = "ext2"\nmount = "/scratch"\n'))
    p = cmbuild(proj, "drive-docs", "drive-blob", "drive-scratch", "config")
    assert {"drive-docs", "drive-blob", "drive-scratch"} <= ran(p)
    out = proj / ".cartesi"
    listing = subprocess.run(["unsquashfs", "-lln", str(out / "docs.sqfs")], capture_output=True, text=True).stdout
    assert "squashfs-root/sub/a.txt" in listing
    assert "-rwxr-x--x 0/0" in listing or "-rwx" in listing.split("run.sh")[0].splitlines()[-1]
    ls_blob = subprocess.run(["debugfs", "-R", "ls -l /only", str(out / "blob.ext2")], capture_output=True,
                             text=True).stdout
    assert "a.txt" in ls_blob
    assert (out / "scratch.ext2").stat().st_size == 2 << 20
    # the container sees them as volumes at their mount paths
    store_cfg = lock(proj)["stages"]["config"]["output"]
    doc = json.loads((proj / "cache" / "objects" / "sha256" / store_cfg[7:]).read_text())
    mounts = {m["destination"]: m for m in doc["mounts"]}
    assert mounts["/docs"]["source"] == "/run/drives/docs" and "ro" in mounts["/docs"]["options"]
    assert mounts["/scratch"]["source"] == "/run/drives/scratch" and "rw" in mounts["/scratch"]["options"]


def _data_offsets(image: Path) -> dict[str, int]:
    """Where each regular file's data starts in an uncompressed squashfs (found by content:
    the drive holds it as it is), for files large enough to be found unambiguously."""
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(image)], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    img = image.read_bytes()
    out = {}
    for line in listing:
        fields = line.split()
        if not fields or not fields[0].startswith("-"):
            continue
        name = fields[-1]
        data = subprocess.run(["unsquashfs", "-cat", str(image), name], capture_output=True, check=True).stdout
        if len(data) < 4096:
            continue
        mid = len(data) // 2
        at = img.find(data[mid:mid + 1024])
        assert at >= 0 and img.find(data[mid:mid + 1024], at + 1) < 0, name
        out[name] = at - mid
    return out


def test_app_drive_data_is_8_byte_aligned(tmp_path: Path) -> None:
    """Every program and library of the image starts on an 8-byte boundary in the uncompressed
    app drive (the Cartesi machine's kernel loads such files markedly faster: see
    docs/benchmarks.md); the tree read back is the canonical one."""
    proj = make_project(tmp_path / "p")
    cmbuild(proj, "app")
    image = proj / ".cartesi" / "app.sqfs"
    offsets = _data_offsets(image)
    elf = {n: o for n, o in offsets.items()
           if subprocess.run(["unsquashfs", "-cat", str(image), n], capture_output=True).stdout[:4] == b"\x7fELF"}
    assert {"/usr/bin/busybox", "/usr/bin/hello", "/usr/lib/riscv64-linux-gnu/libc.so.6"} <= set(elf)
    assert {n: o % 8 for n, o in elf.items()} == {n: 0 for n in elf}
