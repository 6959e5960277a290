"""Rollups apps on the real Cartesi Machine emulator: the echo example (a Python app with no
Cartesi package in its image) becomes a template snapshot through the built-in rollups server,
answers advance and inspect inputs like the reference stack, with outputs compared byte for
byte against their ABI encodings and every accepted input's outputs Merkle root checked by the
emulator; rejects roll back, exceptions stop the app, a dead server ends the machine.

Needs `cartesi-machine` on PATH and `$CARTESI_IMAGES_PATH/linux.bin`; skipped otherwise."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cmbuild.abi import encode_output
from ocihelpers import scripted_image
from test_pipeline import EXAMPLE, REPO

pytestmark = [pytest.mark.cartesi, pytest.mark.slow]

KERNEL = Path(os.environ.get("CARTESI_IMAGES_PATH", "/nonexistent")) / "linux.bin"
if shutil.which("cartesi-machine") is None or not KERNEL.is_file():
    pytest.skip("cartesi-machine (machine-emulator v0.21.0) and $CARTESI_IMAGES_PATH/linux.bin are "
                "needed; no package registry ships them, and their output is never faked",
                allow_module_level=True)

DEST = "0x" + "00" * 19 + "01"      # the echo app's voucher destination


def cmbuild(proj: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("CMBUILD_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "cmbuild", *args], cwd=proj, capture_output=True,
                          text=True, timeout=900, env=env)


def show(p: subprocess.CompletedProcess[str]) -> str:
    return f"rc={p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"


@pytest.fixture(scope="module")
def echo_image(debs_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scripted_image(REPO / "examples" / "echo" / "build.py",
                          tmp_path_factory.mktemp("echo") / "image", debs_store)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def project(root: Path, cache: Path, image: Path, extra: str = "", machine: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cartesi.toml").write_text(
        f'[image]\npath = "{image}"\nref = "latest"\n\n[rollups]\n{extra}\n'
        f'[machine]\nbackend = "cartesi"\nram_image = "{KERNEL}"\ntimeout = 600\n{machine}\n'
        f'[cache]\ndir = "{cache}"\n')
    return root


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory, cache: Path, echo_image: Path) -> Path:
    """The echo app's project with its template snapshot built."""
    proj = project(tmp_path_factory.mktemp("echo-project"), cache, echo_image)
    p = cmbuild(proj, "snapshot")
    assert p.returncode == 0, show(p)
    assert "rollups: listening on 127.0.0.1:5004" in p.stderr        # the built-in server
    assert "Manual yield rx-accepted" in p.stderr                     # the app asked for input
    return proj


def advance(proj: Path, *args: str) -> dict:
    p = cmbuild(proj, "advance", "--json", *args)
    assert p.returncode in (0, 1) and p.stdout.count("\n") == 1, show(p)
    return json.loads(p.stdout)


