"""The remote stage cache and machine artifacts, against real registries on loopback (Debian's
docker-registry, anonymous and with basic auth) and a fault-injecting proxy in front of one.

"Machines" here are project folders with stores of their own: what one pushes, another
downloads; a remote that lies, fails, breaks connections or is down never changes what a build
makes (outputs and cartesi.lock compared byte for byte with a build that used no remote)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cmbuild.oci.artifact import fetch_object, get_artifact, prepare_object, push_artifact
from cmbuild.oci.registry import RegistryClient
from cmbuild.remote import STAGE_TYPE, tag_of
from cmbuild.store import Store

from registry_fixtures import (BASIC_PASSWORD, BASIC_USER, Fault, FaultProxy,  # noqa: F401
                               Registry, free_port, isolated_docker_config, write_docker_config)  # noqa: F401,F811
from test_pipeline import EXAMPLE

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_docker_config")]

HAS_CM = shutil.which("cartesi-machine") is not None and \
    shutil.which("cartesi-machine-stored-hash") is not None and \
    (Path(os.environ.get("CARTESI_IMAGES_PATH", "/nonexistent")) / "linux.bin").is_file()
needs_cm = pytest.mark.skipif(not HAS_CM, reason="cartesi-machine (v0.21.0) and its kernel are not "
                              "installed; its output is never faked")


def project(tmp: Path, cache: Path, remote: str | None = None, push: bool = False,
            backend: str = "qemu") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    machine = f'backend = "{backend}"\ntimeout = 300\n'
    if backend == "cartesi":
        kernel = Path(os.environ["CARTESI_IMAGES_PATH"]) / "linux.bin"
        machine += f'ram_image = "{kernel}"\n'
    cache_table = f'dir = "{cache}"\n'
    if remote:
        cache_table += f'remote = "{remote}"\npush = {"true" if push else "false"}\n'
    (tmp / "cartesi.toml").write_text(f'[image]\npath = "{EXAMPLE}"\nref = "latest"\n\n'
                                      f'[machine]\n{machine}\n[cache]\n{cache_table}')
    return tmp


def cmbuild(proj: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CMBUILD_")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "cmbuild", *args], cwd=proj, capture_output=True,
                          text=True, timeout=900, env=full)


def show(p: subprocess.CompletedProcess[str]) -> str:
    return f"rc={p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-4000:]}"


def outputs(proj: Path) -> dict[str, str]:
    """sha256 and mode of everything in .cartesi/ (markers aside) and of cartesi.lock."""
    out = {}
    for p in sorted((proj / ".cartesi").rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            out[str(p.relative_to(proj))] = (hashlib.sha256(p.read_bytes()).hexdigest()
                                             + f" {p.stat().st_mode & 0o7777:o}")
    out["cartesi.lock"] = hashlib.sha256((proj / "cartesi.lock").read_bytes()).hexdigest()
    return out


def stage_lines(stderr: str) -> dict[str, str]:
    """stage -> what the build said of it: built, downloaded from ..., restored."""
    said = {}
    for line in stderr.splitlines():
        if line.startswith("cmbuild: ") and ": " in line[9:]:
            name, _, rest = line[9:].partition(": ")
            if rest.split(" ")[0] in ("built", "downloaded", "restored", "found"):
                said[name] = rest
    return said


def from_remote(said: dict[str, str]) -> bool:
    """Every stage came from the remote: downloaded, or (unpack's tar, which only the drive
    stages read) found there and left there."""
    return bool(said) and all(v.startswith("downloaded") or (k == "unpack" and v.startswith("found"))
                              for k, v in said.items())


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A build of the example without a remote: (its project folder, its store)."""
    tmp = tmp_path_factory.mktemp("reference")
    proj = project(tmp / "proj", tmp / "cache")
    p = cmbuild(proj, "build")
    assert p.returncode == 0, show(p)
    return proj, tmp / "cache"


@pytest.fixture(scope="module")
def warm_remote(pull_registry: Registry, reference: tuple[Path, Path],
                tmp_path_factory: pytest.TempPathFactory) -> str:
    """A repository holding every stage output of the example's build (pushed by a machine
    whose store was already warm: outputs built before pushing was on are pushed too)."""
    tmp = tmp_path_factory.mktemp("pusher")
    cache = tmp / "cache"
    shutil.copytree(reference[1], cache)
    remote = f"{pull_registry.host}/cmbuild/warm"
    proj = project(tmp / "proj", cache, remote, push=True)
    p = cmbuild(proj, "build")
    assert p.returncode == 0, show(p)
    assert "pushed to" in p.stderr, show(p)
    return remote


