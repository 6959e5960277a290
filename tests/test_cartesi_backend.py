"""cmbuild.machines.cartesi: the cartesi-machine command line and output, per shared/cartesi-machine.md.

The tests marked ``cartesi`` run the real emulator and are skipped when it is not on PATH; the
others never pretend to be it: they check the command line cmbuild builds and parse text in the
emulator's documented formats.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.machines import cartesi
from cmbuild.machines.cartesi import (
    Drive,
    build_command,
    flash_drive_arg,
    installed_version,
    parse_hash,
    parse_version,
    snapshot,
    stored_hash,
)

V020 = (0, 20, 0)
V021 = (0, 21, 0)
HASH = "0x" + "3f" * 32
BASE = "rootfstype=squashfs ro init=/sbin/init cmbuild.machine=cartesi panic=-1"


# --------------------------------------------------------------------------- version


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cartesi-machine 0.21.0\n"
         "git commit: 6d7f1a2b\n"
         "build time: 2025-06-10T12:00:00Z\n"
         "platform: Linux x86_64\n"
         "compiler: GCC 14.2.0\n"
         "Copyright Cartesi and individual authors.\n", (0, 21, 0)),
        ("cartesi-machine 0.20.0\nplatform: Darwin arm64\ncompiler: Clang 17.0.0\n"
         "Copyright Cartesi and individual authors.\n", (0, 20, 0)),
        ("cartesi-machine 0.19.0-alpha3\nplatform: Linux aarch64\n", (0, 19, 0)),
        ("cartesi-machine 0.18.1\n", (0, 18, 1)),
        ("cartesi-machine v1.2.3\n", (1, 2, 3)),
    ],
)
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "lua5.4: cannot open cartesi-machine.lua", "cartesi-machine\n", "0.21.0"])
def test_parse_version_rejects_other_output(text):
    with pytest.raises(CmbuildError) as e:
        parse_version(text)
    assert "v0.21.0" in e.value.hint


# --------------------------------------------------------------------------- --flash-drive


@pytest.mark.parametrize(
    "drive, version, expected",
    [
        (Drive("root", Path("/s/runtime.sqfs")), V021, "label:root,data_filename:/s/runtime.sqfs,read_only"),
        (Drive("root", Path("/s/runtime.sqfs")), V020, "label:root,filename:/s/runtime.sqfs"),
        (Drive("root", Path("/s/runtime.sqfs")), (0, 18, 1), "label:root,filename:/s/runtime.sqfs"),
        (Drive("root", Path("/s/runtime.sqfs")), (1, 0, 0), "label:root,data_filename:/s/runtime.sqfs,read_only"),
        (Drive("app", Path("app.sqfs"), mount=False), V021, "label:app,data_filename:app.sqfs,read_only,mount:false"),
        (Drive("data", Path("d.ext2"), read_only=False, shared=True, mount="/mnt/data", user="dapp"), V021,
         "label:data,data_filename:d.ext2,shared,mount:/mnt/data,user:dapp"),
        (Drive("data", Path("d.ext2"), read_only=False, shared=True, mount=True), V020,
         "label:data,filename:d.ext2,shared,mount:true"),
        # ',' ':' and '\' in values are escaped for the emulator's option parser
        (Drive("app", Path("/a,b/c:d\\e.sqfs")), V021, "label:app,data_filename:/a\\,b/c\\:d\\\\e.sqfs,read_only"),
    ],
)
def test_flash_drive_arg(drive, version, expected):
    assert flash_drive_arg(drive, version) == expected


@pytest.mark.parametrize("label", ["", "Root", "1app", "a_b", "x" * 32, "a,b"])
def test_flash_drive_labels_are_checked(label):
    with pytest.raises(CmbuildError):
        flash_drive_arg(Drive(label, Path("x")), V021)


# --------------------------------------------------------------------------- the command line


def _drives() -> list[Drive]:
    return [Drive("root", Path("/store/runtime.sqfs")), Drive("app", Path("/store/app.sqfs"), mount=False)]


def test_command_line_v021_snapshot():
    cmd = build_command(version=V021, ram_image=Path("/k/linux-6.5.13-ctsi-2-v0.21.0.bin"), ram_length="128Mi",
                        drives=_drives(), bootargs=["cmbuild.app=app", "loglevel=3"],
                        store_dir=Path("/store/tmp/snap"), max_mcycle=0, initial_hash=True)
    assert cmd == [
        "cartesi-machine",
        "--ram-image=/k/linux-6.5.13-ctsi-2-v0.21.0.bin",
        "--ram-length=128Mi",
        "--flash-drive=label:root,data_filename:/store/runtime.sqfs,read_only",
        "--flash-drive=label:app,data_filename:/store/app.sqfs,read_only,mount:false",
        f"--append-bootargs={BASE} cmbuild.app=app loglevel=3",
        "--max-mcycle=0",
        "--initial-hash",
        "--store=/store/tmp/snap",
    ]


def test_command_line_v020_uses_filename():
    cmd = build_command(version=V020, ram_image=Path("linux.bin"), ram_length="128Mi", drives=_drives(),
                        bootargs=[], final_hash=True, assert_rolling_template=True, store_dir=Path("out"))
    assert cmd == [
        "cartesi-machine",
        "--ram-image=linux.bin",
        "--ram-length=128Mi",
        "--flash-drive=label:root,filename:/store/runtime.sqfs",
        "--flash-drive=label:app,filename:/store/app.sqfs,mount:false",
        f"--append-bootargs={BASE}",
        "--final-hash",
        "--store=out",
        "--assert-rolling-template",
    ]


def test_command_line_plain_run():
    cmd = build_command(version=V021, ram_image=Path("linux.bin"), ram_length="0x8000000", drives=_drives()[:1],
                        bootargs=["quiet"])
    assert cmd == ["cartesi-machine", "--ram-image=linux.bin", "--ram-length=0x8000000",
                   "--flash-drive=label:root,data_filename:/store/runtime.sqfs,read_only",
                   f"--append-bootargs={BASE} quiet"]


def test_command_line_follows_the_facts():
    cmd = build_command(version=V021, ram_image=Path("l.bin"), ram_length="128Mi", drives=_drives(),
                        bootargs=["init=/other"], max_mcycle=10, initial_hash=True, final_hash=True,
                        store_dir=Path("s"), assert_rolling_template=True)
    assert "-i" not in cmd and "--htif-console-getchar" not in cmd
    assert "--" not in cmd  # no device-tree entrypoint: cmbuild's init does not read it
    assert not any(a.startswith("--no-rollback") for a in cmd)
    bootargs = next(a for a in cmd if a.startswith("--append-bootargs="))
    # ours come first; a caller's init= comes later and would win, which is the caller's choice
    assert bootargs.split("=", 1)[1].split()[:5] == ["rootfstype=squashfs", "ro", "init=/sbin/init",
                                                      "cmbuild.machine=cartesi", "panic=-1"]
    flash = [a for a in cmd if a.startswith("--flash-drive=")]
    assert flash[0].startswith("--flash-drive=label:root,")


@pytest.mark.parametrize(
    "drives, words",
    [
        ([], "root drive"),
        ([Drive("app", Path("a"))], "root drive"),
        ([Drive("root", Path("a")), Drive("app", Path("b")), Drive("app", Path("c"))], "unique"),
        ([Drive("root", Path("a"), shared=True)], "must not be shared"),
    ],
)
def test_drive_list_is_checked(drives, words):
    with pytest.raises(CmbuildError) as e:
        build_command(version=V021, ram_image=Path("l"), ram_length="128Mi", drives=drives, bootargs=[])
    assert words in e.value.message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ram_length": "128MB"},
        {"ram_length": "lots"},
        {"bootargs": ["two words"]},
        {"bootargs": [""]},
        {"max_mcycle": -1},
        {"store_dir": Path("snap-%h")},
    ],
)
def test_bad_arguments_are_errors(kwargs):
    args = dict(version=V021, ram_image=Path("l"), ram_length="128Mi", drives=_drives(), bootargs=[])
    args.update(kwargs)
    with pytest.raises(CmbuildError):
        build_command(**args)


@pytest.mark.parametrize("length", ["134217728", "0x8000000", "128Mi", "1Gi", "64Ki", "1<<27", "1 << 27"])
def test_ram_lengths_the_emulator_parses(length):
    cmd = build_command(version=V021, ram_image=Path("l"), ram_length=length, drives=_drives(), bootargs=[])
    assert f"--ram-length={length}" in cmd


# --------------------------------------------------------------------------- output


def test_parse_hash_initial_and_final_with_payload():
    report = (
        f"0: {HASH}\n"
        "\n"
        "Halted with payload: 42\n"
        "Cycles: 75712345\n"
        f"75712345: 0x{'ab' * 32}\n"
    )
    got = parse_hash(report)
    assert got == {"hashes": [(0, HASH), (75712345, "0x" + "ab" * 32)], "halted": True, "payload": 42,
                   "cycles": 75712345, "yield": None}


def test_parse_hash_bare_halted_is_payload_zero():
    got = parse_hash("Progress:  10.00\rProgress:  20.00\r\nHalted\nCycles: 60477961\n")
    assert (got["halted"], got["payload"], got["cycles"]) == (True, 0, 60477961)


def test_parse_hash_without_0x_and_uppercase_is_normalised():
    got = parse_hash(f"0: {'AB' * 32}\n")
    assert got["hashes"] == [(0, "0x" + "ab" * 32)]


def test_parse_hash_manual_yield():
    report = (f"0: {HASH}\n\nManual yield rx-accepted (0x000000 data)\nCycles: 123456\n"
              f"123456: {HASH}\nStoring machine: please wait\n")
    got = parse_hash(report)
    assert got["yield"] == "rx-accepted" and got["cycles"] == 123456 and not got["halted"]
    assert got["payload"] is None


@pytest.mark.parametrize(
    "noise",
    [
        f"12: 0x{'a' * 63}\n",            # short hash
        f"x12: {HASH}\n",
        "Halted with payload: -1\n",
        "The machine Halted with payload: 3\n",
        "Cycles: many\n",
    ],
)
def test_parse_hash_ignores_other_lines(noise):
    got = parse_hash(noise)
    assert got == {"hashes": [], "halted": False, "payload": None, "cycles": None, "yield": None}


def _judged(rc: int, report: str, console: str = "", max_mcycle: int | None = None):
    """A RunResult as run() makes it from the emulator's return code, its stderr and the
    guest's console, and how it is judged."""
    r = cartesi._result(["cartesi-machine"], rc, report, initial_hash=False, final_hash=False)
    r.console.feed(console.encode())
    r.console.close()
    r.max_mcycle = max_mcycle
    return r.outcome()


