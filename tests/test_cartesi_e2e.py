"""End to end on the real Cartesi Machine emulator, through the real commands (`cmbuild run`,
`snapshot`, `hash`, `audit`) and `cartesi-machine --load`: the example and small images built
here run in the machine, their output and exit codes come back, snapshots are reproducible,
and every way a run can fail ends non-zero with a message that says what happened.

Needs `cartesi-machine` on PATH and a kernel at `$CARTESI_IMAGES_PATH/linux.bin` (what
`eval "$(../shared/cartesi-machine/setup)"` gives, and what .ci/run does); skipped otherwise.
Nothing here fakes the emulator.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ocihelpers import busybox_image, debian_busybox
from test_pipeline import EXAMPLE, REPO

pytestmark = [pytest.mark.cartesi, pytest.mark.slow]

KERNEL = Path(os.environ.get("CARTESI_IMAGES_PATH", "/nonexistent")) / "linux.bin"
if shutil.which("cartesi-machine") is None or shutil.which("cartesi-machine-stored-hash") is None:
    pytest.skip("cartesi-machine (machine-emulator v0.21.0) is not on PATH; no package registry "
                "ships it, and its output is never faked", allow_module_level=True)
if not KERNEL.is_file():
    pytest.skip("no kernel at $CARTESI_IMAGES_PATH/linux.bin for cartesi-machine",
                allow_module_level=True)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: the runtime layer is built once."""
    return tmp_path_factory.mktemp("cache")


def project(tmp: Path, cache: Path, machine: str = "", extra: str = "", image: Path = EXAMPLE,
            timeout: int = 300) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cartesi.toml").write_text(
        f'[image]\npath = "{image}"\nref = "latest"\n\n'
        f'[machine]\nbackend = "cartesi"\nram_image = "{KERNEL}"\ntimeout = {timeout}\n{machine}\n'
        f'[cache]\ndir = "{cache}"\n{extra}')
    return tmp


def cmbuild(proj: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ)
    full.pop("CMBUILD_CONFIG", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "cmbuild", *args], cwd=proj, capture_output=True,
                          text=True, timeout=900, env=full)


def show(p: subprocess.CompletedProcess[str]) -> str:
    return f"rc={p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """Debian's static busybox for riscv64, the one the runtime layer pins."""
    return debian_busybox(tmp_path_factory.mktemp("bb-store"))


minimal_image = busybox_image


# ----- running containers ------------------------------------------------------------------------

def test_example_runs_with_image_config_and_overrides(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, 'env = { GREETING = "from toml" }')
    p = cmbuild(proj, "run")
    assert p.returncode == 0, show(p)
    out = p.stdout
    assert "Hello from cmbuild!" in out and "Hello, world!" in out
    assert "user=app uid=1000" in out and "cwd=/app" in out and "args=world" in out
    assert "greeting=from toml" in out and "tmp-write=ok" in out
    assert "cmbuild: writable root: overlayfs" in out          # this kernel has overlayfs
    assert "cmbuild: exit-code 0" in out.splitlines()
    assert f"backend: cartesi (set in [machine].backend); kernel: {KERNEL}" in p.stderr
    assert "Halted" in p.stderr and re.search(r"cmbuild: cycles: \d+", p.stderr)
    assert "the container exited with code 0" in p.stderr


@pytest.mark.parametrize("code", [42, 3])
def test_exit_codes_and_overrides(tmp_path: Path, cache: Path, code: int) -> None:
    proj = project(tmp_path / "p", cache,
                   f'env = {{ EXIT_CODE = "{code}" }}\ncmd = ["one", "two"]\nworkdir = "/tmp"\nuser = "root"')
    p = cmbuild(proj, "run")
    assert p.returncode == code, show(p)
    assert "args=one two" in p.stdout and "cwd=/tmp" in p.stdout and "user=root uid=0" in p.stdout
    assert "root-write=ok" in p.stdout                           # overlay: the root is writable
    assert f"Halted with payload: {code}" in p.stderr
    assert f"the container exited with code {code}" in p.stderr


