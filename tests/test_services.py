"""Services beside the app ([services.<name>]): each from its own image, with its own root file
system and namespaces, started by init with crun before the app, in a real RISC-V machine under
QEMU and under the real Cartesi emulator (skipped, with the reason, when it is not installed).

The service in most tests is busybox's httpd (from the example image, or from a minimal image of
Debian's static busybox: its own drive), and the app fetches from it at 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ocihelpers
from test_pipeline import EXAMPLE

pytestmark = pytest.mark.slow

KERNEL = Path(os.environ.get("CARTESI_IMAGES_PATH", "/nonexistent")) / "linux.bin"
HAS_CM = shutil.which("cartesi-machine") is not None and KERNEL.is_file()
BACKENDS = ["qemu", pytest.param("cartesi", marks=[pytest.mark.cartesi, pytest.mark.skipif(
    not HAS_CM, reason="cartesi-machine (v0.21.0) and its kernel are not installed; its output is "
                       "never faked")])]

BB = "/usr/bin/busybox"   # in the example image
HTTPD = ('mkdir -p /tmp/www && echo "hello-from-web pid=$$" > /tmp/www/index.html && '
         'echo serving && exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www')


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal image of Debian's static busybox (the runtime layer's pin): /bin/busybox and
    /bin/sh, nothing else."""
    tmp = tmp_path_factory.mktemp("bb")
    return ocihelpers.busybox_image(tmp / "img", ocihelpers.debian_busybox(tmp / "store"))


def toml_list(words: list[str]) -> str:
    return json.dumps(words)


