"""examples/echo: the Cartesi rollups echo app (echo.py) in an OCI image that build.py makes
from pinned Debian packages.

- build.py is reproducible (two folders, umask and time zone apart: the same bytes), its second
  run does nothing, and a changed input or a damaged output makes it build again;
- the image's Python works inside a RISC-V machine (cmbuild run under QEMU, and on the real
  Cartesi emulator when `cartesi-machine` is on PATH);
- echo.py's logic: run by the host's Python against a fake rollup server (http.server) that
  plays two advances (echo, reject), an inspect, a "no request yet" (202) and an advance that
  raises an exception; the requests it makes are compared exactly. The same run again with the
  image's own riscv64 Python and standard library under qemu-user, where installed.

No rollups server is involved (cmbuild has none yet).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
ECHO = REPO / "examples" / "echo"
BUILD = ECHO / "build.py"

pytestmark = pytest.mark.slow


def build(out: Path, store: Path, *, cwd: Path = REPO, script: Path = BUILD,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, str(script), str(out), "--store", str(store)], cwd=cwd,
                       capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def blob(layout: Path, digest: str) -> bytes:
    return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()


def manifest(layout: Path) -> dict[str, Any]:
    index = json.loads((layout / "index.json").read_bytes())
    return json.loads(blob(layout, index["manifests"][0]["digest"]))


@pytest.fixture(scope="module")
def store(debs_store: Path) -> Path:
    """The store of the downloaded .debs, shared with the other tests that fetch packages."""
    return debs_store


@pytest.fixture(scope="module")
def image(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("echo") / "image"
    build(out, store)
    return out


# ----- build.py ---------------------------------------------------------------------------------

def test_build_is_reproducible_and_a_second_run_does_nothing(image: Path, store: Path,
                                                            tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "image"
    env = dict(os.environ, TZ="Pacific/Kiritimati", LC_ALL="C")
    old_umask = os.umask(0o077)  # inherited by the child
    try:
        build(other, store, cwd=tmp_path, env=env)
    finally:
        os.umask(old_umask)
    assert files(other) == files(image)
    assert (hashlib.sha256((other / "index.json").read_bytes()).hexdigest()
            == hashlib.sha256((image / "index.json").read_bytes()).hexdigest())
    for p in [other, *other.rglob("*")]:  # modes are fixed, whatever the umask
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p

    before = {p: p.stat().st_mtime_ns for p in image.rglob("*")}
    again = build(image, store)
    assert "is up to date" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in image.rglob("*")} == before


def test_a_damaged_output_or_a_changed_input_builds_again(image: Path, store: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "image"
    shutil.copytree(image, out)
    layers = manifest(out)["layers"]
    (out / "blobs" / "sha256" / layers[-1]["digest"].removeprefix("sha256:")).write_bytes(b"x")
    assert "wrote" in build(out, store).stdout
    assert files(out) == files(image)

    # a copy of the example with another echo.py: only the app layer changes
    copy = tmp_path / "examples" / "echo"
    copy.mkdir(parents=True)
    for name in ("build.py", "echo.py", "packages.toml"):
        shutil.copy(ECHO / name, copy / name)
    shutil.copy(ECHO.parent / "ocibuild.py", copy.parent / "ocibuild.py")  # build.py imports it
    with (copy / "echo.py").open("a") as f:
        f.write("# changed\n")
    assert "wrote" in build(out, store, script=copy / "build.py").stdout
    new_layers = manifest(out)["layers"]
    assert new_layers[:-1] == layers[:-1] and new_layers[-1] != layers[-1]


def test_image_config_and_contents(image: Path) -> None:
    m = manifest(image)
    config = json.loads(blob(image, m["config"]["digest"]))
    assert (config["architecture"], config["os"]) == ("riscv64", "linux")
    c = config["config"]
    assert c["Entrypoint"] == ["/usr/bin/python3", "/app/echo.py"]
    assert "PYTHONUNBUFFERED=1" in c["Env"] and any(e.startswith("PATH=") for e in c["Env"])
    assert (c["WorkingDir"], c["User"]) == ("/app", "app")
    entries: dict[str, tarfile.TarInfo] = {}
    for layer in m["layers"]:
        data = blob(image, layer["digest"])
        assert hashlib.sha256(data).hexdigest() == layer["digest"].removeprefix("sha256:")
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            for ti in tf.getmembers():
                assert ti.mtime == 0 and ti.uname == ti.gname == ""
                entries[ti.name] = ti
    assert entries["usr/bin/python3"].linkname == "python3.13"
    for path in ("usr/bin/python3.13", "usr/lib/riscv64-linux-gnu/libc.so.6",
                 "usr/lib/python3.13/os.py", "usr/lib/python3.13/json/__init__.py",
                 "usr/lib/python3.13/urllib/request.py", "usr/lib/python3.13/http/client.py",
                 "usr/lib/python3.13/email/parser.py", "app/echo.py", "etc/passwd"):
        assert entries[path].isfile(), path
    assert entries["home/app"].uid == 1000
    assert "app:x:1000:1000:" in blob_text(image, m, "etc/passwd")
    assert blob_text(image, m, "app/echo.py") == (ECHO / "echo.py").read_text()
    # small: what the app needs, not Python's whole standard library
    assert sum(layer["size"] for layer in m["layers"]) < 8_000_000


def blob_text(image: Path, m: dict[str, Any], path: str) -> str:
    for layer in m["layers"]:
        with tarfile.open(fileobj=io.BytesIO(blob(image, layer["digest"]))) as tf:
            try:
                f = tf.extractfile(path)
            except KeyError:
                continue
            assert f is not None
            return f.read().decode()
    raise AssertionError(f"{path} is in no layer")


# ----- the image's Python in a RISC-V machine --------------------------------------------------

PYTHON_OK = "import json, urllib.request, http.client; print('python-ok', json.dumps({'a': 1}))"


@pytest.fixture(scope="module")
def machine_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cmbuild store for the machine runs: the runtime layer and kernels are built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("backend", ["qemu", pytest.param("cartesi", marks=pytest.mark.cartesi)])
def test_python_runs_in_the_machine(backend: str, image: Path, machine_cache: Path,
                                    tmp_path: Path) -> None:
    machine = f'backend = "{backend}"\n'
    if backend == "qemu":
        if shutil.which("qemu-system-riscv64") is None:
            pytest.skip("qemu-system-riscv64 is not installed (scripts/bootstrap installs it)")
    else:
        kernel = Path(os.environ.get("CARTESI_IMAGES_PATH", "/nonexistent")) / "linux.bin"
        if shutil.which("cartesi-machine") is None:
            pytest.skip("cartesi-machine (machine-emulator v0.21.0) is not on PATH")
        if not kernel.is_file():
            pytest.skip("no kernel at $CARTESI_IMAGES_PATH/linux.bin for cartesi-machine")
        machine += f'ram_image = "{kernel}"\n'
    proj = tmp_path / "p"
    proj.mkdir()
    (proj / "cartesi.toml").write_text(
        f'[image]\npath = "{image}"\nref = "latest"\n\n'
        f'[machine]\n{machine}timeout = 600\n'
        f'entrypoint = {json.dumps(["python3", "-c", PYTHON_OK])}\n\n'
        f'[cache]\ndir = "{machine_cache}"\n')
    env = dict(os.environ)
    env.pop("CMBUILD_CONFIG", None)
    p = subprocess.run([sys.executable, "-m", "cmbuild", "run"], cwd=proj, capture_output=True,
                       text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert 'python-ok {"a": 1}' in p.stdout.splitlines()
    assert f"backend: {backend}" in p.stderr


# ----- echo.py against a fake rollup server ------------------------------------------------------

def hexs(text: str) -> str:
    return "0x" + text.encode().hex()


SENDER = "0x" + "ab" * 20
ANSWERS: list[tuple[int, dict[str, Any] | None]] = [  # what each POST /finish gets, in order
    (200, {"request_type": "advance_state",
           "data": {"metadata": {"msg_sender": SENDER, "input_index": 0}, "payload": hexs("hi")}}),
    (200, {"request_type": "advance_state",
           "data": {"metadata": {"msg_sender": SENDER, "input_index": 1},
                    "payload": hexs("reject this")}}),
    (200, {"request_type": "inspect_state", "data": {"payload": hexs("what?")}}),
    (202, None),
    (200, {"request_type": "advance_state",
           "data": {"metadata": {"msg_sender": SENDER, "input_index": 2},
                    "payload": hexs("exception!")}}),
]
VOUCHER = {"destination": "0x" + "00" * 19 + "01", "value": "0x" + "00" * 32}
EXPECTED = [
    ("/finish", {"status": "accept"}),
    ("/notice", {"payload": hexs("hi")}),
    ("/voucher", {**VOUCHER, "payload": hexs("hi")}),
    ("/report", {"payload": hexs("hi")}),
    ("/finish", {"status": "accept"}),
    ("/finish", {"status": "reject"}),
    ("/report", {"payload": hexs("what?")}),
    ("/finish", {"status": "accept"}),
    ("/finish", {"status": "accept"}),  # after the 202: the same status again
    ("/exception", {"payload": hexs("exception!")}),
]
LOG = [
    "echo: advance 0: 2 bytes: notice, voucher, report, accept",
    "echo: advance 1: 11 bytes: reject",
    "echo: inspect: 5 bytes: report, accept",
    "echo: advance 2: 10 bytes: exception",
    "echo: the rollup server returned from /exception: stopping",
]


class FakeRollupServer(http.server.ThreadingHTTPServer):
    """Plays the Rollup HTTP API: answers POST /finish from ANSWERS, anything else with an
    index (what the real server answers for outputs), and records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.answers = list(ANSWERS)
        self.errors: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Type") != "application/json":
                    server.errors.append(f"{self.path}: Content-Type {self.headers.get('Content-Type')}")
                server.requests.append((self.path, json.loads(body)))
                status, answer = (server.answers.pop(0) if self.path == "/finish" and server.answers
                                  else (200, {"index": len(server.requests)}))
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def rollup_server() -> Iterator[FakeRollupServer]:
    server = FakeRollupServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def check_echo_run(p: subprocess.CompletedProcess[str], server: FakeRollupServer) -> None:
    assert server.requests == EXPECTED, p.stderr[-3000:]
    assert server.errors == []
    assert p.returncode == 1, p.stderr[-3000:]  # /exception returned: it stops with status 1
    lines = p.stderr.splitlines()
    assert lines == [f"echo: rollup server at {server.url}", *LOG], p.stderr[-3000:]