def test_ext2_app_drive_extra_drives_and_no_overlay(tmp_path: Path, cache: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("from the host\n")
    script = ("cat /data/input.txt; echo ok > /written && cat /written; "
              "echo scratch > /scratch/s && cat /scratch/s")
    proj = project(tmp_path / "p", cache,
                   f'entrypoint = ["/bin/sh", "-c", "{script}"]\nuser = "root"\n'
                   'bootargs = ["cmbuild.overlay=0", "cmbuild.debug=1"]',
                   extra='[drives.app]\nformat = "ext2"\nextra_size = "4Mi"\n'
                         f'[drives.data]\nbuilder = "directory"\ndirectory = "{data}"\nmount = "/data"\n'
                         '[drives.scratch]\nbuilder = "empty"\nformat = "ext2"\nsize = "2Mi"\nmount = "/scratch"\n')
    p = cmbuild(proj, "run")
    assert p.returncode == 0, show(p)
    lines = p.stdout.splitlines()
    assert "from the host" in lines and "ok" in lines and "scratch" in lines
    assert "cmbuild: writable root: ext2 app drive, read-write (cmbuild.overlay=0)" in lines
    # each extra drive is mounted once, by its label (the emulator also names every drive
    # flashdrive<N> in the device tree: those are not mounted again, nor are root, app, config)
    mounted = sorted(re.sub(r"^cmbuild: drive (\S+) .*", r"\1", ln) for ln in lines if " on /run/drives/" in ln)
    assert mounted == ["data", "scratch"], lines
    # the machine wrote into its drives, never into the store's objects
    assert "0 corrupt" in cmbuild(proj, "verify").stderr


def test_read_only_root_of_a_minimal_image(tmp_path: Path, cache: Path, busybox: bytes) -> None:
    """An image with no /proc (nor /dev, /sys, /tmp) runs on a read-only root: the app drive
    carries every mount point its config.json needs."""
    image = minimal_image(tmp_path / "img", busybox)
    proj = project(tmp_path / "p", cache,
                   'entrypoint = ["/bin/sh", "-c", "echo minimal-ok; busybox ls /proc/self >/dev/null && echo proc-ok; exit 5"]\n'
                   'bootargs = ["cmbuild.overlay=0"]', image=image)
    p = cmbuild(proj, "run")
    assert p.returncode == 5, show(p)
    assert "cmbuild: writable root: read-only squashfs app drive" in p.stdout
    assert "minimal-ok" in p.stdout and "proc-ok" in p.stdout
    listing = set(subprocess.run(["unsquashfs", "-l", str(proj / ".cartesi" / "app.sqfs")],
                                 capture_output=True, text=True, check=True).stdout.splitlines())
    for d in ("proc", "dev", "sys"):                           # added: the image has none
        assert f"squashfs-root/{d}" in listing
    assert "squashfs-root/etc" not in listing and "squashfs-root/tmp" not in listing  # nothing else


def test_crun_failure_is_not_the_containers_exit_code(tmp_path: Path, cache: Path) -> None:
    """A mount that crun cannot make (under a file): crun fails before the container's
    process runs; that is init's code 110 with crun's own message, not the container's 1."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    proj = project(tmp_path / "p", cache,
                   extra=f'[drives.data]\nbuilder = "directory"\ndirectory = "{data}"\nmount = "/etc/passwd/data"\n')
    p = cmbuild(proj, "run")
    assert p.returncode == 110, show(p)
    assert "cmbuild: error: crun could not create the container" in p.stdout
    assert "crun could not create the container (the container's process never ran)" in p.stderr
    assert "cmbuild: exit-code 110" in p.stdout


def test_container_killed_by_a_signal(tmp_path: Path, cache: Path) -> None:
    # the container's PID 1 cannot be sent SIGKILL from inside its own pid namespace; its
    # child can, and the shell passes the 128 + 9 on, as a shell-run app does
    proj = project(tmp_path / "p", cache,
                   'entrypoint = ["/bin/sh", "-c", "echo before; sleep 100 & kill -KILL $!; wait $!; exit $?"]')
    p = cmbuild(proj, "run")
    assert p.returncode == 137, show(p)
    assert "before" in p.stdout
    assert "the container was killed by SIGKILL (exit code 137 = 128 + 9)" in p.stderr


# ----- failures never look like success -----------------------------------------------------------

@pytest.mark.parametrize("bootarg, words", [
    ("init=/nonexistent", "the kernel panicked: Requested init /nonexistent failed"),
    ("init=/usr/bin/false", "the kernel panicked: Attempted to kill init!"),
])
def test_kernel_panic_and_dead_init_are_errors(tmp_path: Path, cache: Path, bootarg: str, words: str) -> None:
    proj = project(tmp_path / "p", cache, f'bootargs = ["{bootarg}"]')
    p = cmbuild(proj, "run")
    assert p.returncode == 125, show(p)
    assert "Halted" in p.stderr                        # the emulator itself ended "well"...
    assert f"cmbuild: error: the machine halted without the container's end: {words}" in p.stderr
    assert "exited with code 0" not in p.stderr


def test_missing_app_drive_is_inits_code(tmp_path: Path, cache: Path) -> None:
    from cmbuild.machines import cartesi as cm

    proj = project(tmp_path / "p", cache)
    assert cmbuild(proj, "build").returncode == 0
    console: list[bytes] = []
    r = cm.run(ram_image=KERNEL, ram_length="128Mi", drives=[cm.Drive("root", proj / ".cartesi" / "root.sqfs")],
               console=console.append, report=lambda b: None, timeout=300)
    out = r.outcome()
    assert (out.code, out.ok) == (103, True)
    assert "init: the app drive (label app) was not found" in out.reason
    assert b"cmbuild: error: no drive labelled app" in b"".join(console)


def test_max_mcycle_before_the_end_is_an_error(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, "max_mcycle = 20000000")
    p = cmbuild(proj, "run")
    assert p.returncode == 125, show(p)
    assert "the machine reached max_mcycle = 20000000" in p.stderr and "without the container's end" in p.stderr


def test_timeout_is_124(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, 'entrypoint = ["/bin/sleep", "100000"]', timeout=8)
    p = cmbuild(proj, "run")
    assert p.returncode == 124, show(p)
    assert "did not end within 8 s" in p.stderr and "raise [machine].timeout" in p.stderr


def test_emulator_failure_is_an_error(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, 'ram_length = "4Mi"')     # smaller than the kernel
    p = cmbuild(proj, "run")
    assert p.returncode != 0, show(p)
    assert "cartesi-machine failed (exit code 1): backing file" in p.stderr
    assert "Traceback" not in p.stderr and "exited with code 0" not in p.stderr


def test_cartesi_backend_never_falls_back_to_qemu(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache)
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if not (Path(d) / "cartesi-machine").exists())
    p = cmbuild(proj, "run", env={"PATH": path})
    assert p.returncode != 0, show(p)
    assert "`cmbuild run` on the cartesi backend needs 'cartesi-machine', which is not on PATH" in p.stderr
    assert "qemu-system" not in p.stdout + p.stderr and "Hello" not in p.stdout


# ----- snapshots ---------------------------------------------------------------------------------

def _tree_sha(root: Path) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file()}


def test_snapshot_hash_load_and_audit(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, 'env = { EXIT_CODE = "42" }')
    p = cmbuild(proj, "snapshot")
    assert p.returncode == 0, show(p)
    assert p.stdout == ""                                     # logs and doit's lines: stderr
    image = proj / ".cartesi" / "image"
    stored = subprocess.run(["cartesi-machine-stored-hash", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip()
    h = cmbuild(proj, "hash")
    assert h.returncode == 0 and h.stdout == stored + "\n", show(h)
    j = cmbuild(proj, "hash", "--json")
    assert json.loads(j.stdout) == {"hash": stored}
    assert json.loads((proj / "cartesi.lock").read_text())["root_hash"] == stored
    # the stored machine boots and runs the container to the same end
    load = subprocess.run(["cartesi-machine", f"--load={image}"], capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert load.returncode == 42, load.stderr[-2000:]
    assert "Halted with payload: 42" in load.stderr
    assert "Hello from cmbuild!" in load.stdout and "cmbuild: exit-code 42" in load.stdout
    # the lock's snapshot is reproduced from scratch
    a = cmbuild(proj, "audit")
    assert a.returncode == 0, show(a)
    assert re.search(r"^snapshot\s+sha256:\S+\s+sha256:\S+\s+ok$", a.stdout, re.M)
    assert "every output matches cartesi.lock" in a.stdout


def test_same_snapshot_from_two_folders_and_stores(tmp_path: Path) -> None:
    hashes, trees = [], []
    for name in ("first", "second-folder"):
        proj = project(tmp_path / name / "proj", tmp_path / name / "cache")
        p = cmbuild(proj, "snapshot", env={"TZ": "Asia/Tokyo" if name == "first" else "UTC"})
        assert p.returncode == 0, show(p)
        hashes.append(cmbuild(proj, "hash").stdout)
        trees.append(_tree_sha(proj / ".cartesi" / "image"))
    assert hashes[0] == hashes[1] and re.fullmatch(r"0x[0-9a-f]{64}\n", hashes[0])
    assert trees[0] == trees[1] and "config.json" in trees[0]


def test_hash_refuses_a_stale_snapshot(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, 'env = { GREETING = "one" }')
    assert cmbuild(proj, "snapshot").returncode == 0
    old = cmbuild(proj, "hash").stdout.strip()
    toml = proj / "cartesi.toml"
    toml.write_text(toml.read_text().replace('GREETING = "one"', 'GREETING = "two"'))
    h = cmbuild(proj, "hash")
    assert h.returncode != 0 and h.stdout == "", show(h)
    assert f"the snapshot in cartesi.lock ({old}) is out of date" in h.stderr
    assert cmbuild(proj, "snapshot").returncode == 0
    new = cmbuild(proj, "hash")
    assert new.returncode == 0 and new.stdout.strip() not in ("", old)


def test_snapshot_at_max_mcycle_of_a_failed_run_is_refused(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, 'env = { EXIT_CODE = "3" }\nmax_mcycle = 100000000000')
    p = cmbuild(proj, "snapshot")
    assert p.returncode != 0, show(p)
    assert "the machine halted before max_mcycle = 100000000000: the container exited with code 3" in p.stderr
    assert not (proj / ".cartesi" / "image").exists()


# ----- the pinned kernel, offline ---------------------------------------------------------------

def _recipes_with_cartesi_kernel(tmp: Path, sha256: str) -> Path:
    """A copy of recipes/ whose Cartesi kernel pin has this sha256 and a URL that refuses."""
    root = tmp / "recipes"
    shutil.copytree(REPO / "recipes", root)
    f = root / "kernel" / "cartesi-v0.21.0.toml"
    text = re.sub(r'^url = .*$', 'url = "http://127.0.0.1:9/linux.bin"', f.read_text(), flags=re.M)
    f.write_text(re.sub(r'^sha256 = .*$', f'sha256 = "{sha256}"', text, flags=re.M))
    return root


def test_pinned_kernel_found_beside_the_emulator_without_download(tmp_path: Path) -> None:
    digest = hashlib.sha256(KERNEL.read_bytes()).hexdigest()
    recipes = _recipes_with_cartesi_kernel(tmp_path, digest)
    proj = project(tmp_path / "p", tmp_path / "cache")
    toml = proj / "cartesi.toml"
    toml.write_text(toml.read_text().replace(f'ram_image = "{KERNEL}"\n', ""))
    p = cmbuild(proj, "snapshot", env={"CMBUILD_RECIPES": str(recipes)})
    assert p.returncode == 0, show(p)
    assert "kernel: recipes/kernel/cartesi-v0.21.0.toml (Cartesi's, pinned by sha256)" in p.stderr
    lock = json.loads((proj / "cartesi.lock").read_text())
    assert lock["stages"]["kernel"]["output"] == "sha256:" + digest


def test_no_pinned_kernel_offline_says_what_to_do(tmp_path: Path) -> None:
    recipes = _recipes_with_cartesi_kernel(tmp_path, "ab" * 32)
    proj = project(tmp_path / "p", tmp_path / "cache")
    toml = proj / "cartesi.toml"
    toml.write_text(toml.read_text().replace(f'ram_image = "{KERNEL}"\n', ""))
    p = cmbuild(proj, "snapshot", env={"CMBUILD_RECIPES": str(recipes)})
    assert p.returncode != 0 and "Traceback" not in p.stderr, show(p)
    assert "is not on this machine and could not be downloaded" in p.stderr
    assert f"{KERNEL} is another kernel" in p.stderr
    assert "[machine].ram_image" in p.stderr and '[machine].backend = "qemu"' in p.stderr


# ----- debugging inside the machine ---------------------------------------------------------------

def test_run_another_command(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, 'env = { EXIT_CODE = "9" }')
    p = cmbuild(proj, "run", "--", "x", "y z")
    assert p.returncode == 9, show(p)
    assert "args=x y z" in p.stdout                      # the image's Entrypoint got the new Cmd
    assert "running /app/hello.sh x y z in the container (not the project's command)" in p.stderr


def test_shell_on_a_terminal(tmp_path: Path, cache: Path) -> None:
    """`cmbuild run --shell` under a pseudo-terminal: cartesi-machine -i gives the shell the
    console; what is typed runs in the container."""
    import pty
    import select
    import time

    proj = project(tmp_path / "p", cache)
    assert cmbuild(proj, "build").returncode == 0
    env = dict(os.environ)
    env.pop("CMBUILD_CONFIG", None)
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.chdir(proj)
        os.execve(sys.executable, [sys.executable, "-m", "cmbuild", "run", "--shell"], env)
    out, sent, deadline = b"", False, time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        out += data
        if not sent and b"$ " in out:                         # the shell's prompt
            os.write(fd, b"echo in-shell-$((6*7)); exit 6\n")
            sent = True
    _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    assert sent, text[-3000:]
    assert os.waitstatus_to_exitcode(status) == 6, text[-3000:]
    assert "in-shell-42" in text and "the container exited with code 6" in text
