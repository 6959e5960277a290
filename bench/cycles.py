"""Cycles inside the Cartesi machine (real emulator): a benchmark script, not a test.

    eval "$(path/to/cartesi-machine/setup)"   # cartesi-machine on PATH, $CARTESI_IMAGES_PATH
    python bench/cycles.py > figures.md        # tables on stdout, progress on stderr

Needs ``cartesi-machine`` and ``cartesi-machine-stored-hash`` on PATH and the kernel at
``$CARTESI_IMAGES_PATH/linux.bin``; exits with 2 and says so when they are missing. Section 3
also needs ``sqfs2tar`` (squashfs-tools-ng) and the riscv64 cross compiler, as cmbuild itself
does. Everything runs in a temporary directory (one shared store), removed at the end; nothing
in the checkout is written. A few minutes in all.

Cycle counts are deterministic (the same drives and boot arguments give the same count, checked
once below), so every configuration is run once. What is measured:

1. boot -> container exit (``Cycles:`` at the halt of ``cmbuild run``) through crun, for the
   example image and for a bigger image (the example's layers plus a 64 MiB layer);
2. the same command run by init without crun (``cmbuild.direct=1 -- CMD ARGS`` in the boot
   arguments: init prepares the same bundle, then runs CMD chrooted in its root), for the app and
   for ``/bin/true``; ratio and difference;
3. where the cycles of the kernel, init and crun go, by experiment: the same drives (root, app,
   config) with one thing changed at a time (a config drive with a config.json variant, a
   patched copy of init in the runtime layer, a boot argument, the order of the files in the
   app drive: as built, 8-byte aligned, against plain canonical order), run with the command
   line ``cmbuild run`` uses; and the earlier proposals, adopted or not, before and after;
4. cycles and runtime layer size per ``[runtime] compression``;
5. the size of ``.cartesi/image`` after ``cmbuild snapshot``, part by part;
6. the wall time of a no-op ``cmbuild snapshot`` (median of 10), with and without bytecode caches.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello" / "image"
INIT_C = REPO / "cmbuild" / "guest" / "init.c"
CYCLES_RE = re.compile(r"^Cycles: (\d+)$", re.M)
CMBUILD_CYCLES_RE = re.compile(r"^cmbuild: cycles: (\d+)$", re.M)
HELLO = ["/app/hello.sh", "world"]   # the example image's Entrypoint + Cmd
DIRECT = "cmbuild.direct=1"
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


def out(line: str = "") -> None:
    print(line, flush=True)


def table(head: list[str], rows: Iterable[list[object]]) -> None:
    out("| " + " | ".join(head) + " |")
    out("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        out("| " + " | ".join(str(c) for c in r) + " |")
    out()


def cyc(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def mcyc(n: float | None, sign: bool = False) -> str:
    if n is None:
        return "—"
    return f"{n / 1e6:+.2f} M" if sign else f"{n / 1e6:.2f} M"


def mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------- cmbuild projects --
class Bench:
    def __init__(self, tmp: Path, kernel: Path) -> None:
        self.tmp = tmp
        self.kernel = kernel
        self.store = tmp / "cache"
        self.env = {k: v for k, v in os.environ.items() if k != "CMBUILD_CONFIG"}
        self.notes: list[str] = []

    def project(self, name: str, *, image: Path = EXAMPLE, machine: str = "", extra: str = "") -> Path:
        p = self.tmp / "projects" / name
        p.mkdir(parents=True, exist_ok=True)
        (p / "cartesi.toml").write_text(
            f'[image]\npath = "{image}"\nref = "latest"\n\n'
            f'[machine]\nbackend = "cartesi"\nram_image = "{self.kernel}"\ntimeout = 1800\n{machine}\n'
            f'[cache]\ndir = "{self.store}"\n{extra}')
        return p

    def cmbuild(self, proj: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cmbuild", *args], cwd=proj, capture_output=True,
                              text=True, timeout=timeout, env=env or self.env, stdin=subprocess.DEVNULL)

    def run(self, proj: Path, expect: str | None = None) -> "Run":
        """``cmbuild run`` in ``proj``: its cycle count, checked to be a clean exit 0."""
        p = self.cmbuild(proj, "run")
        m = CMBUILD_CYCLES_RE.search(p.stderr)
        r = Run(int(m.group(1)) if m else None, p.stdout, p.returncode)
        if p.returncode != 0 or m is None or (expect and expect not in p.stdout):
            raise SystemExit(f"cmbuild run failed in {proj} (exit {p.returncode}):\n"
                             f"{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return r


@dataclass
class Run:
    cycles: int | None
    console: str
    rc: int

    @property
    def ok(self) -> bool:
        return self.cycles is not None and "cmbuild: exit-code 0" in self.console.splitlines()


# ---------------------------------------------------------------- the bigger image (OCI) --
def big_image(dest: Path, extra_mib: int = 64, file_mib: int = 4) -> Path:
    """The example image plus one uncompressed layer of ``extra_mib`` MiB of pseudo-random files
    under /data (not read by the app)."""
    shutil.copytree(EXAMPLE, dest)
    blobs = dest / "blobs" / "sha256"
    index = json.loads((dest / "index.json").read_text())
    mdesc = index["manifests"][0]
    manifest = json.loads((blobs / mdesc["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())

    def put(data: bytes) -> str:
        d = hashlib.sha256(data).hexdigest()
        (blobs / d).write_bytes(data)
        return "sha256:" + d

    layer = dest / "layer.tar"
    with tarfile.open(layer, "w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo("data")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(ti)
        for i in range(extra_mib // file_mib):
            data = random.Random(i).randbytes(file_mib << 20)
            ti = tarfile.TarInfo(f"data/blob{i:02d}.bin")
            ti.size, ti.mode = len(data), 0o644
            tar.addfile(ti, io.BytesIO(data))
    raw = layer.read_bytes()
    layer.unlink()
    ldigest = put(raw)
    config["rootfs"]["diff_ids"].append(ldigest)
    config["history"].append({"created_by": f"bench/cycles.py: {extra_mib} MiB under /data"})
    cbytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest["config"] = {**manifest["config"], "digest": put(cbytes), "size": len(cbytes)}
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                               "digest": ldigest, "size": len(raw)})
    mbytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index["manifests"][0] = {**mdesc, "digest": put(mbytes), "size": len(mbytes)}
    (dest / "index.json").write_text(json.dumps(index))
    return dest


# --------------------------------------------------------- experiments on the drives (§3) --
APP_FILES = ["usr/bin/busybox", "usr/bin/hello",
             "usr/lib/riscv64-linux-gnu/ld-linux-riscv64-lp64d.so.1",
             "usr/lib/riscv64-linux-gnu/libc.so.6"]
ROOT_FILES = ["usr/bin/busybox", "usr/bin/crun", "usr/sbin/init",
              "usr/lib/riscv64-linux-gnu/libc.so.6",
              "usr/lib/riscv64-linux-gnu/ld-linux-riscv64-lp64d.so.1",
              "usr/lib/riscv64-linux-gnu/libseccomp.so.2.6.0"]

# What this script measured at commit 8e46162, on the previous layout (config.json inside the
# app drive, file data in plain canonical order, init mounting the root and app drives a second
# time through the emulator's flashdrive<N> aliases); same host type, emulator 0.21.0 and
# kernel. The "before" column of 6.3e.
EARLIER = {"commit": "8e46162", "hello": 60_651_910, "hello_direct": 53_507_878,
           "true": 53_178_138, "true_direct": 45_692_888, "prep": 41_193_756,
           "floor": 39_527_791, "scan_saving": 790_000}


def aligned_key(m: tarfile.TarInfo) -> int:
    """The group of an entry in the aligned order cmbuild writes drives in
    (cmbuild.tarstream.copy_tar, cmbuild.stages.runtime.write_tar): files whose size is a
    multiple of 8 and everything that is not a file first, then the other files, then hard links."""
    from cmbuild.tarstream import data_aligned_last
    return 2 if m.islnk() else int(data_aligned_last(m.isfile(), m.size))


class Lab:
    """Runs ``cartesi-machine`` on (variants of) the drives cmbuild built, with the command line
    ``cmbuild run`` uses (cmbuild.machines.cartesi.build_command): root, app, config, then any
    extra drives."""

    def __init__(self, bench: Bench, proj: Path) -> None:
        from cmbuild.machines import cartesi as cm
        self.cm = cm
        self.version = cm.installed_version()
        self.bench, self.proj = bench, proj
        self.root = proj / ".cartesi/root.sqfs"
        self.app = proj / ".cartesi/app.sqfs"
        self.config = proj / ".cartesi/config.json"
        self.work = bench.tmp / "lab"
        self.work.mkdir(exist_ok=True)
        self.config_json = self.config.read_bytes()
        self.config_doc = json.loads(self.config_json)
        try:
            from cmbuild.guest.build import CC, CFLAGS
        except ImportError:  # keep the benchmark usable if the module moves
            CC, CFLAGS = "riscv64-linux-gnu-gcc", ["-static", "-Os", "-s"]
        self.cc, self.cflags = CC, list(CFLAGS)

    def machine(self, root: Path | None = None, app: Path | None = None, config: Path | None = None,
                bootargs: Iterable[str] = (), extra: Iterable[tuple[str, Path]] = (),
                no_config: bool = False) -> Run:
        """``no_config``: no config drive (only for an init that does not read it)."""
        cm = self.cm
        drives = [cm.Drive("root", root or self.root), cm.Drive("app", app or self.app),
                  *([] if no_config else [cm.Drive("config", config or self.config)]),
                  *(cm.Drive(lb, p) for lb, p in extra)]
        cmd = cm.build_command(version=self.version, ram_image=self.bench.kernel, ram_length="128Mi",
                               drives=drives, bootargs=list(bootargs))
        p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
        m = CYCLES_RE.search(p.stderr)
        return Run(int(m.group(1)) if m else None, p.stdout, p.returncode)

    def config_drive(self, name: str, change: Callable[[dict], None]) -> Path:
        """A config drive with config.json changed, written as the config stage writes it
        (cmbuild.stages.config.drive_bytes): no other drive changes."""
        from cmbuild.stages.config import drive_bytes
        doc = json.loads(self.config_json)
        change(doc)
        path = self.work / f"config-{name}.json"
        path.write_bytes(drive_bytes(doc))
        return path

    def remake(self, sqfs: Path, name: str, replace: dict[str, bytes] | None = None,
               add: Iterable[tuple[str, bytes, int]] = (), first: Iterable[tuple[str, bytes, int]] = (),
               order: Callable[[tarfile.TarInfo], int] | None = aligned_key) -> Path:
        """``sqfs`` read back as a tar (sqfs2tar: canonical path order), files replaced, the
        entries put in ``order`` (by default cmbuild's aligned order), ``first`` files before
        them and ``add`` files after them, written as cmbuild writes drives
        (cmbuild.drives.tar_to_squashfs)."""
        from cmbuild.drives import tar_to_squashfs
        replace = replace or {}
        raw = subprocess.run(["sqfs2tar", str(sqfs)], capture_output=True, check=True).stdout
        src = tarfile.open(fileobj=io.BytesIO(raw))
        entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
        for m in src.getmembers():
            key = m.name[2:] if m.name.startswith("./") else m.name
            if key in replace:
                data: bytes | None = replace[key]
                m.size = len(replace[key])
            else:
                f = src.extractfile(m) if m.isfile() else None
                data = f.read() if f is not None else None
            entries.append((m, data))
        if order is not None:
            entries = [e for _, e in sorted(enumerate(entries), key=lambda t: (order(t[1][0]), t[0]))]
        tar_path = self.work / f"{name}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as dst:
            def put(path: str, data: bytes, mode: int) -> None:
                ti = tarfile.TarInfo(path)
                ti.size, ti.mode = len(data), mode
                dst.addfile(ti, io.BytesIO(data))
            for path, data, mode in first:
                put(path, data, mode)
            for m, data in entries:
                dst.addfile(m, io.BytesIO(data) if data is not None else None)
            for path, data, mode in add:
                put(path, data, mode)
        out_path = self.work / f"{name}.sqfs"
        tar_to_squashfs(tar_path, out_path)
        tar_path.unlink()
        return out_path

    def app_from_store(self, name: str, aligned: bool) -> Path:
        """The app drive made again as the squashfs stage makes it: the flattened image from the
        store through cmbuild.tarstream.copy_tar (with the image's mount points) piped into
        cmbuild.drives.tar_to_squashfs; ``aligned`` as the stage passes it, or plain canonical
        order."""
        from cmbuild.drives import squashfs_from_writer
        from cmbuild.store import Store
        from cmbuild.tarstream import copy_tar
        stages = json.loads((self.proj / "cartesi.lock").read_text())["stages"]
        src = Store(self.bench.store).object_path(stages["unpack"]["output"])
        mount_points = stages["squashfs"]["inputs"]["mount_points"]
        out_path = self.work / f"{name}.sqfs"
        squashfs_from_writer(lambda f: copy_tar(src, f, mount_points=mount_points, aligned=aligned),
                             out_path, "none")
        return out_path

    def compile(self, name: str, source: str) -> bytes:
        d = self.work / f"cc-{name}"
        d.mkdir(exist_ok=True)
        (d / "prog.c").write_text(source)
        flags = [f for f in self.cflags if f != "-static"] if name.startswith("dyn") else self.cflags
        subprocess.run([self.cc, *flags, "-o", "prog", "prog.c"], cwd=d, check=True,
                       capture_output=True, env={**os.environ, "LC_ALL": "C"})
        return (d / "prog").read_bytes()

    def init_variant(self, name: str, patches: list[tuple[str, str]]) -> bytes | None:
        """init.c with each (old, new) applied; None when a patch no longer applies."""
        text = INIT_C.read_text()
        for old, new in patches:
            if text.count(old) != 1:
                self.bench.notes.append(f"init variant '{name}': the patch no longer applies to "
                                        f"cmbuild/guest/init.c ({old[:60]!r}); row left out")
                return None
            text = text.replace(old, new)
        return self.compile(name, text)

    def root_with(self, name: str, init: bytes | None = None,
                  add: Iterable[tuple[str, bytes, int]] = ()) -> Path:
        rep = {"usr/sbin/init": init} if init is not None else {}
        return self.remake(self.root, f"root-{name}", rep, add)


def offsets(sqfs: Path, names: list[str]) -> dict[str, int]:
    """Byte offset of each file's data in an uncompressed squashfs (found by content)."""
    img = sqfs.read_bytes()
    res = {}
    for n in names:
        data = subprocess.run(["unsquashfs", "-cat", str(sqfs), n], capture_output=True).stdout
        mid = len(data) // 2
        at = img.find(data[mid:mid + 512])
        res[n] = at - mid if len(data) >= 1024 and at >= 0 else -1
    return res


def mods(offs: dict[str, int]) -> str:
    return ", ".join(f"{n.rsplit('/', 1)[-1].split('-')[0]} {v % 8}" for n, v in offs.items())


# ------------------------------------------------------------------------------ sections --
def section_runs(b: Bench) -> dict:
    """§1 and §2: crun and direct runs through cmbuild run."""
    r: dict = {}
    say("building the example and running it (crun)")
    hello = b.project("hello")
    r["hello"] = b.run(hello, expect="Hello from cmbuild!")
    r["hello_again"] = b.run(hello).cycles
    say(f"  example via crun: {cyc(r['hello'].cycles)} cycles")
    hello_direct = b.project("hello-direct", machine=f"bootargs = {json.dumps([DIRECT, '--', *HELLO])}")
    r["hello_direct"] = b.run(hello_direct, expect="Hello from cmbuild!")
    assert "cmbuild: direct run of /app/hello.sh without crun" in r["hello_direct"].console
    say(f"  example direct:   {cyc(r['hello_direct'].cycles)} cycles")

    true_ = b.project("true", machine='entrypoint = ["/bin/true"]')
    r["true"] = b.run(true_)
    true_d = b.project("true-direct", machine='entrypoint = ["/bin/true"]\n'
                       f'bootargs = {json.dumps([DIRECT, "--", "/bin/true"])}')
    r["true_direct"] = b.run(true_d)
    say(f"  /bin/true via crun {cyc(r['true'].cycles)}, direct {cyc(r['true_direct'].cycles)}")

    example = [hello, hello_direct, true_, true_d]
    for name, boot in [("hello_ro", ["cmbuild.overlay=0"]),
                       ("hello_direct_ro", ["cmbuild.overlay=0", DIRECT, "--", *HELLO])]:
        p = b.project(name, machine=f"bootargs = {json.dumps(boot)}")
        r[name] = b.run(p, expect="Hello from cmbuild!").cycles
        example.append(p)
    # the app drive depends on the image alone: one drive for every project of the example
    r["same_drive"] = len({sha256_file(p / ".cartesi/app.sqfs") for p in example}) == 1
    r["config_sizes"] = sorted({(p / ".cartesi/config.json").stat().st_size for p in example})

    say("writing the bigger image (example + 64 MiB layer)")
    big = big_image(b.tmp / "big-image")
    bigp = b.project("big", image=big)
    r["big"] = b.run(bigp, expect="Hello from cmbuild!")
    r["big_direct"] = b.run(b.project("big-direct", image=big,
                                      machine=f"bootargs = {json.dumps([DIRECT, '--', *HELLO])}"),
                            expect="Hello from cmbuild!")
    r["sizes"] = {k: (p / ".cartesi/app.sqfs").stat().st_size for k, p in [("hello", hello), ("big", bigp)]}
    r["app_offsets"] = offsets(hello / ".cartesi/app.sqfs", APP_FILES)
    say(f"  bigger image via crun {cyc(r['big'].cycles)}, direct {cyc(r['big_direct'].cycles)}")
    for name, p in [("ext2", b.project("ext2", extra='\n[drives.app]\nformat = "ext2"\n')),
                    ("ext2_direct", b.project("ext2-direct", machine=f"bootargs = {json.dumps([DIRECT, '--', *HELLO])}",
                                              extra='\n[drives.app]\nformat = "ext2"\n'))]:
        r[name] = b.run(p, expect="Hello from cmbuild!").cycles
        r[name + "_size"] = (p / ".cartesi/app.ext2").stat().st_size
    r["projects"] = {"hello": hello, "big": bigp}
    return r


def print_runs(r: dict) -> None:
    out("### 6.1 Boot → container exit, through crun")
    out()
    table(["image", "app drive", "cycles (boot → exit → halt)"], [
        ["example (`examples/hello/image`, 3 layers)", mb(r["sizes"]["hello"]), cyc(r["hello"].cycles)],
        ["example + 64 MiB layer (16 × 4 MiB under /data, not read by the app)", mb(r["sizes"]["big"]),
         cyc(r["big"].cycles)],
    ])
    out(f"Determinism: a second `cmbuild run` of the example gave {cyc(r['hello_again'])} cycles "
        f"({'identical' if r['hello_again'] == r['hello'].cycles else 'DIFFERENT'}), so every "
        "configuration below is run once.")
    out()
    out("### 6.2 crun against init running the command itself (`cmbuild.direct=1`)")
    out()
    rows = []
    for label, c, d in [
        ("`/app/hello.sh world` (example)", r["hello"].cycles, r["hello_direct"].cycles),
        ("`/app/hello.sh world` (example + 64 MiB)", r["big"].cycles, r["big_direct"].cycles),
        ("`/bin/true` (`entrypoint = [\"/bin/true\"]`)", r["true"].cycles, r["true_direct"].cycles),
        ("`/app/hello.sh world`, read-only root (`cmbuild.overlay=0`)", r["hello_ro"], r["hello_direct_ro"]),
        ("`/app/hello.sh world`, ext2 app drive", r["ext2"], r["ext2_direct"]),
    ]:
        rows.append([label, cyc(c), cyc(d), mcyc(c - d), f"{c / d:.3f}"])
    table(["command", "via crun", "direct (init, chroot)", "crun costs", "crun / direct"], rows)
    app_cost = r["hello_direct"].cycles - r["true_direct"].cycles
    sizes = " and ".join(f"{s:,}" for s in r["config_sizes"])
    out(f"- Each pair runs on the same drives (the direct project only adds boot arguments). "
        f"Every project of the example (crun, direct, `/bin/true`, read-only root) has the same "
        f"app drive, byte for byte: {'yes' if r['same_drive'] else 'NO'}: it depends on the image "
        f"alone, and only the config drive ({sizes} bytes) differs.")
    out(f"- In that drive the data of the four ELF files the example runs lies at offsets "
        f"{mods(r['app_offsets'])} (mod 8): aligned (6.3d).")
    out(f"- The app's own cost, direct: `/app/hello.sh world` {cyc(r['hello_direct'].cycles)} − "
        f"`/bin/true` {cyc(r['true_direct'].cycles)} (same app drive) = {mcyc(app_cost)}.")
    out("- Direct mode runs the command as root in `/` with init's environment; crun runs it as "
        "the image's user (`app`) in `/app` with the image's environment, so the app's own work "
        "differs slightly between the columns (as root, `hello.sh` can also write `/app`).")
    out()


def section_lab(b: Bench, r: dict) -> dict:
    from cmbuild.stages.config import drive_bytes
    lab = Lab(b, r["projects"]["hello"])
    res: dict = {}
    say("section 3: experiments on the example's drives")
    check = lab.machine().cycles
    res["same_as_cmbuild"] = check == r["hello"].cycles
    res["identical"] = {
        "config": drive_bytes(lab.config_doc) == lab.config_json,
        "app": sha256_file(lab.remake(lab.app, "app-same")) == sha256_file(lab.app),
        "root": sha256_file(lab.remake(lab.root, "root-same")) == sha256_file(lab.root),
    }

    # /bin/true on the example's drives: a config drive with args replaced
    def to_true(c: dict) -> None:
        c["process"]["args"] = ["/bin/true"]
    config_true = lab.config_drive("true", to_true)
    direct_true = [DIRECT, "--", "/bin/true"]
    crun_true = lab.machine(config=config_true)
    dir_true = lab.machine(config=config_true, bootargs=direct_true)
    assert crun_true.ok and dir_true.ok, (crun_true.console, dir_true.console)
    res["crun_true"], res["direct_true"] = crun_true.cycles, dir_true.cycles

    # an extra squashfs drive (label "data") with one small file
    from cmbuild.drives import tar_to_squashfs
    data_tar = lab.work / "data.tar"
    with tarfile.open(data_tar, "w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("hello.txt")
        ti.size = 6
        t.addfile(ti, io.BytesIO(b"hello\n"))
    data = lab.work / "data.sqfs"
    tar_to_squashfs(data_tar, data)

    # -- kernel and init: small programs started by (patched) init without chroot
    say("  kernel floor, init, program start-up")
    floor = lab.compile("floor", "#include <sys/reboot.h>\nint main(void) { reboot(RB_POWER_OFF); return 0; }\n")
    root_floor = lab.root_with("floor", floor)
    res["floor"] = lab.machine(root=root_floor).cycles
    # what one flash drive costs the kernel: the same floor with one drive fewer, one more
    res["floor_2"] = lab.machine(root=root_floor, no_config=True).cycles
    res["floor_4"] = lab.machine(root=root_floor, extra=[("data", data)]).cycles
    code_line = "int code = direct ? run_direct(argc, argv) : run_container();"
    prep = lab.init_variant("prep", [(code_line, "int code = 0;")])
    res["prep"] = lab.machine(root=lab.root_with("prep", prep)).cycles if prep else None
    nochroot = lab.init_variant("nochroot", [('spawn(argv + 1, default_env, "/run/bundle/rootfs")',
                                              'spawn(argv + 1, default_env, NULL)')])
    if nochroot:
        nop = lab.compile("nop", "int main(void) { return 0; }\n")
        dynnop = lab.compile("dynnop", "int main(void) { return 0; }\n")
        root_nc = lab.root_with("nochroot", nochroot, add=[("usr/bin/nop", nop, 0o755),
                                                          ("usr/bin/dynnop", dynnop, 0o755)])
        for key, args in [("nop", ["/usr/bin/nop"]), ("dynnop", ["/usr/bin/dynnop"]),
                          ("busybox_true", ["/bin/busybox", "true"]),
                          ("crun_version", ["/usr/bin/crun", "--version"]),
                          ("uname", ["/bin/busybox", "uname", "-r"])]:
            run = lab.machine(root=root_nc, config=config_true, bootargs=[DIRECT, "--", *args])
            res[key] = run.cycles if run.ok else None
            if key == "uname":
                lines = [ln.strip() for ln in run.console.splitlines()]
                res["uname"] = next((lines[i + 1] for i, ln in enumerate(lines[:-1])
                                     if ln.startswith("cmbuild: direct run of")), "")
            if key == "crun_version":
                res["crun_version_text"] = next((ln for ln in run.console.splitlines()
                                                 if ln.startswith("crun version")), "")

    # -- init's own steps (on top of "prep")
    init_rows = []
    if prep:
        for label, patches, boot in [
            ("the extra-drive scan (`mount_extra_drives`) left out", [('    mount_extra_drives();\n', '')], []),
            ("no cgroup2 mount on /sys/fs/cgroup", [('if (!is_mountpoint("/sys/fs/cgroup")) {', 'if (0) {')], []),
            ("no tmpfs on /tmp", [('    mount_pseudo("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=1777");\n', '')], []),
            ("read-only root instead of overlayfs (`cmbuild.overlay=0`)", [], ["cmbuild.overlay=0"]),
        ]:
            variant = lab.init_variant("prep-" + str(len(init_rows)), [(code_line, "int code = 0;"), *patches])
            if variant is None:
                continue
            c = lab.machine(root=lab.root_with("prep-" + str(len(init_rows)), variant), config=config_true,
                            bootargs=boot).cycles
            init_rows.append([label, c])
    res["init_rows"] = init_rows
    # which drives init mounts: the three of cmbuild plus the extra drive "data"
    dbg = lab.machine(config=config_true, bootargs=["cmbuild.debug=1"], extra=[("data", data)])
    res["debug_console"] = dbg.console if dbg.ok else ""

    # -- crun: config.json variants (config drives), crun options
    say("  crun: config.json variants and options")
    base = lab.config_doc

    def drop_mounts(*dests: str) -> Callable[[dict], None]:
        return lambda c: c.__setitem__("mounts", [m for m in c["mounts"] if m["destination"] not in dests])

    def only_ns(*keep: str) -> Callable[[dict], None]:
        def f(c: dict) -> None:
            c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] in keep]
            if "uts" not in keep:
                c.pop("hostname", None)
        return f

    def minimal(c: dict) -> None:
        c["linux"] = {"namespaces": [{"type": "mount"}]}
        c["mounts"] = [m for m in base["mounts"] if m["destination"] in ("/proc", "/dev")]
        for k in ("capabilities", "rlimits"):
            c["process"].pop(k, None)
        c.pop("hostname", None)
        c.pop("annotations", None)
        c["process"]["user"] = {"uid": 0, "gid": 0}

    def proposed_config(c: dict) -> None:
        c["linux"].pop("maskedPaths", None)
        c["linux"].pop("readonlyPaths", None)
        c["mounts"] = [m for m in c["mounts"] if m["destination"] not in ("/dev/pts", "/dev/mqueue")]
        c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "ipc"]

    n_masked = len(base.get("linux", {}).get("maskedPaths", []))
    n_ro = len(base.get("linux", {}).get("readonlyPaths", []))
    variants: list[tuple[str, Callable[[dict], None]]] = [
        (f"no `linux.maskedPaths` ({n_masked} paths)", lambda c: c["linux"].pop("maskedPaths")),
        (f"no `linux.readonlyPaths` ({n_ro} paths)", lambda c: c["linux"].pop("readonlyPaths")),
        ("neither of the two", lambda c: (c["linux"].pop("maskedPaths"), c["linux"].pop("readonlyPaths"))),
        ("no `/dev/pts`, `/dev/shm`, `/dev/mqueue` mounts", drop_mounts("/dev/pts", "/dev/shm", "/dev/mqueue")),
        ("no `/dev/pts` mount", drop_mounts("/dev/pts")),
        ("no `/dev/mqueue` mount", drop_mounts("/dev/mqueue")),
        ("no `/sys` mount", drop_mounts("/sys")),
        ("only `/proc` and `/dev` mounted", drop_mounts("/dev/pts", "/dev/shm", "/dev/mqueue", "/sys")),
        ("no mounts at all", lambda c: c.__setitem__("mounts", [])),
        ("no pid namespace", only_ns("ipc", "uts", "mount")),
        ("no ipc namespace", only_ns("pid", "uts", "mount")),
        ("no uts namespace (and no hostname)", only_ns("pid", "ipc", "mount")),
        ("mount namespace only", only_ns("mount")),
        ("no `process.capabilities`", lambda c: c["process"].pop("capabilities")),
        ("no `process.rlimits`", lambda c: c["process"].pop("rlimits")),
        ("user root instead of `app`", lambda c: c["process"].__setitem__("user", {"uid": 0, "gid": 0})),
        ("no annotations", lambda c: c.pop("annotations")),
        ("earlier proposal, not adopted: no masked/readonly paths, no `/dev/pts` and `/dev/mqueue`, "
         "no ipc namespace", proposed_config),
        ("all of it: mount ns only, `/proc` + `/dev`, no masked/readonly paths, caps, rlimits, root",
         minimal),
    ]
    crun_rows = []
    for i, (label, change) in enumerate(variants):
        cfg = lab.config_drive(f"v{i}", lambda c, change=change: (to_true(c), change(c)))
        run = lab.machine(config=cfg)
        crun_rows.append([label, run.cycles if run.ok else None])
    res["crun_rows"] = crun_rows
    opt_rows = []
    crun_argv = '"--root=/run/crun", "run",'
    for label, extra in [("`run --no-pivot`", ' "--no-pivot",'), ("`run --no-new-keyring`", ' "--no-new-keyring",'),
                         ("`run --keep` (no delete after exit)", ' "--keep",')]:
        v = lab.init_variant("opt" + str(len(opt_rows)), [(crun_argv, crun_argv + extra)])
        if v is None:
            continue
        run = lab.machine(root=lab.root_with("opt" + str(len(opt_rows)), v), config=config_true)
        opt_rows.append([label, run.cycles if run.ok else None])
    res["opt_rows"] = opt_rows
    res["seccomp"] = "seccomp" in base.get("linux", {})

    # -- the earlier proposals that were not adopted, on top of what is built
    say("  the proposals not adopted, on the example's own command")
    steps = []
    init_keep = lab.init_variant("p-keep", [(crun_argv, crun_argv + ' "--keep",')])
    if init_keep:
        root_keep = lab.root_with("p-keep", init_keep)
        config_trim = lab.config_drive("p-trim", proposed_config)
        for label, root, cfg in [
            ("as built: init mounts each drive once, file data 8-byte aligned (both adopted)", lab.root, lab.config),
            ("+ `crun run --keep` (not adopted)", root_keep, lab.config),
            ("+ config.json: no masked/readonly paths, no `/dev/pts` and `/dev/mqueue`, no ipc namespace "
             "(not adopted)", root_keep, config_trim),
        ]:
            c = lab.machine(root=root, config=cfg)
            d = lab.machine(root=root, config=cfg, bootargs=[DIRECT, "--", *HELLO])
            ok = c.ok and d.ok and "Hello from cmbuild!" in c.console and "Hello from cmbuild!" in d.console
            steps.append([label, c.cycles if ok else None, d.cycles if ok else None])
    res["steps"] = steps

    # -- layout of the app drive: as built (aligned) against plain canonical order
    say("  app drive layout: aligned against canonical order, shifted data")
    aligned = lab.app_from_store("app-aligned", aligned=True)
    canonical = lab.app_from_store("app-canonical", aligned=False)
    res["store_identical"] = sha256_file(aligned) == sha256_file(lab.app)
    layouts = []
    for label, app in [("as built: aligned order (`copy_tar(..., aligned=True)`)", lab.app),
                       ("plain canonical order (`copy_tar(..., aligned=False)`)", canonical)]:
        c = lab.machine(app=app)
        d = lab.machine(app=app, bootargs=[DIRECT, "--", *HELLO])
        ok = c.ok and d.ok and "Hello from cmbuild!" in c.console and "Hello from cmbuild!" in d.console
        layouts.append([label, offsets(app, APP_FILES), c.cycles if ok else None, d.cycles if ok else None,
                        app.stat().st_size])
    res["layouts"] = layouts
    # every file of the first group moved by k bytes: a file of 8 + k bytes written before them
    # (not zeros: squashfs stores an all-zero block as a hole, with no data)
    shift_rows = []
    for k in range(8):
        app = lab.remake(lab.app, f"app-shift{k}", first=[(".shift", b"\xa5" * (8 + k), 0o644)])
        c = lab.machine(app=app).cycles
        d = lab.machine(app=app, bootargs=[DIRECT, "--", *HELLO]).cycles
        shift_rows.append([k, offsets(app, APP_FILES), c, d])
    res["shift_rows"] = shift_rows
    res["root_offsets"] = offsets(lab.root, ROOT_FILES)
    return res


