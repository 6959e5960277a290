"""End to end under QEMU through the real commands (`cmbuild run`, `doit run`): the example image
boots in a RISC-V machine, its output reaches us, and its exit code becomes ours; the image
config and the [machine] overrides are honoured inside the container."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_pipeline import EXAMPLE, REPO

pytestmark = pytest.mark.slow

if shutil.which("qemu-system-riscv64") is None:  # pragma: no cover
    pytest.skip("qemu-system-riscv64 is not installed (scripts/bootstrap installs it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One store for the module: the runtime layer and kernel are built once."""
    return tmp_path_factory.mktemp("cache")


def project(tmp: Path, cache: Path, machine: str = "", extra: str = "") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "cartesi.toml").write_text(
        f'[image]\npath = "{EXAMPLE}"\nref = "latest"\n\n[machine]\nbackend = "qemu"\ntimeout = 300\n'
        f'{machine}\n[cache]\ndir = "{cache}"\n{extra}')
    return tmp


def run(proj: Path, *args: str, tool: str = "cmbuild", path: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cmbuild", *args] if tool == "cmbuild" else [sys.executable, "-m", "doit", *args]
    env = dict(os.environ)
    env.pop("CMBUILD_CONFIG", None)
    if path is not None:
        env["PATH"] = path
    return subprocess.run(cmd, cwd=proj, capture_output=True, text=True, timeout=900, env=env)


def test_example_runs_with_image_config_and_overrides(tmp_path: Path, shared_cache: Path) -> None:
    proj = project(tmp_path / "p", shared_cache, 'env = { GREETING = "from toml" }')
    p = run(proj, "run")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = p.stdout
    assert "Hello from cmbuild!" in out and "Hello, world!" in out     # the dynamic program ran
    assert "user=app uid=1000" in out                                   # User from the image config
    assert "cwd=/app" in out                                            # WorkingDir
    assert "greeting=from toml" in out                                  # [machine] env over the image's
    assert "args=world" in out                                          # Entrypoint + Cmd
    assert "tmp-write=ok" in out
    assert "cmbuild: writable root: overlayfs" in out
    assert "backend: qemu" in p.stderr
    assert (proj / ".cartesi" / "root.sqfs").is_file() and (proj / ".cartesi" / "app.sqfs").is_file()


def test_exit_code_and_overrides_of_cmd_workdir_user(tmp_path: Path, shared_cache: Path) -> None:
    proj = project(tmp_path / "p", shared_cache,
                   'env = { EXIT_CODE = "42" }\ncmd = ["one", "two"]\nworkdir = "/tmp"\nuser = "root"')
    p = run(proj, "run")
    assert p.returncode == 42, p.stdout[-3000:] + p.stderr[-3000:]
    assert "args=one two" in p.stdout
    assert "cwd=/tmp" in p.stdout
    assert "user=root uid=0" in p.stdout
    assert "root-write=ok" in p.stdout          # the container root is writable (overlay)
    assert "container exited with code 42" in p.stderr


def test_doit_run_in_a_project_folder(tmp_path: Path, shared_cache: Path) -> None:
    proj = project(tmp_path / "p", shared_cache, 'entrypoint = ["/bin/sh", "-c", "echo via-doit; exit 3"]')
    shutil.copy(REPO / "dodo.py", proj / "dodo.py")
    p = run(proj, "run", tool="doit")
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    assert "via-doit" in p.stdout
    # nothing changed: the build part runs no stage (`build` only says the backend), then the boot
    again = run(proj, "run", tool="doit")
    assert again.returncode == 3
    import re
    assert set(re.findall(r"^\.\s+(\S+)", again.stderr, re.M)) == {"build", "boot"}
    assert "cmbuild: backend: qemu (set in [machine].backend); kernel: recipes/kernel/qemu-6.12.117-1.toml" in again.stderr


def test_ext2_app_drive_and_a_data_volume(tmp_path: Path, shared_cache: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("from the host\n")
    proj = project(tmp_path / "p", shared_cache,
                   'entrypoint = ["/bin/sh", "-c", "cat /data/input.txt; echo ok > /written && cat /written"]\n'
                   'user = "root"',
                   extra='[drives.app]\nformat = "ext2"\nextra_size = "4Mi"\n'
                         f'[drives.data]\nbuilder = "directory"\ndirectory = "{data}"\nmount = "/data"\n')
    p = run(proj, "run")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "from the host" in p.stdout
    assert "\nok" in p.stdout
    assert (proj / ".cartesi" / "app.ext2").is_file() and (proj / ".cartesi" / "data.sqfs").is_file()
    # the container wrote into its ext2 root, but never into the store's object
    assert "0 corrupt" in run(proj, "verify").stderr
    again = run(proj, "run")
    assert again.returncode == 0 and "\nok" in again.stdout


def test_snapshot_on_qemu_says_what_to_do(tmp_path: Path, shared_cache: Path) -> None:
    proj = project(tmp_path / "p", shared_cache)
    p = run(proj, "snapshot")
    assert p.returncode != 0
    text = p.stdout + p.stderr
    assert "snapshots are made by the Cartesi backend" in text and "doit run" in text
    assert "Traceback" not in text
    # it built everything it could first, and says nothing was pretended
    assert (proj / ".cartesi" / "app.sqfs").is_file() and not (proj / ".cartesi" / "image").exists()
    h = run(proj, "hash")
    assert h.returncode != 0 and "no snapshot has been built" in h.stdout + h.stderr


def test_timeout_is_clear(tmp_path: Path, shared_cache: Path) -> None:
    proj = project(tmp_path / "p", shared_cache, 'entrypoint = ["/bin/sleep", "1000"]')
    text = (proj / "cartesi.toml").read_text().replace("timeout = 300", "timeout = 20")
    (proj / "cartesi.toml").write_text(text)
    p = run(proj, "run")
    assert p.returncode == 124
    assert "did not end within 20 s" in p.stderr and "raise [machine].timeout" in p.stderr


def test_cartesi_backend_without_the_emulator_says_what_to_install(tmp_path: Path, shared_cache: Path) -> None:
    # a PATH without cartesi-machine, whether or not this machine has it
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if not (Path(d) / "cartesi-machine").exists())
    kernel = tmp_path / "linux.bin"
    kernel.write_bytes(b"a local kernel file: its sha256 enters the kernel stage's key\n")
    proj = project(tmp_path / "p", shared_cache)
    text = (proj / "cartesi.toml").read_text().replace('backend = "qemu"',
                                                        f'backend = "cartesi"\nram_image = "{kernel}"')
    (proj / "cartesi.toml").write_text(text)
    p = run(proj, "snapshot", path=path)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "Traceback" not in out
    assert "cartesi-machine is not on PATH" in out
    assert "snapshots are made by cartesi-machine, which is not installed" in out
    assert "machine-emulator release v0.21.0" in out
    # everything before the snapshot was built, with the local kernel stored by content
    assert (proj / ".cartesi" / "root.sqfs").is_file() and (proj / ".cartesi" / "app.sqfs").is_file()
    assert not (proj / ".cartesi" / "image").exists()


def test_run_another_command_and_a_shell(tmp_path: Path, shared_cache: Path) -> None:
    """`cmbuild run -- CMD` replaces the image's Cmd (as `docker run IMAGE CMD` does) and
    `cmbuild run --shell` opens the image's /bin/sh on the console (here fed by a pipe); the
    project's own drives and lock are left as they are."""
    proj = project(tmp_path / "p", shared_cache)
    assert run(proj, "build").returncode == 0
    before = ((proj / "cartesi.lock").read_bytes(), (proj / ".cartesi" / "config.json").read_bytes())
    p = run(proj, "run", "--", "one", "two")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "args=one two" in p.stdout and "Hello from cmbuild!" in p.stdout   # the image's Entrypoint ran
    assert "running /app/hello.sh one two in the container" in p.stderr
    shell = subprocess.run([sys.executable, "-m", "cmbuild", "run", "--shell"], cwd=proj, capture_output=True,
                           text=True, timeout=600, input="echo in-shell-$((6*7)); id -u; exit 6\n")
    assert shell.returncode == 6, shell.stdout[-3000:] + shell.stderr[-3000:]
    assert "in-shell-42" in shell.stdout.splitlines() and "1000" in shell.stdout.splitlines()
    assert "Hello from cmbuild!" not in shell.stdout
    assert ((proj / "cartesi.lock").read_bytes(), (proj / ".cartesi" / "config.json").read_bytes()) == before
    both = run(proj, "run", "--shell", "--", "ls")
    assert both.returncode == 2 and "give --shell or -- CMD, not both" in both.stderr


def test_a_killed_cmbuild_leaves_no_machine_running(tmp_path: Path, shared_cache: Path) -> None:
    """cmbuild killed with SIGKILL (no cleanup runs) while the machine runs: the kernel ends
    the emulator too (PR_SET_PDEATHSIG), so no orphan keeps the drives open."""
    import signal
    import time
    proj = project(tmp_path / "p", shared_cache, 'entrypoint = ["/bin/sh", "-c", "echo started; sleep 1000"]')
    assert run(proj, "build").returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "CMBUILD_CONFIG"}
    p = subprocess.Popen([sys.executable, "-m", "cmbuild", "run"], cwd=proj, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert p.stdout is not None
    for line in p.stdout:                       # the container is running
        if "started" in line:
            break

    def machines() -> list[str]:
        out = subprocess.run(["pgrep", "-f", f"qemu-system-riscv64.*{shared_cache}"], capture_output=True, text=True)
        return out.stdout.split()
    assert machines()
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 10
    while machines() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert machines() == []