def assert_same_as_reference(proj: Path, reference: tuple[Path, Path], remote: str | None) -> None:
    """Same outputs and lock as the build without a remote (the lock's 'remote' fields aside)."""
    ref_proj = reference[0]
    mine, theirs = outputs(proj), outputs(ref_proj)
    mine.pop("cartesi.lock"), theirs.pop("cartesi.lock")
    assert mine == theirs
    lock = json.loads((proj / "cartesi.lock").read_text())
    ref_lock = json.loads((ref_proj / "cartesi.lock").read_text())
    for entry in lock["stages"].values():
        if remote is not None and "remote" in entry:
            assert entry.pop("remote").startswith(remote + "@sha256:")
    assert lock == ref_lock


# ----- the artifact encoding --------------------------------------------------------------
def test_tree_artifact_round_trip_keeps_bytes_modes_and_holes(tmp_path: Path, pull_registry: Registry) -> None:
    store = Store(tmp_path / "a")
    with store.tmpdir() as t:
        src = Path(t) / "tree"
        (src / "sub" / "empty").mkdir(parents=True)
        ram = src / "0000000080000000-8000000.bin"
        with open(ram, "wb") as f:         # 64 MiB, sparse, a little data at both ends
            f.write(b"\x13" * 5000)
            f.seek(64 << 20)
            f.write(b"end")
        (src / "ro.bin").write_bytes(os.urandom(100_000))
        os.chmod(src / "ro.bin", 0o444)
        (src / "sub" / "x.sh").write_text("#!/bin/sh\n")
        os.chmod(src / "sub" / "x.sh", 0o751)
        os.symlink("ro.bin", src / "link")
        modes = {p.name: p.lstat().st_mode & 0o7777 for p in src.rglob("*") if not p.is_symlink()}
        digest = Store.add_tree(store, src)
    client = RegistryClient(pull_registry.host, push=True)
    with store.tmpdir() as work:
        blobs, kind, extras = prepare_object(store, digest, "t", Path(work))
        assert kind == "tree" and {e["path"] for e in extras} == {"link", "sub", "sub/empty"}
        by_title = {b.desc["annotations"]["org.opencontainers.image.title"]: b for b in blobs}
        assert by_title["0000000080000000-8000000.bin"].desc["mediaType"].endswith("+zstd")
        assert by_title["0000000080000000-8000000.bin"].desc["size"] < 100_000   # zeros compress
        assert not by_title["ro.bin"].desc["mediaType"].endswith("+zstd")        # random: as it is
        ann = {"io.cartesi.cmbuild.kind": kind, "io.cartesi.cmbuild.tree": json.dumps(extras)}
        mdigest, sent = push_artifact(client, "t/tree", "v1", blobs, STAGE_TYPE, ann)
        again, sent_again = push_artifact(client, "t/tree", "v1", blobs, STAGE_TYPE, ann)
    assert again == mdigest and sent_again < 2000    # blobs the registry has are not sent again
    other = Store(tmp_path / "b")
    doc, got_digest = get_artifact(RegistryClient(pull_registry.host), "t/tree", mdigest, STAGE_TYPE)
    assert got_digest == mdigest
    assert fetch_object(RegistryClient(pull_registry.host), "t/tree", doc, other, digest, "test") == digest
    tree = other.object_path(digest)
    fetched_ram = tree / "0000000080000000-8000000.bin"
    assert fetched_ram.stat().st_size == (64 << 20) + 3
    assert fetched_ram.stat().st_blocks * 512 < (1 << 20)          # the holes came back as holes
    assert (tree / "ro.bin").read_bytes() == (store.object_path(digest) / "ro.bin").read_bytes()
    assert {p.name: p.lstat().st_mode & 0o7777 for p in tree.rglob("*") if not p.is_symlink()} == modes
    assert os.readlink(tree / "link") == "ro.bin" and (tree / "sub" / "empty").is_dir()

    # a store that holds ro.bin's bytes already copies them instead of downloading them...
    ro = (store.object_path(digest) / "ro.bin").read_bytes()
    third = Store(tmp_path / "c")
    third.add_bytes(ro)
    c = RegistryClient(pull_registry.host)
    assert fetch_object(c, "t/tree", doc, third, digest, "test") == digest
    assert c.bytes_in < 50_000 and (third.object_path(digest) / "ro.bin").read_bytes() == ro
    # ...unless they are not what their name says: then they are downloaded, never trusted
    fourth = Store(tmp_path / "d")
    bad = fourth.object_path(fourth.add_bytes(ro))
    bad.chmod(0o644)
    bad.write_bytes(b"x" * len(ro))
    c = RegistryClient(pull_registry.host)
    assert fetch_object(c, "t/tree", doc, fourth, digest, "test") == digest
    assert c.bytes_in > 100_000 and (fourth.object_path(digest) / "ro.bin").read_bytes() == ro