def print_lab(b: Bench, r: dict, x: dict) -> None:
    out("### 6.3 Where the cycles go")
    out()
    ident = x["identical"]
    out(f"Each row changes one thing and runs `cartesi-machine` with the command line `cmbuild run` "
        f"uses (same boot arguments, drives root, app and config, RAM; check: the example's unchanged "
        f"drives give {'the same count as `cmbuild run`' if x['same_as_cmbuild'] else 'A DIFFERENT COUNT from `cmbuild run`'}). "
        f"A config.json variant is a config drive of its own, written with cmbuild's "
        f"`stages.config.drive_bytes` (the generated config.json through it gives the identical "
        f"drive: {'yes' if ident['config'] else 'NO'}); the other drives stay as built. A variant of "
        f"the runtime layer or the app drive is read back with `sqfs2tar`, changed, and written "
        f"again in cmbuild's aligned order with `drives.tar_to_squashfs` (unchanged, that gives the "
        f"identical drive: runtime layer {'yes' if ident['root'] else 'NO'}, app drive "
        f"{'yes' if ident['app'] else 'NO'}). The command is `/bin/true` (config.json `args` "
        "replaced) unless said.")
    out()
    ct, dt = x["crun_true"], x["direct_true"]
    out("#### 6.3a The kernel, init, and starting a program")
    out()
    rows = []
    fl, pr = x["floor"], x.get("prep")
    rows.append(["kernel boot → init → power-off (an init that only calls `reboot`)", cyc(fl), "—"])
    if pr:
        rows.append(["+ cmbuild's init prepares everything, then ends (no command run)", cyc(pr), mcyc(pr - fl, True)])
    nop = x.get("nop")
    if nop and pr:
        rows.append(["+ fork, exec and wait of a static no-op (`int main(){return 0;}`, runtime layer, no chroot)",
                     cyc(nop), mcyc(nop - pr, True)])
        for key, label in [("dynnop", "the same no-op linked dynamically (ld.so + libc.so.6)"),
                           ("busybox_true", "`/bin/busybox true` of the runtime layer"),
                           ("crun_version", "`/usr/bin/crun --version` (ld.so + 5 libraries + crun's start)")]:
            if x.get(key):
                rows.append([f"instead: {label}", cyc(x[key]), mcyc(x[key] - nop, True) + " over the no-op"])
    rows.append(["direct `/bin/true` of the image (chroot into the bundle)", cyc(dt),
                 mcyc(dt - pr, True) + " over init alone" if pr else "—"])
    rows.append(["`/bin/true` through `crun run`", cyc(ct), mcyc(ct - dt, True) + " over direct"])
    table(["what runs", "cycles", "difference"], rows)
    if x.get("floor_2") and x.get("floor_4"):
        out("What a flash drive costs the kernel: the first row (an init that only calls `reboot`) "
            "with one drive fewer or one more:")
        out()
        table(["drives", "kernel boot → init → power-off", "difference"], [
            ["root, app", cyc(x["floor_2"]), mcyc(x["floor_2"] - fl, True)],
            ["root, app, config (every machine cmbuild runs)", cyc(fl), "—"],
            ["root, app, config, one extra squashfs drive", cyc(x["floor_4"]), mcyc(x["floor_4"] - fl, True)],
        ])
    if x.get("init_rows") and pr:
        out("init's own steps (init ending before the command, as in the second row; one step "
            "changed at a time):")
        out()
        table(["change to init", "cycles", "saves"],
              [[label, cyc(c), mcyc(pr - c, True)] for label, c in x["init_rows"]])
    dbg = [ln.strip() for ln in x.get("debug_console", "").splitlines()
           if ln.startswith("cmbuild: ") and " drive " in ln]
    if dbg:
        out("With `cmbuild.debug=1` and one extra squashfs drive (label `data`), init says which "
            "drives it mounts: each once (no `flashdriveN` alias), root and config never:")
        out()
        out("```")
        for ln in dbg:
            out(ln)
        out("```")
        out()
    out("#### 6.3b crun: config.json and options")
    out()
    out(f"Stock config.json, `/bin/true` via crun: {cyc(ct)}; direct: {cyc(dt)}; crun costs "
        f"{mcyc(ct - dt)}. The generated config.json has "
        f"{'a' if x['seccomp'] else 'no'} `linux.seccomp` section, so there is no seccomp filter to "
        "remove.")
    out()
    table(["config.json variant (everything else as generated)", "cycles", "saves", "share of crun's cost"],
          [[label, cyc(c), mcyc(ct - c, True) if c else "failed", f"{(ct - c) / (ct - dt):.1%}" if c else "—"]
           for label, c in x["crun_rows"]])
    if x["opt_rows"]:
        table(["crun option (patched init)", "cycles", "saves"],
              [[label, cyc(c), mcyc(ct - c, True) if c else "failed"] for label, c in x["opt_rows"]])
    out("#### 6.3c Summary: where crun's cycles go")
    out()
    minimal = x["crun_rows"][-1][1]
    rows = []
    if x.get("crun_version") and x.get("nop"):
        start = x["crun_version"] - x["nop"]
        rows.append(["starting crun: exec, ld.so, 5 shared libraries, argument parsing "
                     "(`crun --version` − static no-op)", mcyc(start), f"{start / (ct - dt):.0%}"])
        if x.get("dynnop"):
            rows.append(["  of which loading libc.so.6 dynamically (dynamic − static no-op)",
                         mcyc(x["dynnop"] - x["nop"]), f"{(x['dynnop'] - x['nop']) / (ct - dt):.0%}"])
    if minimal:
        rows.append(["what the generated config.json asks for beyond a minimal container "
                     "(stock − the 'all of it' variant)", mcyc(ct - minimal), f"{(ct - minimal) / (ct - dt):.0%}"])
        if x.get("crun_version") and x.get("nop"):
            rest = (ct - dt) - (x["crun_version"] - x["nop"]) - (ct - minimal)
            rows.append(["the rest: reading config.json, state files, clone into the namespaces, "
                         "pivot_root, /dev nodes, one more process, delete", mcyc(rest), f"{rest / (ct - dt):.0%}"])
    rows.append(["total: `/bin/true` via crun − direct", mcyc(ct - dt), "100%"])
    table(["part", "cycles", "share"], rows)
    out("#### 6.3d The layout of the app drive")
    out()
    out("Uncompressed squashfs stores file data back to back, in the order of the tar stream. "
        "The squashfs stage writes the image's files whose size is a multiple of 8 first (nearly "
        "every ELF file), then the other files, then hard links, so that the data of every file "
        "of the first group starts at a multiple of 8. Below, the example's app drive as built "
        "against the same tree written in plain canonical (path) order, both made from the "
        "flattened image in the store with `tarstream.copy_tar` piped into mksquashfs, as the "
        f"stage does it (with `aligned=True` that gives the built drive: "
        f"{'yes' if x['store_identical'] else 'NO'}).")
    out()
    (la, oa, ca, da, sa), (lc, oc, cc, dc, sc) = x["layouts"]
    table(["app drive", "offset mod 8 (busybox, hello, ld.so, libc)", "via crun", "direct", "size"],
          [[la, mods(oa), cyc(ca), cyc(da), mb(sa)], [lc, mods(oc), cyc(cc), cyc(dc), mb(sc)]])
    if ca and cc and da and dc:
        out(f"Aligned against canonical: {mcyc(ca - cc, True)} via crun ({(ca - cc) / cc:+.1%}), "
            f"{mcyc(da - dc, True)} direct ({(da - dc) / dc:+.1%}).")
        out()
    out("What the alignment protects against: the drive as built with one file of 8 + k bytes "
        "written before all the others, so that the data of every other file moves by k bytes "
        "(the same tree for every k).")
    out()
    table(["k", "offset mod 8 (busybox, hello, ld.so, libc)", "via crun", "direct"],
          [[k, mods(offs), cyc(c), cyc(d)] for k, offs, c, d in x["shift_rows"]])
    ro = x["root_offsets"]
    aligned = all(v % 8 == 0 for v in ro.values() if v >= 0)
    out(f"The runtime layer's files are {'all' if aligned else 'NOT all'} at offsets that are multiples "
        "of 8 (" + ", ".join(f"{n.rsplit('/', 1)[-1]} {v:,}" for n, v in ro.items()) + ")"
        + (": the runtime stage writes them in the same aligned order." if aligned else "."))
    out()
    out(f"An ext2 app drive (`[drives.app] format = \"ext2\"`, file data in 4 KiB blocks, "
        f"{mb(r['ext2_size'])}): via crun {cyc(r['ext2'])} ({mcyc(r['ext2'] - r['hello'].cycles, True)}), "
        f"direct {cyc(r['ext2_direct'])} ({mcyc(r['ext2_direct'] - r['hello_direct'].cycles, True)}) "
        "against the squashfs drive as built.")
    out()
    out("#### 6.3e The earlier proposals: before and after, and what was not adopted")
    out()
    e = EARLIER
    now = {"hello": r["hello"].cycles, "hello_direct": r["hello_direct"].cycles,
           "true": ct, "true_direct": dt, "prep": pr, "floor": x.get("floor_2")}
    rows = []
    for key, label in [("hello", "example `/app/hello.sh world` via crun"),
                       ("hello_direct", "the same, direct"),
                       ("true", "`/bin/true` via crun (6.3b)"), ("true_direct", "`/bin/true` direct"),
                       ("prep", "init prepares everything, then ends (6.3a)"),
                       ("floor", "kernel boot → power-off, drives root and app (6.3a)")]:
        if now.get(key):
            rows.append([label, cyc(e[key]), cyc(now[key]), mcyc(now[key] - e[key], True)])
    rows.append(["kernel boot → power-off, drives root, app and config (as every run now)", "—", cyc(fl),
                 mcyc(fl - e["floor"], True)])
    rows.append(["example: crun / direct", f"{e['hello'] / e['hello_direct']:.3f}",
                 f"{now['hello'] / now['hello_direct']:.3f}", "—"])
    out(f"Before: this script at commit {e['commit']}, on the previous layout (config.json inside the app "
        "drive, file data in canonical order, init mounting the root and app drives twice); now: as "
        "built today.")
    out()
    table(["what runs", "before", "now", "change"], rows)
    if x.get("steps"):
        out("The proposals that were not adopted, each row adding one change to the row above, on "
            "the example's own command. The issue's goal is boot → container exit via crun within "
            "1.08 × the direct run.")
        out()
        rows = []
        for label, c, d in x["steps"]:
            if c is None or d is None:
                rows.append([label, "failed", "failed", "—", "—", "—"])
                continue
            rows.append([label, cyc(c), cyc(d), mcyc(c - d), f"{c / d:.3f}", mcyc(c - 1.08 * d, True)])
        table(["change", "via crun", "direct", "crun costs", "crun / direct", "over 1.08 × direct"], rows)