def stored_hash(path: Path) -> str:
    return subprocess.run(["cartesi-machine-stored-hash", str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_template_is_the_snapshot_and_its_hash(echo: Path) -> None:
    h = cmbuild(echo, "hash")
    assert h.returncode == 0 and h.stdout.strip() == stored_hash(echo / ".cartesi" / "image")
    config = json.loads((echo / ".cartesi" / "config.json").read_text())
    assert "ROLLUP_HTTP_SERVER_URL=http://127.0.0.1:5004" in config["process"]["env"]


def test_advances_inspect_reject_and_replay(echo: Path) -> None:
    assert cmbuild(echo, "inputs", "reset").returncode == 0
    hashes = []
    for i, text in enumerate(["one", "two", "three"]):
        r = advance(echo, "--text", text)
        payload = text.encode()
        assert (r["status"], r["input_index"]) == ("accepted", i), r
        # byte for byte: the ABI encodings of Notice(bytes) and Voucher(address,uint256,bytes)
        assert [o["abi"] for o in r["outputs"]] == [
            "0x" + encode_output("notice", payload).hex(),
            "0x" + encode_output("voucher", payload, destination=DEST, value=0).hex()]
        assert r["reports"] == ["0x" + payload.hex()]
        assert r["cycles"] > 0 and r["root_hash"].startswith("0x")
        hashes.append(r["root_hash"])
    assert len(set(hashes)) == 3
    # accepted inputs' states are stored; the emulator checked each outputs Merkle root
    state = echo / ".cartesi" / "rollups" / "machine"
    assert stored_hash(state) == hashes[-1]
    # a rejected input leaves the state as it was
    r = advance(echo, "--text", "reject this")
    assert (r["status"], r["outputs"], r["root_hash"]) == ("rejected", [], None)
    assert stored_hash(state) == hashes[-1]
    # an inspect answers with a report and changes nothing
    p = cmbuild(echo, "inspect", "--json", "--hex", "0x" + b"status?".hex())
    assert p.returncode == 0, show(p)
    assert json.loads(p.stdout)["reports"] == ["0x" + b"status?".hex()]
    assert stored_hash(state) == hashes[-1]
    # the same inputs from the template give the same outputs and hashes
    log = (echo / ".cartesi" / "rollups" / "inputs.jsonl").read_text()
    copy = echo / "inputs.jsonl"
    copy.write_text(log)
    p = cmbuild(echo, "inputs", "replay", "--json", str(copy))
    assert p.returncode == 1, show(p)                  # one of them was rejected
    results = [json.loads(line) for line in p.stdout.splitlines()]
    assert [x["root_hash"] for x in results if x["kind"] == "advance" and x["status"] == "accepted"] == hashes
    assert [x["status"] for x in results] == ["accepted"] * 3 + ["rejected", "accepted"]


def test_metadata_reaches_the_app(echo: Path) -> None:
    assert cmbuild(echo, "inputs", "reset").returncode == 0
    a = advance(echo, "--text", "x", "--sender", "0x" + "12" * 20, "--block", "77", "--timestamp", "1234")
    b = advance(echo, "--text", "x")
    assert a["status"] == b["status"] == "accepted"
    assert a["outputs"][0]["abi"] == b["outputs"][0]["abi"]        # same payload, same notice
    assert a["root_hash"] != b["root_hash"]                           # different input index


def test_exception_stops_the_app(echo: Path) -> None:
    assert cmbuild(echo, "inputs", "reset").returncode == 0
    r = advance(echo, "--text", "exception: out of gas")
    assert r["status"] == "exception" and "exception: out of gas" in r["exception"]
    p = cmbuild(echo, "advance", "--text", "more")
    assert p.returncode == 2 and "the app stopped at input 0 (exception)" in p.stderr
    assert cmbuild(echo, "inputs", "reset").returncode == 0
    assert advance(echo, "--text", "after reset")["status"] == "accepted"


def test_an_app_that_never_asks_is_not_a_template(tmp_path: Path, cache: Path, echo_image: Path) -> None:
    proj = project(tmp_path / "p", cache, echo_image, machine='entrypoint = ["/bin/sh", "-c", "echo done; exit 7"]')
    p = cmbuild(proj, "snapshot")
    assert p.returncode != 0, show(p)
    assert "not a rollups template: the machine halted before its first input: the container exited with code 7" in p.stderr
    assert not (proj / ".cartesi" / "image").exists()


def test_a_dead_rollups_server_ends_the_machine(tmp_path: Path, cache: Path) -> None:
    """init supervises the server: killed while the app runs, the machine ends with code 111.
    (The command runs without crun, cmbuild.direct=1, so that it sees the server's process.)"""
    script = ("busybox${IFS}mount${IFS}-t${IFS}proc${IFS}proc${IFS}/proc;"
              "busybox${IFS}killall${IFS}-9${IFS}rollups;busybox${IFS}sleep${IFS}100")
    proj = project(tmp_path / "p", cache, EXAMPLE,
                   machine=f'bootargs = ["cmbuild.direct=1", "--", "/usr/bin/busybox", "sh", "-c", "{script}"]')
    p = cmbuild(proj, "run")
    assert p.returncode == 111, show(p)
    assert "cmbuild: error: the rollups server ended (status 137)" in p.stdout


def test_builtin_server_size(echo: Path) -> None:
    listing = subprocess.run(["unsquashfs", "-lls", str(echo / ".cartesi" / "root.sqfs"), "usr/sbin/rollups"],
                             capture_output=True, text=True, check=True).stdout
    size = int(next(line.split()[2] for line in listing.splitlines() if line.endswith("/usr/sbin/rollups")))
    assert 0 < size < 200_000                          # the goal: under 200 KB in the runtime layer


def test_server_image_passes_the_cmio_device(tmp_path: Path, cache: Path) -> None:
    """`server = "image"`: no built-in server; /dev/cmio is in the container for the image's own
    guest tools, and ROLLUP_HTTP_SERVER_URL is not set by cmbuild."""
    proj = project(tmp_path / "p", cache, EXAMPLE, extra='server = "image"',
                   machine='user = "root"\nentrypoint = ["/bin/sh", "-c", '
                           '"test -c /dev/cmio && echo cmio-is-a-char-device; echo url=$ROLLUP_HTTP_SERVER_URL"]')
    p = cmbuild(proj, "run")
    assert p.returncode == 0, show(p)
    assert "cmio-is-a-char-device" in p.stdout and "url=\n" in p.stdout
    assert "rollups: listening" not in p.stdout
    config = json.loads((proj / ".cartesi" / "config.json").read_text())
    assert {"destination": "/dev/cmio", "type": "bind", "source": "/dev/cmio",
            "options": ["bind", "rw"]} in config["mounts"]