def test_big_blob_upload_in_chunks_resumes_after_a_failed_chunk(tmp_path: Path, pull_registry: Registry) -> None:
    proxy = FaultProxy(pull_registry.port)
    failed: list[str] = []
    original = proxy.take_fault

    def take(path: str) -> Fault | None:
        """The second PATCH of the upload fails once (502)."""
        if not failed and len([s for s in proxy.log if s.method == "PATCH"]) == 2:
            failed.append(path)
            return Fault("", "status", code=502, retry_after=None)
        return original(path)

    proxy.take_fault = take  # type: ignore[method-assign]
    data = os.urandom(5 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        client = RegistryClient(proxy.host, push=True, backoff=0.01)
        assert client.push_blob("t/chunks", data, digest, len(data), chunk=1 << 20)
        assert not client.push_blob("t/chunks", data, digest, len(data), chunk=1 << 20)  # has it
    finally:
        proxy.close()
    assert failed, "no chunk was failed"
    assert len(proxy.requests_for("", "PATCH")) == 6          # 5 chunks, one of them twice
    assert [s for s in proxy.log if s.method == "GET" and "/blobs/uploads/" in s.path]  # status asked
    store = Store(tmp_path / "s")
    from cmbuild.oci.image import Descriptor
    RegistryClient(pull_registry.host).fetch_blob(
        store, "t/chunks", Descriptor("application/octet-stream", digest, len(data)))
    assert store.object_path(digest).read_bytes() == data


# ----- two machines, one remote -----------------------------------------------------------
def test_second_machine_downloads_everything_and_gets_the_same_bytes(
        tmp_path: Path, warm_remote: str, reference: tuple[Path, Path]) -> None:
    proj = project(tmp_path / "proj", tmp_path / "cache", warm_remote)
    p = cmbuild(proj, "build")
    assert p.returncode == 0, show(p)
    said = stage_lines(p.stderr)
    assert said.pop("unpack").startswith(f"found on {warm_remote}, not downloaded"), said
    assert said and all(v.startswith(f"downloaded from {warm_remote}") for v in said.values()), said
    assert "unpack: layers read" not in p.stderr       # nothing was built here
    assert_same_as_reference(proj, reference, warm_remote)
    # the canonical tar was never downloaded: the drive stages that read it came from the remote
    lock = json.loads((proj / "cartesi.lock").read_text())
    assert not Store(tmp_path / "cache").has(lock["stages"]["unpack"]["output"])
    # and the lock is byte-identical to the pushing machine's (both say where outputs are shared)
    again = cmbuild(proj, "build")
    assert again.returncode == 0 and not stage_lines(again.stderr), show(again)


@pytest.mark.parametrize("remote_then", ["up", "down"])
def test_an_output_left_on_the_remote_comes_when_a_stage_here_reads_it(
        tmp_path: Path, pull_registry: Registry, warm_remote: str, remote_then: str) -> None:
    repo = warm_remote.split("/", 1)[1]
    proxy = FaultProxy(pull_registry.port)
    try:
        proj = project(tmp_path / "proj", tmp_path / "cache", f"{proxy.host}/{repo}")
        p = cmbuild(proj, "build")
        assert p.returncode == 0 and stage_lines(p.stderr)["unpack"].startswith("found"), show(p)
        unpacked = json.loads((proj / "cartesi.lock").read_text())["stages"]["unpack"]["output"]
        assert not Store(tmp_path / "cache").has(unpacked)
        # a compressed app drive, which the remote has never seen: the drive is built here from
        # the tar, which is now downloaded (or, with the remote down, made here from the layers)
        if remote_then == "down":
            proxy.faults.append(Fault("", "status", times=10_000, code=503, retry_after="0"))
        with open(proj / "cartesi.toml", "a") as f:
            f.write('\n[drives.app]\ncompression = "lz4"\n')
        p = cmbuild(proj, "build")
    finally:
        proxy.close()
    assert p.returncode == 0, show(p)
    said = stage_lines(p.stderr)
    assert said["squashfs"].startswith("built"), said
    assert Store(tmp_path / "cache").verify(unpacked)             # the same tar, now here
    assert ("unpack: layers read" in p.stderr) == (remote_then == "down"), show(p)
    # the drive is the one a build without any remote makes
    alone = project(tmp_path / "alone", tmp_path / "cache-alone")
    with open(alone / "cartesi.toml", "a") as f:
        f.write('\n[drives.app]\ncompression = "lz4"\n')
    q = cmbuild(alone, "app")
    assert q.returncode == 0, show(q)
    assert (proj / ".cartesi" / "app.sqfs").read_bytes() == (alone / ".cartesi" / "app.sqfs").read_bytes()


def test_remote_from_the_command_line_and_environment(tmp_path: Path, warm_remote: str,
                                                      reference: tuple[Path, Path]) -> None:
    proj = project(tmp_path / "a", tmp_path / "cache-a")
    p = cmbuild(proj, "--remote", warm_remote, "build")
    assert p.returncode == 0 and "downloaded from" in p.stderr, show(p)
    proj = project(tmp_path / "b", tmp_path / "cache-b", warm_remote)
    p = cmbuild(proj, "build", env={"CMBUILD_REMOTE": "none"})
    assert p.returncode == 0 and "downloaded from" not in p.stderr, show(p)
    assert_same_as_reference(proj, reference, None)


def test_corrupted_blob_is_refused_and_the_stage_built_here(
        tmp_path: Path, pull_registry: Registry, warm_remote: str, reference: tuple[Path, Path]) -> None:
    lock = json.loads((reference[0] / "cartesi.lock").read_text())
    repo = warm_remote.split("/", 1)[1]
    client = RegistryClient(pull_registry.host)
    doc, _ = get_artifact(client, repo, tag_of(lock["stages"]["runtime"]["key"]), STAGE_TYPE)
    blob = doc["layers"][0]["digest"]
    proxy = FaultProxy(pull_registry.port)
    try:
        proxy.faults.append(Fault(blob, "corrupt", times=100))
        proj = project(tmp_path / "proj", tmp_path / "cache", f"{proxy.host}/{repo}")
        p = cmbuild(proj, "build")
    finally:
        proxy.close()
    assert p.returncode == 0, show(p)
    said = stage_lines(p.stderr)
    assert said["runtime"].startswith("built"), said
    assert "refused the output of stage 'runtime'" in p.stderr, show(p)
    assert "does not match its digest" in p.stderr, show(p)
    assert said["init"].startswith("downloaded"), said      # the rest still came from the remote
    assert_same_as_reference(proj, reference, f"{proxy.host}/{repo}")


def test_connection_dropped_mid_blob_resumes(tmp_path: Path, pull_registry: Registry, warm_remote: str,
                                             reference: tuple[Path, Path]) -> None:
    lock = json.loads((reference[0] / "cartesi.lock").read_text())
    repo = warm_remote.split("/", 1)[1]
    doc, _ = get_artifact(RegistryClient(pull_registry.host), repo,
                          tag_of(lock["stages"]["runtime"]["key"]), STAGE_TYPE)
    blob = doc["layers"][0]["digest"]
    proxy = FaultProxy(pull_registry.port)
    try:
        proxy.faults.append(Fault(blob, "cut", times=2, after=100_000))
        proj = project(tmp_path / "proj", tmp_path / "cache", f"{proxy.host}/{repo}")
        p = cmbuild(proj, "build")
        ranges = [s.headers.get("Range") for s in proxy.requests_for(blob)]
    finally:
        proxy.close()
    assert p.returncode == 0, show(p)
    assert stage_lines(p.stderr)["runtime"].startswith("downloaded"), show(p)
    # each break resumes where the bytes received so far end (Range), never from the start
    assert ranges[0] is None and len(ranges) == 3, ranges
    offsets = [int(r.split("=")[1].rstrip("-")) for r in ranges[1:]]
    assert 0 < offsets[0] <= 100_000 < offsets[1] <= 200_000, ranges
    assert_same_as_reference(proj, reference, f"{proxy.host}/{repo}")


def test_audit_rebuilds_here_and_never_asks_the_remote(tmp_path: Path, pull_registry: Registry,
                                                       warm_remote: str) -> None:
    repo = warm_remote.split("/", 1)[1]
    proxy = FaultProxy(pull_registry.port)
    try:
        proj = project(tmp_path / "proj", tmp_path / "cache", f"{proxy.host}/{repo}")
        p = cmbuild(proj, "build")
        assert p.returncode == 0 and from_remote(stage_lines(p.stderr)), show(p)
        proxy.log.clear()
        audit = cmbuild(proj, "audit")
        asked = list(proxy.log)
    finally:
        proxy.close()
    assert audit.returncode == 0, show(audit)
    assert "audit: rebuilding runtime" in audit.stderr and "downloaded" not in audit.stderr, show(audit)
    assert asked == [], asked     # what came from the remote is checked against a build here


@pytest.mark.parametrize("how", ["503", "down"])
def test_a_failing_or_absent_remote_warns_once_and_builds_here(
        tmp_path: Path, pull_registry: Registry, reference: tuple[Path, Path], how: str) -> None:
    proxy = None
    if how == "503":
        proxy = FaultProxy(pull_registry.port)
        proxy.faults.append(Fault("", "status", times=10_000, code=503, retry_after="0"))
        host = proxy.host
    else:
        host = f"127.0.0.1:{free_port()}"      # nothing listens there
    try:
        proj = project(tmp_path / "proj", tmp_path / "cache", f"{host}/cmbuild/x", push=True)
        p = cmbuild(proj, "build")
    finally:
        if proxy:
            proxy.close()
    assert p.returncode == 0, show(p)
    warnings = [ln for ln in p.stderr.splitlines() if "warning: remote cache" in ln]
    assert len(warnings) == 1, warnings
    assert ("HTTP 503" if how == "503" else "cannot reach the registry") in warnings[0]
    said = stage_lines(p.stderr)
    assert said["runtime"].startswith("built") and not any("downloaded" in v for v in said.values())
    assert_same_as_reference(proj, reference, None)


@pytest.mark.parametrize("code", [507, 413])
def test_a_full_remote_refuses_uploads_and_the_build_still_succeeds(
        tmp_path: Path, pull_registry: Registry, reference: tuple[Path, Path], code: int) -> None:
    """Lookups work, uploads are refused (507 Insufficient Storage, 413 Payload Too Large:
    what registries over quota answer): every stage is built here and the build succeeds,
    with warnings, and nothing half pushed is taken for pushed."""
    proxy = FaultProxy(pull_registry.port)
    proxy.faults.append(Fault("/blobs/uploads/", "status", times=10_000, code=code, retry_after="0"))
    try:
        proj = project(tmp_path / "proj", tmp_path / "cache", f"{proxy.host}/cmbuild/full-{code}",
                       push=True)
        p = cmbuild(proj, "build")
    finally:
        proxy.close()
    assert p.returncode == 0, show(p)
    warnings = [ln for ln in p.stderr.splitlines() if "warning: remote cache" in ln]
    assert len(warnings) == 1 and f"HTTP {code}" in warnings[0], show(p)
    assert "pushed to" not in p.stderr, show(p)
    said = stage_lines(p.stderr)
    assert said and all(v.startswith(("built", "restored")) for v in said.values()), said
    assert_same_as_reference(proj, reference, None)
    lock = json.loads((proj / "cartesi.lock").read_text())
    assert not any("remote" in e for e in lock["stages"].values())   # nothing claims to be shared


def test_remote_with_basic_auth_pushes_and_pulls_with_credentials(
        tmp_path: Path, pull_registry_basic: Registry, reference: tuple[Path, Path]) -> None:
    remote = f"{pull_registry_basic.host}/team/cache"
    creds = {"CMBUILD_REGISTRY_USER": BASIC_USER, "CMBUILD_REGISTRY_PASSWORD": BASIC_PASSWORD}
    cache = tmp_path / "cache-a"
    shutil.copytree(reference[1], cache)
    # without credentials: one warning, the build is fine, nothing is pushed
    proj = project(tmp_path / "anon", cache, remote, push=True)
    p = cmbuild(proj, "build")
    assert p.returncode == 0, show(p)
    assert "asks for credentials" in p.stderr and "pushed to" not in p.stderr
    p = cmbuild(proj, "build", env=creds)
    assert p.returncode == 0 and "pushed to" in p.stderr, show(p)
    proj = project(tmp_path / "b", tmp_path / "cache-b", remote)
    p = cmbuild(proj, "build", env=creds)
    assert p.returncode == 0, show(p)
    assert from_remote(stage_lines(p.stderr)), show(p)
    assert_same_as_reference(proj, reference, remote)


def test_remote_with_token_auth_and_docker_config_credentials(
        tmp_path: Path, pull_registry_token: Registry, reference: tuple[Path, Path],
        isolated_docker_config: Path) -> None:
    reg = pull_registry_token
    write_docker_config(isolated_docker_config, reg.host, *reg.creds)
    remote = f"{reg.host}/bob/cache"
    shutil.copytree(reference[1], tmp_path / "cache-a")
    a = project(tmp_path / "a", tmp_path / "cache-a", remote, push=True)
    p = cmbuild(a, "build")
    assert p.returncode == 0 and "pushed to" in p.stderr and "warning" not in p.stderr, show(p)
    scopes = {i["scope"] for i in reg.token_server.issued if i["user"] == reg.creds[0]}
    assert "repository:bob/cache:pull,push" in scopes, scopes
    b = project(tmp_path / "b", tmp_path / "cache-b", remote)
    p = cmbuild(b, "build")
    assert p.returncode == 0 and from_remote(stage_lines(p.stderr)), show(p)
    assert_same_as_reference(b, reference, remote)


def test_two_machines_push_the_same_keys_at_once(tmp_path: Path, pull_registry: Registry,
                                                 reference: tuple[Path, Path]) -> None:
    remote = f"{pull_registry.host}/cmbuild/race"
    projs = []
    for name in ("a", "b"):
        shutil.copytree(reference[1], tmp_path / f"cache-{name}")
        projs.append(project(tmp_path / name, tmp_path / f"cache-{name}", remote, push=True))
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    threads = [threading.Thread(target=lambda p=p: results.__setitem__(p.name, cmbuild(p, "build")))
               for p in projs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in results.values():
        assert p.returncode == 0 and "warning" not in p.stderr, show(p)
    assert outputs(projs[0]) == outputs(projs[1])     # same manifests: same lock, byte for byte
    proj = project(tmp_path / "c", tmp_path / "cache-c", remote)
    p = cmbuild(proj, "build")
    assert p.returncode == 0 and from_remote(stage_lines(p.stderr))
    assert outputs(proj) == outputs(projs[0])


def test_bad_remote_settings_are_clear(tmp_path: Path) -> None:
    proj = project(tmp_path / "p", tmp_path / "cache", "127.0.0.1:5000/cache:v1")
    p = cmbuild(proj, "build")
    assert p.returncode != 0 and "[cache].remote" in p.stderr and "without a tag" in p.stderr, show(p)
    proj = project(tmp_path / "q", tmp_path / "cache", "127.0.0.1:5000/cache")
    p = cmbuild(proj, "build", env={"CMBUILD_REMOTE_PUSH": "maybe"})
    assert p.returncode != 0 and "$CMBUILD_REMOTE_PUSH" in p.stderr, show(p)


# ----- on the real emulator: the snapshot through the remote, push and fetch ---------------
@needs_cm
@pytest.mark.cartesi
def test_snapshot_shared_and_machine_pushed_and_fetched(tmp_path: Path, pull_registry: Registry) -> None:
    remote = f"{pull_registry.host}/cmbuild/snapshots"
    a = project(tmp_path / "a", tmp_path / "cache-a", remote, push=True, backend="cartesi")
    p = cmbuild(a, "snapshot")
    assert p.returncode == 0, show(p)
    b = project(tmp_path / "b", tmp_path / "cache-b", remote, backend="cartesi")
    p = cmbuild(b, "snapshot")
    assert p.returncode == 0, show(p)
    assert stage_lines(p.stderr)["snapshot"].startswith("downloaded"), show(p)
    assert from_remote(stage_lines(p.stderr))
    assert outputs(a) == outputs(b)          # .cartesi/image included: every file and mode
    image_b = b / ".cartesi" / "image"
    ram = next(image_b.glob("0000000080000000-*.bin"))
    assert ram.stat().st_blocks * 512 < ram.stat().st_size / 4          # still sparse
    root_hash = cmbuild(b, "hash").stdout.strip()
    assert root_hash == json.loads((a / "cartesi.lock").read_text())["root_hash"]

    # push the machine, fetch it by digest elsewhere: verified, same files, same hash
    pushed = cmbuild(b, "push", f"{pull_registry.host}/dapps/example:v1")
    assert pushed.returncode == 0, show(pushed)
    digest = pushed.stdout.strip()
    assert digest.startswith("sha256:") and len(digest) == 71 and "\n" not in digest
    dest = tmp_path / "node" / "machine"
    got = cmbuild(tmp_path, "fetch", f"{pull_registry.host}/dapps/example@{digest}", str(dest))
    assert got.returncode == 0, show(got)
    assert got.stdout.strip() == root_hash
    assert subprocess.run(["cartesi-machine-stored-hash", str(dest)], capture_output=True,
                          text=True).stdout.strip().endswith(root_hash[2:])
    for f in image_b.iterdir():
        if not f.name.startswith("."):
            assert (dest / f.name).read_bytes() == f.read_bytes(), f.name
            assert (dest / f.name).stat().st_mode == f.stat().st_mode, f.name
    client = RegistryClient(pull_registry.host)
    doc, _ = get_artifact(client, "dapps/example", digest, "application/vnd.cartesi.machine.v1")
    ann = doc["annotations"]
    assert ann["io.cartesi.machine.template-hash"] == root_hash
    assert json.loads(ann["io.cartesi.cmbuild.lock"]) == json.loads((b / "cartesi.lock").read_text())

    # an artifact whose annotated hash is not the machine's is refused, and nothing is kept
    lie = dict(doc)
    lie["annotations"] = {**ann, "io.cartesi.machine.template-hash": "0x" + "ab" * 32}
    cfg = {"template_hash": "0x" + "ab" * 32}
    cfg_bytes = json.dumps(cfg).encode()
    pusher = RegistryClient(pull_registry.host, push=True)
    cfg_digest = "sha256:" + hashlib.sha256(cfg_bytes).hexdigest()
    pusher.push_blob("dapps/example", cfg_bytes, cfg_digest, len(cfg_bytes))
    lie["config"] = {"mediaType": doc["config"]["mediaType"], "digest": cfg_digest, "size": len(cfg_bytes)}
    data = json.dumps(lie).encode()
    bad = pusher.put_manifest("dapps/example", "bad", data, doc["mediaType"])
    dest2 = tmp_path / "node" / "bad"
    refused = cmbuild(tmp_path, "fetch", f"{pull_registry.host}/dapps/example@{bad}", str(dest2))
    assert refused.returncode != 0 and "root hash" in refused.stderr and "refused" in refused.stderr, show(refused)
    assert not dest2.exists() and refused.stdout == ""
    assert [p.name for p in (tmp_path / "node").iterdir()] == ["machine"]   # no scratch left
    # a machine whose RAM was altered but whose stored hash tree was kept: every blob and file
    # matches its digest and cartesi-machine-stored-hash prints the true template hash (it reads
    # the stored tree); the hash recomputed from the contents does not, and it is refused
    from cmbuild.oci.artifact import prepare_file
    work = tmp_path / "tamper"
    work.mkdir()
    altered = work / ram.name
    shutil.copyfile(ram, altered)
    with open(altered, "r+b") as f:
        f.seek(4 << 20)
        f.write(b"\x42")
    blob = prepare_file(altered, ram.name, work)
    pusher.push_blob("dapps/example", blob.path.read_bytes(), blob.desc["digest"], blob.desc["size"])
    forged = dict(doc)
    forged["layers"] = [{**blob.desc, "annotations": {**x["annotations"],
                                                     **{k: v for k, v in blob.desc["annotations"].items()
                                                        if k != "io.cartesi.cmbuild.mode"}}}
                        if x["annotations"]["org.opencontainers.image.title"] == ram.name else x
                        for x in doc["layers"]]
    assert forged["layers"] != doc["layers"]
    bad = pusher.put_manifest("dapps/example", "forged", json.dumps(forged).encode(), doc["mediaType"])
    dest3 = tmp_path / "node" / "forged"
    refused = cmbuild(tmp_path, "fetch", f"{pull_registry.host}/dapps/example@{bad}", str(dest3))
    assert refused.returncode != 0 and "contents hash to" in refused.stderr, show(refused)
    assert not dest3.exists() and refused.stdout == ""

    # by tag only: refused with what to do
    p = cmbuild(tmp_path, "fetch", f"{pull_registry.host}/dapps/example:v1", str(tmp_path / "x"))
    assert p.returncode != 0 and "by digest" in p.stderr