def section_compression(b: Bench, r: dict) -> list[list[object]]:
    say("section 4: runtime layer compression")
    rows = []
    for comp in ("none", "lz4", "zstd", "xz"):
        p = r["projects"]["hello"] if comp == "none" else b.project(f"comp-{comp}", extra=f'\n[runtime]\ncompression = "{comp}"\n')
        run = r["hello"] if comp == "none" else b.run(p, expect="Hello from cmbuild!")
        rows.append([comp, (p / ".cartesi/root.sqfs").stat().st_size, run.cycles])
        r["projects"][f"comp-{comp}"] = p
        say(f"  {comp}: {cyc(run.cycles)} cycles")
    return rows


def print_compression(rows: list[list[object]]) -> None:
    out("### 6.4 Runtime layer compression")
    out()
    base = rows[0][2]
    table(["`[runtime] compression`", "runtime layer (`.cartesi/root.sqfs`)", "cycles (example, via crun)",
           "over none"],
          [[f"`{c}`", mb(s), cyc(n), "—" if c == "none" else f"{mcyc(n - base, True)} (×{n / base:.2f})"]
           for c, s, n in rows])


def snapshot_parts(image: Path) -> dict[str, list[int]]:
    """Apparent and on-disk bytes of a stored machine, by part."""
    cfg = json.loads((image / "config.json").read_text())["config"]
    owner: dict[str, str] = {}
    for d in cfg.get("flash_drive", []):
        bs = d.get("backing_store", {})
        for k in ("data_filename", "dht_filename", "dpt_filename"):
            if bs.get(k):
                owner[Path(bs[k]).name] = f"drive {d['label']}"
    ram = cfg.get("ram", {}).get("backing_store", {})
    for k in ("data_filename", "dht_filename", "dpt_filename"):
        if ram.get(k):
            owner[Path(ram[k]).name] = "RAM"
    ht = cfg.get("hash_tree", {})
    for k in ("phtc_filename", "sht_filename"):
        if ht.get(k):
            owner[Path(ht[k]).name] = "hash tree"
    parts: dict[str, list[int]] = {}
    for f in image.iterdir():
        st = f.stat()
        p = parts.setdefault(owner.get(f.name, "other (ROM, DTB, cmio, PMAs, config.json)"), [0, 0])
        p[0] += st.st_size
        p[1] += st.st_blocks * 512
    return parts