def project(tmp: Path, cache: Path, backend: str, app: str, services: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    machine = f'backend = "{backend}"\ntimeout = 300\n'
    if backend == "cartesi":
        machine += f'ram_image = "{KERNEL}"\n'
    (tmp / "cartesi.toml").write_text(
        f'[image]\npath = "{EXAMPLE}"\nref = "latest"\n\n[machine]\n{machine}'
        f'entrypoint = {toml_list([BB, "sh", "-c", app])}\n\n[cache]\ndir = "{cache}"\n\n{services}')
    return tmp


def service(name: str, script: str, image: Path = EXAMPLE, extra: str = "", sh: str = BB) -> str:
    args = [sh, "sh", "-c", script] if sh == BB else [sh, "-c", script]
    return (f'[services.{name}]\npath = "{image}"\nref = "latest"\n'
            f'entrypoint = {toml_list(args)}\n{extra}\n')


def cmbuild(proj: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMBUILD_")}
    return subprocess.run([sys.executable, "-m", "cmbuild", *args], cwd=proj, capture_output=True,
                          text=True, timeout=900, env=env)


def show(p: subprocess.CompletedProcess[str]) -> str:
    return f"rc={p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-3000:]}"


# ----- running ------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_httpd_service_and_an_app_of_the_same_image(tmp_path: Path, cache: Path, backend: str) -> None:
    """One image as app and service: one drive; the service runs in its own pid namespace
    (it is PID 1 there) and root (its file is not in the app's), and the app's exit code is
    the machine's."""
    app = ("busybox wget -qO- http://127.0.0.1:8080/ && "
           "if [ -e /tmp/www/index.html ]; then echo shared-root; else echo own-root; fi; exit 7")
    proj = project(tmp_path / "p", cache, backend, app,
                   service("web", HTTPD, extra="ready_port = 8080\nuser = \"root\"\nstop_timeout = 0.5"))
    p = cmbuild(proj, "run")
    assert p.returncode == 7, show(p)
    lines = p.stdout.splitlines()
    assert "[web] serving" in lines, show(p)
    ready = lines.index("cmbuild: service web ready on 127.0.0.1:8080")
    assert lines.index("hello-from-web pid=1") > ready and "own-root" in lines, show(p)
    assert "cmbuild: service web: writable root: overlayfs (lower squashfs app drive, upper on tmpfs)" in lines
    assert "the container exited with code 7" in p.stderr
    # httpd, PID 1 of its namespace, ignores SIGTERM: it was killed after its stop_timeout
    assert "cmbuild: service web did not end within 0.500 s of SIGTERM: SIGKILL" in lines
    assert not (proj / ".cartesi" / "svc-web.sqfs").exists()          # the app's drive serves
    assert (proj / ".cartesi" / "services.sqfs").is_file()


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_forwards_sigterm_to_a_service(tmp_path: Path, cache: Path, backend: str) -> None:
    """`init = true`: the service runs under cmbuild's init (--reap), which forwards SIGTERM:
    httpd, no longer PID 1 of its namespace, ends at once instead of waiting for SIGKILL."""
    proj = project(tmp_path / "p", cache, backend, "busybox wget -qO- http://127.0.0.1:8080/",
                   service("web", HTTPD, extra='ready_port = 8080\nuser = "root"\ninit = true\n'
                                               'stop_timeout = 60'))
    p = cmbuild(proj, "run")
    assert p.returncode == 0, show(p)
    lines = p.stdout.splitlines()
    assert "hello-from-web pid=2" in lines, show(p)        # init --reap is PID 1, httpd its child
    assert not any("SIGKILL" in ln for ln in lines), show(p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_services_of_their_own_image_in_order(tmp_path: Path, cache: Path, backend: str,
                                              busybox_image: Path) -> None:
    """Two services of another image (one drive for both), started in the order written, each
    with its own root, environment and working directory; output prefixed with each name."""
    first = ('echo "first in $PWD with $WHO"; mkdir -p /tmp/www && echo from-files > /tmp/www/f && '
             'exec busybox httpd -f -p 127.0.0.1:8081 -h /tmp/www')
    second = ("busybox wget -qO- http://127.0.0.1:8081/f | busybox sed s/^/second-saw-/; "
              "exec busybox sleep 1000")
    app = "busybox wget -qO- http://127.0.0.1:8081/f && busybox ls -1 /usr/bin/busybox"
    proj = project(tmp_path / "p", cache, backend, app,
                   service("files", first, busybox_image, 'ready_port = 8081\nworkdir = "/tmp"\n'
                                                          'env = { WHO = "files-env" }',
                           sh="/bin/sh")
                   + service("second", second, busybox_image, sh="/bin/sh"))
    p = cmbuild(proj, "run")
    assert p.returncode == 0, show(p)
    lines = p.stdout.splitlines()
    assert "[files] first in /tmp with files-env" in lines, show(p)
    assert lines.index("cmbuild: service files ready on 127.0.0.1:8081") < \
        lines.index("cmbuild: service second started")
    assert "[second] second-saw-from-files" in lines, show(p)
    assert "from-files" in lines and "/usr/bin/busybox" in lines, show(p)   # the app's own root
    assert "cmbuild: service files: writable root: overlayfs (lower squashfs svc-files drive, " \
           "upper on tmpfs)" in lines
    assert (proj / ".cartesi" / "svc-files.sqfs").is_file()
    assert not (proj / ".cartesi" / "svc-second.sqfs").exists()         # one image, one drive
    lock = json.loads((proj / "cartesi.lock").read_text())
    assert {"pull-files", "unpack-files", "squashfs-files", "services"} <= set(lock["stages"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_service_that_never_becomes_ready(tmp_path: Path, cache: Path, backend: str) -> None:
    proj = project(tmp_path / "p", cache, backend, "echo app-ran",
                   service("slow", "echo waiting; exec busybox sleep 1000",
                           extra="ready_port = 9000\nready_timeout = 1.5"))
    p = cmbuild(proj, "run")
    assert p.returncode == 112, show(p)
    assert "[slow] waiting" in p.stdout.splitlines()
    assert "cmbuild: error: service slow was not ready on 127.0.0.1:9000 within 1.500 s " \
           "(its ready_timeout)" in p.stdout, show(p)
    assert "app-ran" not in p.stdout
    assert "a service ([services.<name>]) could not be started" in p.stderr, show(p)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_service_that_dies_early(tmp_path: Path, cache: Path, backend: str) -> None:
    proj = project(tmp_path / "p", cache, backend, "echo app-ran",
                   service("db", "echo dying; exit 3", extra="ready_port = 9001"))
    p = cmbuild(proj, "run")
    assert p.returncode == 112, show(p)
    lines = p.stdout.splitlines()
    assert "[db] dying" in lines, show(p)                      # its last words are shown
    assert "cmbuild: error: service db ended (status 3) before it was ready on 127.0.0.1:9001" in lines
    assert "app-ran" not in lines


def test_a_service_that_dies_while_the_app_runs(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, "qemu", "echo app-started; exec busybox sleep 60",
                   service("cron", "busybox sleep 1; echo bye; exit 4"))
    p = cmbuild(proj, "run")
    assert p.returncode == 112, show(p)
    lines = p.stdout.splitlines()
    assert "app-started" in lines and "[cron] bye" in lines, show(p)
    assert "cmbuild: error: service cron ended (status 4) while crun ran" in lines


# ----- building -----------------------------------------------------------------------------------

def test_services_share_keys_cutoff_lock_and_audit(tmp_path: Path, cache: Path, busybox_image: Path) -> None:
    """A service's image stages have the keys an app of that image has (one store object);
    changing a service's settings rebuilds its config drive alone; audit covers the services."""
    from cmbuild.config import load_project
    from cmbuild.pipeline import Context
    from cmbuild.store import Store
    proj = project(tmp_path / "p", cache, "qemu", "true",
                   service("files", "exec busybox httpd -f -p 8081", busybox_image, sh="/bin/sh"))
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "cartesi.toml").write_text(f'[image]\npath = "{busybox_image}"\nref = "latest"\n'
                                        f'[cache]\ndir = "{cache}"\n')
    p = cmbuild(proj, "build")
    assert p.returncode == 0, show(p)
    # the services drive: the start order and each one's runtime config, with its own pid,
    # mount, ipc and uts namespaces and the machine's network (no network namespace)
    import io
    import tarfile

    from cmbuild.drives import squashfs_to_tar
    with tarfile.open(fileobj=io.BytesIO(squashfs_to_tar(proj / ".cartesi" / "services.sqfs"))) as tar:
        names = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}
        order = tar.extractfile(names["services.txt"]).read().decode()
        config = json.loads(tar.extractfile(names["files/config.json"]).read())
    assert order == "files svc-files 0 60000 3000\n"
    assert sorted(n["type"] for n in config["linux"]["namespaces"]) == ["ipc", "mount", "pid", "uts"]
    assert config["process"]["args"] == ["/bin/sh", "-c", "exec busybox httpd -f -p 8081"]
    assert config["root"]["path"] == "rootfs"

    ctx = Context(load_project(proj / "cartesi.toml"), proj, Store(cache))
    other = Context(load_project(alone / "cartesi.toml"), alone, Store(cache))
    for stage in ("pull", "unpack", "squashfs"):
        assert ctx.key(f"{stage}-files") == other.key(stage)
    assert cmbuild(alone, "app").stderr.count("restored") >= 3          # nothing built again

    with open(proj / "cartesi.toml", "a") as f:     # into [services.files], the last table
        f.write('env = { A = "1" }\n')
    p = cmbuild(proj, "build")
    assert p.returncode == 0, show(p)
    built = [ln.split(":")[1].strip() for ln in p.stderr.splitlines()
             if ln.startswith("cmbuild: ") and ": built " in ln]
    assert built == ["services"], p.stderr

    audit = cmbuild(proj, "audit")
    assert audit.returncode == 0, show(audit)
    assert "audit: rebuilding services" in audit.stderr and "audit: rebuilding squashfs-files" in audit.stderr


@pytest.mark.parametrize("toml, message", [
    ('[services.Web]\npath = "x"', "[services]: service name 'Web'"),
    ('[services.web]\ncmd = ["x"]', "[services.web]: name the image"),
    ('[services.web]\npath = "x"\nready_port = 70000', "[services.web].ready_port"),
    ('[services.web]\npath = "x"\nready_timeout = 0', "[services.web].ready_timeout"),
    ('[services.web]\npath = "x"\nworkdir = "tmp"', "[services.web].workdir: workdir must be an absolute path"),
    ('[services.web]\npath = "x"\nport = 80', "[services.web].port: unknown key"),
    ('[services.a]\npath = "x"\nready_port = 80\n[services.b]\npath = "x"\nready_port = 80',
     "both say ready_port = 80"),
    ('[drives.svc-a]\nbuilder = "empty"\nformat = "ext2"\nsize = "1Mi"\nmount = "/a"', "is reserved"),
    ('[rollups]\n[services.web]\npath = "x"\nready_port = 5004',
     "cartesi.toml: [services.web].ready_port = 5004 is the built-in rollups server's port"),
])
def test_bad_service_tables_are_named(tmp_path: Path, toml: str, message: str) -> None:
    from cmbuild.config import parse_project
    from cmbuild.errors import CmbuildError
    with pytest.raises(CmbuildError) as e:
        parse_project(f'[image]\npath = "x"\n{toml}\n')
    assert message in str(e.value)


def test_a_service_path_that_does_not_exist(tmp_path: Path, cache: Path) -> None:
    proj = project(tmp_path / "p", cache, "qemu", "true", '[services.web]\npath = "nowhere"\n')
    p = cmbuild(proj, "build")
    assert p.returncode != 0 and "[services.web].path:" in p.stderr and "does not exist" in p.stderr


# ----- with rollups -------------------------------------------------------------------------------

ROLLUPS_APP = r"""B=/usr/bin/busybox
U=http://127.0.0.1:5004
while true; do
  R=$($B wget -qO- --header 'Content-Type: application/json' --post-data '{"status":"accept"}' $U/finish)
  case "$R" in
    *advance_state*|*inspect_state*)
      V=$($B wget -qO- http://127.0.0.1:8080/)
      H=$(printf %s "$V" | $B od -An -tx1 | $B tr -d ' \n')
      $B wget -qO- --header 'Content-Type: application/json' --post-data "{\"payload\":\"0x$H\"}" $U/report >/dev/null;;
  esac
done
"""


@pytest.mark.cartesi
@pytest.mark.skipif(not HAS_CM, reason="cartesi-machine (v0.21.0) and its kernel are not installed; "
                                       "its output is never faked")
def test_a_rollups_template_holds_its_services_running(tmp_path: Path, cache: Path) -> None:
    """The service is up before the app asks for its first input, so the template snapshot
    holds it running: an advance from the template reaches it (the app, a shell loop over the
    built-in server's HTTP API, reports what the service answers)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "app.sh").write_text(ROLLUPS_APP)
    proj = project(tmp_path / "p", cache, "cartesi", "", service("web", HTTPD, extra='ready_port = 8080\nuser = "root"'))
    text = (proj / "cartesi.toml").read_text().replace(
        f'entrypoint = {toml_list([BB, "sh", "-c", ""])}', f'entrypoint = {toml_list([BB, "sh", "/scripts/app.sh"])}')
    text = text.replace("[cache]", f'[rollups]\n\n[drives.scripts]\nbuilder = "directory"\n'
                                   f'directory = "{scripts}"\nmount = "/scripts"\n\n[cache]')
    (proj / "cartesi.toml").write_text(text)
    p = cmbuild(proj, "snapshot")
    assert p.returncode == 0, show(p)
    err = p.stderr            # the machine's console, then the emulator's report
    assert err.index("cmbuild: service web ready on 127.0.0.1:8080") < err.index("Manual yield rx-accepted"), show(p)
    r = cmbuild(proj, "advance", "--json", "--text", "hi")
    assert r.returncode == 0, show(r)
    doc = json.loads(r.stdout)
    assert doc["status"] == "accepted" and doc["reports"] == ["0x" + b"hello-from-web pid=1".hex()], doc


# ----- a real server from Debian's packages -------------------------------------------------------

@pytest.fixture(scope="module")
def redis_image(debs_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """redis-server 8 from Debian trixie's riscv64 packages (tests/redis/build.py)."""
    return ocihelpers.scripted_image(Path(__file__).parent / "redis" / "build.py",
                                     tmp_path_factory.mktemp("redis") / "image", debs_store)


@pytest.mark.parametrize("backend", BACKENDS)
def test_redis_from_debian_as_a_service(tmp_path: Path, cache: Path, backend: str, redis_image: Path) -> None:
    """The app (busybox, no Redis client in its image) writes a value and reads it back over
    RESP on 127.0.0.1:6379."""
    app = r"printf 'SET greeting hello-from-redis\r\nGET greeting\r\nQUIT\r\n' | busybox nc 127.0.0.1 6379"
    proj = project(tmp_path / "p", cache, backend, app,
                   f'[services.redis]\npath = "{redis_image}"\nref = "latest"\nready_port = 6379\n'
                   'ready_timeout = 120\n')
    p = cmbuild(proj, "run")
    assert p.returncode == 0, show(p)
    # (a console may turn the "\r\n" of RESP into two line ends: blank lines are left out)
    lines = [ln.rstrip("\r") for ln in p.stdout.splitlines() if ln.strip()]
    assert lines.index("cmbuild: service redis ready on 127.0.0.1:6379") < lines.index("+OK"), show(p)
    assert lines[lines.index("+OK") + 1:lines.index("+OK") + 4] == ["$16", "hello-from-redis", "+OK"], show(p)
    assert any(ln.startswith("[redis] ") and "Ready to accept connections" in ln for ln in lines), show(p)
    # redis handles SIGTERM: it shuts down cleanly within the grace period, no SIGKILL
    assert any(ln.startswith("[redis] ") and "Received SIGTERM" in ln for ln in lines), show(p)
    assert not any("SIGKILL" in ln for ln in lines), show(p)
