"""The qemu machine, end to end: Debian's kernel + boot shim + runtime layer + our init + crun
running a real container in a real (emulated) RISC-V machine.

Boots are slow-ish (TCG), so every artifact is built once per session and each boot proves
several things at once:

1. squashfs app drive, overlayfs: stdout reaches the host, exit 7 comes back, overlay is said.
2. no app drive: init's distinct code 103, no hang; an app drive with no file system: 104.
3. ext2 app drive, overlay disabled (cmbuild.overlay=0) + an extra ext2 drive "data" bind-mounted
   into the container: the ext2 strategy, writes land on the drives (read back on the host).
4. squashfs app drive, overlay disabled: the read-only root with tmpfs on /tmp and /run.
5. Cartesi-style drives (pmem-region device-tree nodes + aliases) with cmbuild.machine=cartesi.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Sequence

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.machines import qemu
from cmbuild.machines.qemu import Drive, RunResult

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-riscv64") is None,
                                reason="qemu-system-riscv64 is not installed")


# ----- fast tests: command line, labels, output parsing -----------------------------------------

def test_command_line(tmp_path: Path) -> None:
    for name in ("k", "i", "r", "a"):
        (tmp_path / name).write_bytes(b"x")
    cmd = qemu.qemu_command(kernel=tmp_path / "k", initrd=tmp_path / "i",
                            drives=[Drive("root", tmp_path / "r"),
                                    Drive("app", tmp_path / "a", read_only=False)],
                            append=["cmbuild.debug=1"], ram="256M")
    s = " ".join(cmd)
    assert "-machine virt -smp 1 -m 256M -nographic -bios default -no-reboot" in s
    append = cmd[cmd.index("-append") + 1]
    assert append == "console=ttyS0 quiet panic=-1 cmbuild.machine=qemu cmbuild.debug=1"
    assert f"if=none,id=d0,file={tmp_path / 'r'},format=raw,readonly=on" in cmd
    assert f"if=none,id=d1,file={tmp_path / 'a'},format=raw" in cmd
    assert "virtio-blk-device,drive=d1,serial=app" in cmd


@pytest.mark.parametrize("label", ["", "a" * 17, "has space", "comma,x", "-lead", "a_b", "Upper", "1x"])
def test_bad_labels_refused(tmp_path: Path, label: str) -> None:
    (tmp_path / "r").write_bytes(b"x")
    with pytest.raises(CmbuildError, match="invalid drive label"):
        qemu.validate_drives([Drive("root", tmp_path / "r"), Drive(label, tmp_path / "r")])


def test_needs_root_and_unique_labels(tmp_path: Path) -> None:
    (tmp_path / "r").write_bytes(b"x")
    with pytest.raises(CmbuildError, match="root"):
        qemu.validate_drives([Drive("app", tmp_path / "r")])
    with pytest.raises(CmbuildError, match="two drives"):
        qemu.validate_drives([Drive("root", tmp_path / "r"), Drive("root", tmp_path / "r")])
    with pytest.raises(CmbuildError, match="not a file"):
        qemu.validate_drives([Drive("root", tmp_path / "missing")])
    ok = "a" * 16
    qemu.validate_drives([Drive("root", tmp_path / "r"), Drive(ok, tmp_path / "r")])


def _fake_qemu(tmp_path: Path, script: str) -> Path:
    """A stand-in qemu-system-riscv64 (a shell script) to test output parsing and timeouts
    without booting anything."""
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "qemu-system-riscv64"
    exe.write_text("#!/bin/sh\n" + script)
    exe.chmod(0o755)
    return d


def _files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("k", "i", "r"):
        (tmp_path / name).write_bytes(b"x")
        out[name] = tmp_path / name
    return out


def test_last_exit_line_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _fake_qemu(tmp_path, "printf 'boot\\r\\ncmbuild: exit-code 3\\nmore\\n"
                             "cmbuild: exit-code 42\\r\\n[ 1.0] reboot: Power down'\n")
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    f = _files(tmp_path)
    out = io.StringIO()
    r = qemu.run(kernel=f["k"], initrd=f["i"], drives=[Drive("root", f["r"])], stream=out,
                 timeout=30)
    assert (r.exit_code, r.reason) == (42, qemu.REASON_EXIT_LINE)
    assert out.getvalue().splitlines()[0] == "boot"
    assert "[ 1.0] reboot: Power down" in r.output
    assert (r.outcome().code, r.outcome().ok) == (42, True)


def test_firmware_banner_hidden_from_stream(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    banner = ("\\nOpenSBI v1.1\\n   ____   _____\\n  / __ \\\\ |  _ \\\\\\n\\n"
              "Platform Name             : riscv-virtio,qemu\\n"
              "Boot HART PMP Address Bits: 54\\n")
    d = _fake_qemu(tmp_path, f"printf '{banner}cmbuild: writable root: x\\n"
                             "Name: value\\ncmbuild: exit-code 0\\n'\n")
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    f = _files(tmp_path)
    out = io.StringIO()
    r = qemu.run(kernel=f["k"], initrd=f["i"], drives=[Drive("root", f["r"])], stream=out,
                 timeout=30)
    assert r.exit_code == 0
    assert out.getvalue() == "\ncmbuild: writable root: x\nName: value\ncmbuild: exit-code 0\n"
    assert "OpenSBI v1.1" in r.output and "Boot HART PMP Address Bits: 54" in r.output
    out2 = io.StringIO()
    qemu.run(kernel=f["k"], initrd=f["i"], drives=[Drive("root", f["r"])], stream=out2,
             timeout=30, firmware_banner=True)
    assert "OpenSBI v1.1" in out2.getvalue()


def test_no_exit_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _fake_qemu(tmp_path, "echo 'Kernel panic - not syncing: VFS'; exit 0\n")
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    f = _files(tmp_path)
    r = qemu.run(kernel=f["k"], initrd=f["i"], drives=[Drive("root", f["r"])], stream=None,
                 timeout=30)
    assert r.reason.startswith(qemu.REASON_NO_EXIT_LINE)
    assert "the kernel panicked: VFS" in r.reason
    assert (r.outcome().code, r.outcome().ok) == (125, False)


def test_timeout_kills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _fake_qemu(tmp_path, "echo booting; exec sleep 60\n")
    monkeypatch.setenv("PATH", f"{d}:/usr/bin:/bin")
    f = _files(tmp_path)
    r = qemu.run(kernel=f["k"], initrd=f["i"], drives=[Drive("root", f["r"])], stream=None,
                 timeout=1.5)
    assert r.reason.startswith(qemu.REASON_TIMEOUT)
    assert "1.5 s" in r.reason
    assert r.seconds < 10
    out = r.outcome()
    assert (out.code, out.ok) == (124, False) and "raise [machine].timeout" in out.reason


# ----- real boots -----------------------------------------------------------------------------

def _bundle_tar(out: Path, busybox: bytes, script: str, mounts: Sequence[dict] = ()) -> Path:
    """The two drives of a container, as cmbuild makes them: ``out``, a canonical tar of the
    root file system (a static busybox and the mount points), and beside it ``config.drive``,
    the runtime config.json padded to whole 4 KiB blocks (the config drive)."""
    from cmbuild.stages.config import drive_bytes

    config = {
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs", "readonly": False},
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "cwd": "/",
                    "args": ["/bin/busybox", "sh", "-c", script],
                    "env": ["PATH=/bin", "HOME=/"]},
        "hostname": "cmbuild",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                   *mounts],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"},
                                 {"type": "uts"}]},
    }
    (out.parent / "config.drive").write_bytes(drive_bytes(config))
    entries: list[tuple[str, bytes | None, int]] = [
        *((d, None, 0o755) for d in ("bin", "data", "dev", "proc", "run", "sys", "tmp")),
        ("bin/busybox", busybox, 0o755),
    ]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, mode in sorted(entries):
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime = mode, 0
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return out


def _config(tmp_path: Path) -> Drive:
    return Drive("config", tmp_path / "config.drive")


def _boot(env: dict, drives: list[Drive], append: Sequence[str] = ()) -> RunResult:
    r = qemu.run(kernel=env["kernel"], initrd=env["initrd"], drives=drives,
                 append=[*env["cmdline"], *append], timeout=300, stream=None)
    print(r.output)
    print(f"boot: {r.seconds:.1f} s, {r.reason}, exit {r.exit_code}")
    return r


@pytest.fixture(scope="session")
def busybox_riscv64(store_session) -> bytes:
    from cmbuild.debian import extract_deb, fetch_debs
    from cmbuild.recipes import recipes_root, load_runtime_recipe

    recipe = load_runtime_recipe(recipes_root(), "0.1.0")
    pin = recipe.package("busybox-static")
    digest = fetch_debs(store_session, [pin.deb()], suite=recipe.suite,
                        arch=recipe.architecture)[pin.name]
    with store_session.tmpdir() as tmp:
        extract_deb(store_session.object_path(digest), tmp / "x")
        return (tmp / "x/usr/bin/busybox").read_bytes()


@pytest.fixture(scope="session")
def store_session(tmp_path_factory):
    from cmbuild.store import Store

    return Store(tmp_path_factory.mktemp("qemu-store"))


@pytest.fixture(scope="session")
def machine(store_session) -> dict:
    """Kernel, initrd and runtime layer, built once for all boots."""
    from cmbuild.guest.build import build_init
    from cmbuild.recipes import recipes_root, load_kernel_recipe, load_runtime_recipe
    from cmbuild.stages.kernel import build_qemu_kernel, kernel_files
    from cmbuild.stages.runtime import build_runtime

    s = store_session
    k = kernel_files(s, build_qemu_kernel(s, load_kernel_recipe(recipes_root(), "qemu-6.12.117-1")))
    init = build_init(s)
    layer = build_runtime(s, load_runtime_recipe(recipes_root(), "0.1.0"), init_digest=init,
                          compression="none", quiet=True)
    return {"kernel": k.kernel, "initrd": k.initrd, "cmdline": k.cmdline,
            "root": Drive("root", s.object_path(layer))}


@needs_qemu
@pytest.mark.slow
def test_container_output_and_exit_code(machine, busybox_riscv64, tmp_path: Path) -> None:
    from cmbuild.drives import tar_to_squashfs

    tar = _bundle_tar(tmp_path / "app.tar", busybox_riscv64,
                      "echo hello-from-container; echo written > /etc-new && cat /etc-new; "
                      "exit 7")
    tar_to_squashfs(tar, tmp_path / "app.sqfs", compression="none")
    r = _boot(machine, [machine["root"], Drive("app", tmp_path / "app.sqfs"), _config(tmp_path)])
    assert r.reason == qemu.REASON_EXIT_LINE, r.reason
    assert r.exit_code == 7
    lines = r.output.splitlines()
    assert "hello-from-container" in lines
    assert "written" in lines  # the root is writable (overlay upper on tmpfs)
    assert any(l.startswith("cmbuild: writable root: overlayfs") for l in lines)


@needs_qemu
@pytest.mark.slow
def test_missing_app_drive_ends_with_init_code(machine) -> None:
    r = _boot(machine, [machine["root"]])
    assert r.reason == qemu.REASON_EXIT_LINE, r.reason
    assert r.exit_code == 103
    assert "cmbuild: error: no drive labelled app" in r.output


@needs_qemu
@pytest.mark.slow
def test_app_drive_without_file_system(machine, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * (1 << 20))
    r = _boot(machine, [machine["root"], Drive("app", junk)])
    assert (r.reason, r.exit_code) == (qemu.REASON_EXIT_LINE, 104), r.reason
    assert "no squashfs or ext2 superblock" in r.output


def _ext2_read(image: Path, path: str) -> str:
    p = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True,
                       text=True)
    return p.stdout


@needs_qemu
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("debugfs") is None, reason="debugfs (e2fsprogs) not installed")
def test_ext2_app_and_extra_drive_without_overlay(machine, busybox_riscv64,
                                                  tmp_path: Path) -> None:
    from cmbuild.drives import tar_to_ext2

    mount = {"destination": "/data", "type": "bind", "source": "/run/drives/data",
             "options": ["rbind", "rw"]}
    tar = _bundle_tar(tmp_path / "app.tar", busybox_riscv64,
                      "echo kept > /kept.txt; cat /data/in.txt; echo out > /data/out.txt; "
                      "sync; exit 0", [mount])
    tar_to_ext2(tar, tmp_path / "app.ext2", extra_size=1 << 20)
    data_tar = tmp_path / "data.tar"
    with tarfile.open(data_tar, "w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("in.txt")
        ti.size, ti.mtime = 9, 0
        tf.addfile(ti, io.BytesIO(b"data-in!\n"))
    tar_to_ext2(data_tar, tmp_path / "data.ext2", extra_size=1 << 20)
    r = _boot(machine, [machine["root"], Drive("app", tmp_path / "app.ext2", read_only=False),
                        _config(tmp_path), Drive("data", tmp_path / "data.ext2", read_only=False)],
              append=["cmbuild.overlay=0"])
    assert (r.reason, r.exit_code) == (qemu.REASON_EXIT_LINE, 0), r.reason
    assert any(l.startswith("cmbuild: writable root: ext2 app drive, read-write")
               for l in r.output.splitlines())
    assert "data-in!" in r.output.splitlines()
    assert _ext2_read(tmp_path / "data.ext2", "/out.txt") == "out\n"
    assert _ext2_read(tmp_path / "app.ext2", "/kept.txt") == "kept\n"


@needs_qemu
@pytest.mark.slow
def test_read_only_root_fallback(machine, busybox_riscv64, tmp_path: Path) -> None:
    from cmbuild.drives import tar_to_squashfs

    tar = _bundle_tar(tmp_path / "app.tar", busybox_riscv64,
                      "echo t > /tmp/t && cat /tmp/t; echo r > /run/r && cat /run/r; "
                      "if echo x > /x 2>/dev/null; then echo root-writable; "
                      "else echo root-read-only; fi; exit 3")
    tar_to_squashfs(tar, tmp_path / "app.sqfs", compression="none")
    r = _boot(machine, [machine["root"], Drive("app", tmp_path / "app.sqfs"), _config(tmp_path)],
              append=["cmbuild.overlay=0"])
    assert (r.reason, r.exit_code) == (qemu.REASON_EXIT_LINE, 3), r.reason
    lines = r.output.splitlines()
    assert any(l.startswith("cmbuild: writable root: read-only squashfs app drive with tmpfs")
               for l in lines)
    assert ["t", "r", "root-read-only"] == [l for l in lines if l in ("t", "r", "root-read-only",
                                                                       "root-writable")]


# ----- Cartesi's drives, emulated: pmem-region device-tree nodes with label aliases ----------

def _pmem_machine(tmp_path: Path, ram_mib: int, drives: list[tuple[str, Path]]) -> list[str]:
    """QEMU arguments that give the guest Cartesi-style flash drives: QEMU's own device tree
    with the RAM cut in two around a window at 0xa0000000 where each drive image is loaded
    (``-device loader``) and described as a ``pmem-region`` node ``/pmem@<start>`` with an alias
    ``<label>`` and another, ``flashdrive<N>``, as the Cartesi machine does (measured with
    cartesi-machine 0.21: every flash drive has both aliases)."""
    align = 2 << 20
    base = start = 0xA0000000
    ram_end = 0x80000000 + (ram_mib << 20)
    nodes, aliases, args = [], [], []
    for n, (label, path) in enumerate(drives):
        size = -(-path.stat().st_size // align) * align
        nodes.append(f'\tpmem@{start:x} {{\n\t\tcompatible = "pmem-region";\n'
                     f'\t\treg = <0x00 {start:#x} 0x00 {size:#x}>;\n\t}};\n')
        aliases.append(f'\t\t{label} = "/pmem@{start:x}";\n')
        aliases.append(f'\t\tflashdrive{n + 1} = "/pmem@{start:x}";\n')
        args += ["-device", f"loader,file={path},addr={start:#x},force-raw=on"]
        start += size
    dtb = tmp_path / "virt.dtb"
    subprocess.run(["qemu-system-riscv64", "-machine", f"virt,dumpdtb={dtb}", "-smp", "1",
                    "-m", f"{ram_mib}M", "-nographic"], check=True, capture_output=True)
    dts = subprocess.run(["dtc", "-q", "-I", "dtb", "-O", "dts", str(dtb)], check=True,
                         capture_output=True, text=True).stdout
    old = f"reg = <0x00 0x80000000 0x00 {ram_mib << 20:#x}>;"
    assert old in dts, "unexpected memory node in QEMU's device tree"
    dts = dts.replace(old, f"reg = <0x00 0x80000000 0x00 {base - 0x80000000:#x} "
                           f"0x00 {start:#x} 0x00 {ram_end - start:#x}>;")
    end = dts.rindex("};")
    dts = dts[:end] + "".join(nodes) + "\taliases {\n" + "".join(aliases) + "\t};\n" + dts[end:]
    (tmp_path / "pmem.dts").write_text(dts)
    subprocess.run(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(tmp_path / "pmem.dtb"),
                    str(tmp_path / "pmem.dts")], check=True)
    return ["-dtb", str(tmp_path / "pmem.dtb"), *args]


@needs_qemu
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dtc") is None, reason="dtc (device-tree-compiler) not installed")
def test_cartesi_drives_by_device_tree_alias(machine, busybox_riscv64, tmp_path: Path) -> None:
    """init's cartesi path: drives found through /proc/device-tree/aliases/<label> and
    /sys/devices/platform/<start>.pmem/, the exit code passed by reboot(RESTART2, "N")."""
    from cmbuild.drives import tar_to_ext2, tar_to_squashfs

    mount = {"destination": "/data", "type": "bind", "source": "/run/drives/data",
             "options": ["rbind", "ro"]}
    tar = _bundle_tar(tmp_path / "app.tar", busybox_riscv64,
                      "echo hello-from-pmem; cat /data/in.txt; exit 9", [mount])
    tar_to_squashfs(tar, tmp_path / "app.sqfs", compression="none")
    data_tar = tmp_path / "data.tar"
    with tarfile.open(data_tar, "w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("in.txt")
        ti.size, ti.mtime = 10, 0
        tf.addfile(ti, io.BytesIO(b"pmem-data\n"))
    tar_to_ext2(data_tar, tmp_path / "data.ext2")
    # the data drive comes first in memory: the app drive is not the first pmem device
    extra = _pmem_machine(tmp_path, 1024, [("data", tmp_path / "data.ext2"),
                                           ("app", tmp_path / "app.sqfs"),
                                           ("config", tmp_path / "config.drive")])
    r = qemu.run(kernel=machine["kernel"], initrd=machine["initrd"], drives=[machine["root"]],
                 append=[*machine["cmdline"], "cmbuild.machine=cartesi", "cmbuild.debug=1"],
                 ram="1024M", timeout=300, stream=None, extra_args=extra)
    print(r.output)
    assert (r.reason, r.exit_code) == (qemu.REASON_EXIT_LINE, 9), r.reason
    lines = r.output.splitlines()
    assert "cmbuild: init on cartesi" in lines
    assert any(re.match(r"cmbuild: app drive /dev/pmem\d \(squashfs, read-only\)", l)
               for l in lines)
    assert any(re.match(r"cmbuild: drive data \(/dev/pmem\d, ext2, read-write\) on "
                        r"/run/drives/data", l) for l in lines)
    assert "hello-from-pmem" in lines and "pmem-data" in lines
    assert any("Restarting system with command '9'" in l for l in lines)
    # each drive is mounted once, by its label: never again as flashdrive<N>, never app or config
    assert [l for l in lines if " on /run/drives/" in l] == \
        [l for l in lines if re.match(r"cmbuild: drive data \(", l)]


def test_discarded_writes_use_a_throwaway_overlay(tmp_path: Path) -> None:
    from cmbuild.machines.qemu import Drive, qemu_command
    for name in ("root.sqfs", "app.ext2", "data.ext2"):
        (tmp_path / name).write_bytes(b"\0" * 4096)
    cmd = qemu_command(kernel=tmp_path / "k", initrd=tmp_path / "i", drives=[
        Drive("root", tmp_path / "root.sqfs"),
        Drive("app", tmp_path / "app.ext2", read_only=False, discard_writes=True),
        Drive("data", tmp_path / "data.ext2", read_only=False)])
    drives = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-drive"]
    assert drives[0].endswith(",readonly=on")
    assert drives[1].endswith(",snapshot=on")
    assert "snapshot" not in drives[2] and "readonly" not in drives[2]