def section_snapshot(b: Bench, r: dict) -> dict:
    say("section 5: snapshots")
    res = {}
    for key, label in [("hello", "example, runtime `none`"), ("comp-xz", "example, runtime `xz`"),
                       ("big", "example + 64 MiB, runtime `none`")]:
        p = r["projects"][key]
        s = b.cmbuild(p, "snapshot")
        if s.returncode != 0:
            raise SystemExit(f"cmbuild snapshot failed in {p}:\n{s.stdout[-2000:]}\n{s.stderr[-2000:]}")
        image = p / ".cartesi/image"
        du = int(subprocess.run(["du", "-sk", str(image)], capture_output=True, text=True).stdout.split()[0])
        res[key] = {"label": label, "du_k": du, "parts": snapshot_parts(image),
                    "root": (p / ".cartesi/root.sqfs").stat().st_size,
                    "app": (p / ".cartesi/app.sqfs").stat().st_size}
        say(f"  {label}: du {du} KiB")
    return res


def print_snapshot(s: dict) -> None:
    out("### 6.5 Size of the stored machine (`.cartesi/image` after `cmbuild snapshot`)")
    out()
    out("RAM 128 MiB. *disk* = allocated blocks (`st_blocks × 512`, what `du` counts), "
        "*apparent* = sum of `st_size` (the files are sparse).")
    out()
    order = ["RAM", "drive root", "drive app", "drive config", "hash tree",
             "other (ROM, DTB, cmio, PMAs, config.json)"]
    head = ["part"] + [v["label"] for v in s.values()]
    rows = []
    for part in order:
        rows.append([part] + [f"{mb(v['parts'].get(part, [0, 0])[1])} disk / {mb(v['parts'].get(part, [0, 0])[0])} apparent"
                              for v in s.values()])
    rows.append(["**total**"] + [f"**{mb(sum(p[1] for p in v['parts'].values()))} disk** "
                                 f"(`du -sk` {v['du_k']:,} KiB) / {mb(sum(p[0] for p in v['parts'].values()))} apparent"
                                 for v in s.values()])
    rows.append(["`.cartesi/root.sqfs`, `.cartesi/app.sqfs`"] + [f"{mb(v['root'])}, {mb(v['app'])}" for v in s.values()])
    table(head, rows)
    h, x, bg = s["hello"], s["comp-xz"], s["big"]
    tot = {k: sum(p[1] for p in v["parts"].values()) for k, v in s.items()}
    rd, ad = h["parts"]["drive root"][1], h["parts"]["drive app"][1]
    out(f"- The runtime layer's part of the example's snapshot: {mb(rd)} on disk of {mb(tot['hello'])} "
        f"({rd / tot['hello']:.0%}); the app drive's: {mb(ad)} ({ad / tot['hello']:.0%}).")
    out(f"- `xz` instead of `none` shrinks the runtime layer from {mb(h['root'])} to {mb(x['root'])} and "
        f"the whole snapshot by {mb(tot['hello'] - tot['comp-xz'])} ({(tot['hello'] - tot['comp-xz']) / tot['hello']:.0%}).")
    out(f"- 64 MiB more in the image makes the app drive {mb(bg['app'] - h['app'])} larger and the snapshot "
        f"{mb(tot['big'] - tot['hello'])} larger.")
    out()