@pytest.mark.parametrize(
    "rc, report, console, code, ok, words",
    [
        # init's report and the halt agree: the container's exit code
        (7, "\nHalted with payload: 7\nCycles: 9\n", "hello\ncmbuild: exit-code 7\n", 7, True,
         "the container exited with code 7"),
        (0, "\nHalted\nCycles: 9\n", "cmbuild: exit-code 0\r\nreboot: Power down\n", 0, True,
         "the container exited with code 0"),
        (137 % 256, "\nHalted with payload: 137\n", "cmbuild: exit-code 137\n", 137, True,
         "killed by SIGKILL"),
        (103, "\nHalted with payload: 103\n", "cmbuild: error: no drive labelled app\ncmbuild: exit-code 103\n",
         103, True, "init: the app drive (label app) was not found"),
        # a bare halt is no proof of success: a kernel panic halts with status 0
        (0, "\nHalted\nCycles: 9\n", "[    1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n",
         125, False, "the machine halted without the container's end: the kernel panicked: VFS: Unable"),
        (0, "\nHalted\n", "OpenSBI v1.3\n", 125, False, "init never started"),
        (0, "\nHalted\n", "cmbuild: writable root: overlayfs\n", 125, False,
         "init never reported the container's end"),
        # init's line and the halt disagree
        (0, "\nHalted\n", "cmbuild: exit-code 4\n", 125, False, "init reported exit code 4, but the machine halted with payload 0"),
        # a payload that is no exit status
        (300 % 256, "\nHalted with payload: 300\n", "cmbuild: exit-code 300\n", 125, False, "not an exit status"),
        # the emulator failed after the machine ran
        (1, "Cycles: 9\nlua5.4: x.lua:1: out of memory\n", "", 125, False,
         "cartesi-machine failed with exit code 1: out of memory"),
        # stopped by --max-mcycle before the end
        (0, f"1000: {HASH}\n", "booting\n", 125, False, "the machine reached max_mcycle = 1000"),
        # a rollups app waiting for input is not a finished run
        (0, "\nManual yield rx-accepted (0x000000 data)\nCycles: 5\n", "cmbuild: x\n", 125, False,
         "stopped at a manual yield (rx-accepted)"),
    ],
)
def test_run_outcome(rc, report, console, code, ok, words):
    out = _judged(rc, report, console, max_mcycle=1000)
    assert (out.code, out.ok) == (code, ok), out.reason
    assert words in out.reason