def test_echo_app_with_the_hosts_python(rollup_server: FakeRollupServer) -> None:
    env = dict(os.environ, ROLLUP_HTTP_SERVER_URL=rollup_server.url)
    p = subprocess.run([sys.executable, str(ECHO / "echo.py")], capture_output=True, text=True,
                       timeout=60, env=env)
    check_echo_run(p, rollup_server)


def test_echo_app_with_the_images_python_under_qemu_user(rollup_server: FakeRollupServer,
                                                         image: Path, tmp_path: Path) -> None:
    """The image's own riscv64 python3.13 and standard library run echo.py: its subset of the
    standard library covers every path of the app."""
    qemu = shutil.which("qemu-riscv64-static") or shutil.which("qemu-riscv64")
    if qemu is None:
        pytest.skip("qemu-user (qemu-riscv64-static) is not installed")
    root = tmp_path / "rootfs"
    for layer in manifest(image)["layers"]:
        with tarfile.open(fileobj=io.BytesIO(blob(image, layer["digest"]))) as tf:
            tf.extractall(root, filter="tar")
    # -S: no site module. Under qemu-user with QEMU_LD_PREFIX, a path missing from the rootfs
    # falls back to the host's, so site would read the host's dist-packages/*.pth files.
    env = {"ROLLUP_HTTP_SERVER_URL": rollup_server.url, "QEMU_LD_PREFIX": str(root),
           "PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([qemu, str(root / "usr/bin/python3"), "-S", str(root / "app/echo.py")],
                       capture_output=True, text=True, timeout=300, env=env, cwd=root)
    check_echo_run(p, rollup_server)