def section_noop(b: Bench, r: dict, reps: int = 10) -> dict:
    say("section 6: no-op cmbuild snapshot")
    p = r["projects"]["hello"]
    res = {}
    cached = {k: v for k, v in b.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(b.tmp / "pycache")
    nocache = {**b.env, "PYTHONDONTWRITEBYTECODE": "1"}
    nocache.pop("PYTHONPYCACHEPREFIX", None)
    for key, env in [("cached", cached), ("nocache", nocache)]:
        b.cmbuild(p, "snapshot", env=env)  # warm-up (writes the bytecode cache for "cached")
        walls = []
        for _ in range(reps):
            t = time.perf_counter()
            s = b.cmbuild(p, "snapshot", env=env)
            walls.append(time.perf_counter() - t)
            if s.returncode != 0 or "snapshot: built" in s.stderr:
                raise SystemExit(f"the no-op snapshot was not a no-op:\n{s.stderr[-2000:]}")
        res[key] = walls
        say(f"  {key}: median {statistics.median(walls):.3f} s")
    return res


def print_noop(n: dict) -> None:
    out("### 6.6 No-op `cmbuild snapshot` (everything up to date)")
    out()

    def f(w: list[float]) -> str:
        return f"{statistics.median(w):.2f} s ({min(w):.2f}–{max(w):.2f})"
    table(["Python bytecode", f"wall time, median (min–max) of {len(n['cached'])}"], [
        ["cached, as in an installed package (`PYTHONPYCACHEPREFIX` in a temporary directory)", f(n["cached"])],
        ["none (`PYTHONDONTWRITEBYTECODE=1`: every module compiled on every run)", f(n["nocache"])],
    ])


def versions(b: Bench) -> list[str]:
    v = subprocess.run(["cartesi-machine", "--version"], capture_output=True, text=True).stdout.splitlines()
    cpu = "unknown CPU"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip() or "unknown"
    return [f"host: {os.cpu_count()} × {cpu}, Linux {platform.release()}, Python {platform.python_version()}",
            f"emulator: {v[0] if v else '?'} (kernel `linux.bin` sha256 {sha256_file(b.kernel)[:16]}…, "
            f"{b.kernel.stat().st_size:,} bytes), RAM 128 MiB",
            f"cmbuild: commit {rev}"]


def main() -> int:
    missing = [t for t in ("cartesi-machine", "cartesi-machine-stored-hash") if shutil.which(t) is None]
    images = os.environ.get("CARTESI_IMAGES_PATH")
    kernel = Path(images) / "linux.bin" if images else None
    if missing or kernel is None or not kernel.is_file():
        what = (f"{', '.join(missing)} not on PATH" if missing
                else "no kernel at $CARTESI_IMAGES_PATH/linux.bin")
        print(f"bench/cycles.py: needs the Cartesi Machine emulator: {what}. Install "
              "machine-emulator v0.21.0, put cartesi-machine on PATH and set CARTESI_IMAGES_PATH "
              "to the folder of its linux.bin.", file=sys.stderr)
        return 2
    lab_tools = [t for t in ("sqfs2tar", "unsquashfs", "riscv64-linux-gnu-gcc") if shutil.which(t) is None]
    with tempfile.TemporaryDirectory(prefix="cmbuild-cycles-") as d:
        b = Bench(Path(d), kernel)
        runs = section_runs(b)
        lab = section_lab(b, runs) if not lab_tools else None
        comp = section_compression(b, runs)
        snap = section_snapshot(b, runs)
        noop = section_noop(b, runs)
        out("## 6. Cycles inside the Cartesi machine (real emulator)")
        out()
        for line in versions(b):
            out(f"- {line}")
        if lab and lab.get("crun_version_text"):
            out(f"- guest: Linux {lab.get('uname') or '?'}, {lab['crun_version_text']} (Debian), runtime "
                "layer 0.1.0 (`[runtime] compression = \"none\"` unless said)")
        out(f"- generated by `python bench/cycles.py` in {time.monotonic() - T0:.0f} s; cycle counts "
            "are deterministic, so each configuration ran once")
        out()
        print_runs(runs)
        if lab:
            print_lab(b, runs, lab)
        else:
            out(f"### 6.3 Where the cycles go\n\nskipped: {', '.join(lab_tools)} not installed\n")
        print_compression(comp)
        print_snapshot(snap)
        print_noop(noop)
        for n in b.notes:
            out(f"- note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