@pytest.mark.parametrize(
    "rc, text, words",
    [
        (2, "\nHalted\nCycles: 9\n", "halted before its first input: the machine halted without "
                                       "the container's end: init never started"),
        (2, "\nManual yield rx-rejected (0x000000 data)\nCycles: 9\n", "stopped at rx-rejected"),
    ],
)
def test_rolling_snapshot_that_is_not_a_template_is_an_error(tmp_path, rc, text, words):
    result = cartesi._result(["cartesi-machine", "--assert-rolling-template"], rc, text,
                             initial_hash=False, final_hash=True)
    with pytest.raises(CmbuildError) as e:
        cartesi._check_snapshot(tmp_path, result, rolling=True, initial=False)
    assert "not a rollups template" in e.value.message and words in e.value.message


def test_result_emulator_failure_is_an_error():
    with pytest.raises(CmbuildError) as e:
        cartesi._result(["cartesi-machine", "--bad"], 1,
                        "lua5.4: cartesi-machine.lua:1: unrecognized option --bad\nstack traceback:\n\t[C]: in ?\n",
                        initial_hash=False, final_hash=False)
    assert e.value.message == "cartesi-machine failed (exit code 1): unrecognized option --bad"


# --------------------------------------------------------------------------- without the emulator


@pytest.fixture
def no_emulator(tmp_path, monkeypatch):
    """A PATH without cartesi-machine (an empty directory)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def test_installed_version_is_none_without_emulator(no_emulator):
    assert installed_version() is None


def test_snapshot_without_emulator_says_what_to_install(no_emulator, tmp_path):
    with pytest.raises(CmbuildError) as e:
        snapshot(ram_image=tmp_path / "linux.bin", ram_length="128Mi", drives=_drives(),
                 store_dir=tmp_path / "snap")
    text = str(e.value)
    assert "cartesi-machine" in e.value.message and "not on PATH" in e.value.message
    assert "machine-emulator release v0.21.0" in text and "cartesi organisation" in text
    assert not (tmp_path / "snap").exists()


def test_run_without_emulator_says_what_to_install(no_emulator, tmp_path):
    with pytest.raises(CmbuildError) as e:
        cartesi.run(ram_image=tmp_path / "linux.bin", ram_length="128Mi", drives=_drives())
    assert "v0.21.0" in e.value.hint


def test_stored_hash_without_tool_says_what_to_install(no_emulator, tmp_path):
    with pytest.raises(CmbuildError) as e:
        stored_hash(tmp_path)
    assert "cartesi-machine-stored-hash" in e.value.message and "v0.21.0" in e.value.hint


# --------------------------------------------------------------------------- with the real emulator

needs_emulator = pytest.mark.skipif(
    shutil.which("cartesi-machine") is None or shutil.which("cartesi-machine-stored-hash") is None,
    reason="cartesi-machine (machine-emulator v0.21.0 of the cartesi organisation) is not on PATH; "
           "no package registry ships it, and its output is never faked",
)


def _zero_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.cartesi
@needs_emulator
def test_real_installed_version():
    version = installed_version()
    assert version is not None and version >= (0, 18, 0)


@pytest.mark.cartesi
@needs_emulator
def test_real_initial_snapshot_is_stored_and_reproducible(tmp_path):
    # At mcycle 0 nothing runs, so any RAM image and drive contents make a valid machine: a
    # zero-filled RAM image and a zero-filled 4 KiB root drive keep this test self-contained.
    ram = _zero_file(tmp_path / "ram.bin", 4096)
    root = _zero_file(tmp_path / "root.img", 4096)
    drives = [Drive("root", root)]
    a = snapshot(ram_image=ram, ram_length="64Mi", drives=drives, store_dir=tmp_path / "a",
                 report=lambda b: None, console=lambda b: None)
    b = snapshot(ram_image=ram, ram_length="64Mi", drives=drives, store_dir=tmp_path / "b",
                 report=lambda b: None, console=lambda b: None)
    assert a.mcycle == 0
    assert a.root_hash == b.root_hash == stored_hash(tmp_path / "a")
    assert (tmp_path / "a" / "config.json").is_file()
    other = _zero_file(tmp_path / "other.img", 8192)
    c = snapshot(ram_image=ram, ram_length="64Mi", drives=[Drive("root", other)], store_dir=tmp_path / "c",
                 report=lambda b: None, console=lambda b: None)
    assert c.root_hash != a.root_hash


@pytest.mark.cartesi
@needs_emulator
def test_real_run_stops_at_max_mcycle(tmp_path):
    ram = _zero_file(tmp_path / "ram.bin", 4096)
    root = _zero_file(tmp_path / "root.img", 4096)
    out: list[bytes] = []
    result = cartesi.run(ram_image=ram, ram_length="64Mi", drives=[Drive("root", root)], max_mcycle=1000,
                         initial_hash=True, final_hash=True, console=out.append, report=out.append)
    assert result.initial_hash and result.final_hash
    hashes = parse_hash(result.report)["hashes"]
    assert hashes[0][0] == 0 and 0 < hashes[-1][0] <= 1000
    out = result.outcome()          # nothing ran to an end: never an exit code 0
    assert (out.code, out.ok) == (125, False) and "reached max_mcycle = 1000" in out.reason


@pytest.mark.cartesi
@needs_emulator
def test_real_snapshot_refuses_an_existing_directory(tmp_path):
    (tmp_path / "snap").mkdir()
    with pytest.raises(CmbuildError) as e:
        snapshot(ram_image=_zero_file(tmp_path / "r", 4096), ram_length="64Mi",
                 drives=[Drive("root", _zero_file(tmp_path / "d", 4096))], store_dir=tmp_path / "snap")
    assert "already exists" in e.value.message


def test_no_machine_paths_leak_into_commands():
    cmd = build_command(version=V021, ram_image=Path("linux.bin"), ram_length="128Mi", drives=_drives(), bootargs=[])
    assert cmd[0] == "cartesi-machine"  # looked up on PATH, never a path of this machine
    assert os.sep not in cmd[0]
