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
3. where the cycles of the kernel, init and crun go, by experiment: the same drives with one
   thing changed at a time (a config.json variant, a patched copy of init, a boot argument, the
   order of the files in the app drive), run with the command line ``cmbuild run`` uses;
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
    under /data (sizes are multiples of 4096, so that the example's files keep their offsets
    modulo 8 in the app drive: see section 3)."""
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
class Lab:
    """Runs ``cartesi-machine`` on (variants of) the drives cmbuild built, with the command line
    ``cmbuild run`` uses (cmbuild.machines.cartesi.build_command)."""

    def __init__(self, bench: Bench, root: Path, app: Path) -> None:
        from cmbuild.machines import cartesi as cm
        self.cm = cm
        self.version = cm.installed_version()
        self.bench = bench
        self.root, self.app = root, app
        self.work = bench.tmp / "lab"
        self.work.mkdir(exist_ok=True)
        self.config_json = subprocess.run(["unsquashfs", "-cat", str(app), "config.json"],
                                          capture_output=True, check=True).stdout
        try:
            from cmbuild.guest.build import CC, CFLAGS
        except ImportError:  # keep the benchmark usable if the module moves
            CC, CFLAGS = "riscv64-linux-gnu-gcc", ["-static", "-Os", "-s"]
        self.cc, self.cflags = CC, list(CFLAGS)

    def machine(self, root: Path | None = None, app: Path | None = None,
                bootargs: Iterable[str] = ()) -> Run:
        cm = self.cm
        drives = [cm.Drive("root", root or self.root), cm.Drive("app", app or self.app)]
        cmd = cm.build_command(version=self.version, ram_image=self.bench.kernel, ram_length="128Mi",
                               drives=drives, bootargs=list(bootargs))
        p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1800)
        m = CYCLES_RE.search(p.stderr)
        return Run(int(m.group(1)) if m else None, p.stdout, p.returncode)

    # drives: read the squashfs back as a tar, change it, write it as cmbuild does
    def remake(self, sqfs: Path, name: str, replace: dict[str, bytes] | None = None,
               add: Iterable[tuple[str, bytes, int]] = (),
               order: Callable[[tarfile.TarInfo], object] | None = None) -> Path:
        from cmbuild.drives import tar_to_squashfs
        replace = replace or {}
        raw = subprocess.run(["sqfs2tar", str(sqfs)], capture_output=True, check=True).stdout
        src = tarfile.open(fileobj=io.BytesIO(raw))
        members = src.getmembers()
        if order is not None:
            members = [m for _, _, m in sorted((order(m), i, m) for i, m in enumerate(members))]
        tar_path = self.work / f"{name}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as dst:
            for m in members:
                key = m.name[2:] if m.name.startswith("./") else m.name
                if key in replace:
                    m.size = len(replace[key])
                    dst.addfile(m, io.BytesIO(replace[key]))
                else:
                    dst.addfile(m, src.extractfile(m) if m.isfile() else None)
            for path, data, mode in add:
                ti = tarfile.TarInfo(path)
                ti.size, ti.mode = len(data), mode
                dst.addfile(ti, io.BytesIO(data))
        out_path = self.work / f"{name}.sqfs"
        tar_to_squashfs(tar_path, out_path)
        tar_path.unlink()
        return out_path

    def app_with_config(self, name: str, change: Callable[[dict], None], pad_to: int | None = None) -> Path:
        """The app drive with config.json changed, padded with blanks to its original length so
        that every file after it keeps its offset in the drive (offsets matter: see §3)."""
        cfg = json.loads(self.config_json)
        change(cfg)
        data = json.dumps(cfg, indent=2, sort_keys=True).encode() + b"\n"   # as cmbuild writes it
        size = pad_to if pad_to is not None else len(self.config_json)
        if len(data) > size:
            raise ValueError(f"config variant {name} is longer than the original")
        return self.remake(self.app, f"app-{name}", {"config.json": data + b" " * (size - len(data))})

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
    same = sha256_file(hello / ".cartesi/app.sqfs") == sha256_file(hello_direct / ".cartesi/app.sqfs")
    r["same_drive"] = same

    true_ = b.project("true", machine='entrypoint = ["/bin/true"]')
    r["true"] = b.run(true_)
    true_d = b.project("true-direct", machine='entrypoint = ["/bin/true"]\n'
                       f'bootargs = {json.dumps([DIRECT, "--", "/bin/true"])}')
    r["true_direct"] = b.run(true_d)
    r["true_direct_hello_drive"] = b.run(b.project(
        "true-direct-hello", machine=f'bootargs = {json.dumps([DIRECT, "--", "/bin/true"])}')).cycles
    say(f"  /bin/true via crun {cyc(r['true'].cycles)}, direct {cyc(r['true_direct'].cycles)}")

    for name, boot in [("hello_ro", ["cmbuild.overlay=0"]),
                       ("hello_direct_ro", ["cmbuild.overlay=0", DIRECT, "--", *HELLO])]:
        r[name] = b.run(b.project(name, machine=f"bootargs = {json.dumps(boot)}"),
                        expect="Hello from cmbuild!").cycles

    say("writing the bigger image (example + 64 MiB layer)")
    big = big_image(b.tmp / "big-image")
    bigp = b.project("big", image=big)
    r["big"] = b.run(bigp, expect="Hello from cmbuild!")
    r["big_direct"] = b.run(b.project("big-direct", image=big,
                                      machine=f"bootargs = {json.dumps([DIRECT, '--', *HELLO])}"),
                            expect="Hello from cmbuild!")
    r["sizes"] = {k: (p / ".cartesi/app.sqfs").stat().st_size
                  for k, p in [("hello", hello), ("big", bigp), ("true", true_)]}
    bb = "rootfs/usr/bin/busybox"
    r["bb_mod8"] = {k: offsets(p / ".cartesi/app.sqfs", [bb])[bb] % 8 for k, p in [("hello", hello), ("true", true_)]}
    say(f"  bigger image via crun {cyc(r['big'].cycles)}, direct {cyc(r['big_direct'].cycles)}")
    for name, p in [("ext2", b.project("ext2", extra='\n[drives.app]\nformat = "ext2"\n')),
                    ("ext2_direct", b.project("ext2-direct", machine=f"bootargs = {json.dumps([DIRECT, '--', *HELLO])}",
                                              extra='\n[drives.app]\nformat = "ext2"\n'))]:
        r[name] = b.run(p, expect="Hello from cmbuild!").cycles
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
    app_cost = r["hello_direct"].cycles - r["true_direct_hello_drive"]
    out(f"- Each pair runs on the same drives (the direct project only adds boot arguments: "
        f"app drives identical: {'yes' if r['same_drive'] else 'NO'}).")
    out(f"- The image's busybox lies at an offset ≡ {r['bb_mod8']['hello']} (mod 8) in the example's app "
        f"drive and ≡ {r['bb_mod8']['true']} in the `/bin/true` project's (its config.json is shorter): "
        "that alone makes the two projects' counts differ (6.3d).")
    out(f"- The app's own cost, direct: `/app/hello.sh world` {cyc(r['hello_direct'].cycles)} − "
        f"`/bin/true` {cyc(r['true_direct_hello_drive'])} (same drive) = {mcyc(app_cost)}.")
    out("- Direct mode runs the command as root in `/` with init's environment; crun runs it as "
        "the image's user (`app`) in `/app` with the image's environment, so the app's own work "
        "differs slightly between the columns (as root, `hello.sh` can also write `/app`).")
    out()


def section_lab(b: Bench, r: dict) -> dict:
    hello = r["projects"]["hello"]
    lab = Lab(b, hello / ".cartesi/root.sqfs", hello / ".cartesi/app.sqfs")
    res: dict = {}
    say("section 3: experiments on the example's drives")
    check = lab.machine().cycles
    res["same_as_cmbuild"] = check == r["hello"].cycles
    res["remake_identical"] = sha256_file(lab.remake(lab.app, "app-same")) == sha256_file(lab.app)

    # /bin/true on the example's drive: config.json args replaced, padded to the same length
    def to_true(c: dict) -> None:
        c["process"]["args"] = ["/bin/true"]
    app_true = lab.app_with_config("true", to_true)
    direct_true = [DIRECT, "--", "/bin/true"]
    crun_true = lab.machine(app=app_true)
    dir_true = lab.machine(app=app_true, bootargs=direct_true)
    assert crun_true.ok and dir_true.ok, (crun_true.console, dir_true.console)
    res["crun_true"], res["direct_true"] = crun_true.cycles, dir_true.cycles

    # -- kernel and init: small programs started by (patched) init without chroot
    say("  kernel floor, init, program start-up")
    floor = lab.compile("floor", "#include <sys/reboot.h>\nint main(void) { reboot(RB_POWER_OFF); return 0; }\n")
    res["floor"] = lab.machine(root=lab.root_with("floor", floor)).cycles
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
            run = lab.machine(root=root_nc, app=app_true, bootargs=[DIRECT, "--", *args])
            res[key] = run.cycles if run.ok else None
            if key == "uname":
                lines = [ln.strip() for ln in run.console.splitlines()]
                res["uname"] = next((lines[i + 1] for i, ln in enumerate(lines[:-1])
                                     if ln.startswith("cmbuild: direct run of")), "")
            if key == "crun_version":
                res["crun_version_text"] = next((ln for ln in run.console.splitlines()
                                                 if ln.startswith("crun version")), "")

    # -- init's own steps (on top of "prep")
    skip_alias = ('            if (find_drive_cartesi(e->d_name, name, sizeof name) == 0)',
                  '            if (strncmp(e->d_name, "flashdrive", 10) == 0 || strcmp(e->d_name, "root") == 0\n'
                  '                || strcmp(e->d_name, "app") == 0)\n                continue;\n'
                  '            if (find_drive_cartesi(e->d_name, name, sizeof name) == 0)')
    init_rows = []
    if prep:
        res["debug_console"] = lab.machine(app=app_true, bootargs=["cmbuild.debug=1"]).console
        for label, patches, boot in [
            ("the extra-drive scan (`mount_extra_drives`) left out", [('    mount_extra_drives();\n', '')], []),
            ("the scan skips the emulator's `flashdriveN` aliases and `root`/`app` (no second mounts)",
             [skip_alias], []),
            ("no cgroup2 mount on /sys/fs/cgroup", [('if (!is_mountpoint("/sys/fs/cgroup")) {', 'if (0) {')], []),
            ("no tmpfs on /tmp", [('    mount_pseudo("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=1777");\n', '')], []),
            ("read-only root instead of overlayfs (`cmbuild.overlay=0`)", [], ["cmbuild.overlay=0"]),
        ]:
            variant = lab.init_variant("prep-" + str(len(init_rows)), [(code_line, "int code = 0;"), *patches])
            if variant is None:
                continue
            c = lab.machine(root=lab.root_with("prep-" + str(len(init_rows)), variant), app=app_true,
                            bootargs=boot).cycles
            init_rows.append([label, c])
    res["init_rows"] = init_rows
    if prep:
        full_skip = lab.init_variant("skipalias", [skip_alias])
        if full_skip:
            rs = lab.root_with("skipalias", full_skip)
            res["skip_alias_hello"] = (lab.machine(root=rs).cycles,
                                       lab.machine(root=rs, bootargs=[DIRECT, "--", *HELLO]).cycles)

    def aligned_first(m: tarfile.TarInfo) -> int:
        name = m.name[2:] if m.name.startswith("./") else m.name
        return int(m.isfile() and (m.size % 8 != 0 or name == "config.json"))

    # -- crun: config.json variants (same length, so the same file offsets), crun options
    say("  crun: config.json variants and options")
    base = json.loads(lab.config_json)

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

    variants: list[tuple[str, Callable[[dict], None]]] = [
        ("no `linux.maskedPaths` (11 paths)", lambda c: c["linux"].pop("maskedPaths")),
        ("no `linux.readonlyPaths` (5 paths)", lambda c: c["linux"].pop("readonlyPaths")),
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
        ("proposed: no masked/readonly paths, no `/dev/pts` and `/dev/mqueue`, no ipc namespace",
         proposed_config),
        ("all of it: mount ns only, `/proc` + `/dev`, no masked/readonly paths, caps, rlimits, root",
         minimal),
    ]
    crun_rows = []
    for i, (label, change) in enumerate(variants):
        app = lab.app_with_config(f"v{i}", lambda c, change=change: (to_true(c), change(c)))
        run = lab.machine(app=app)
        crun_rows.append([label, run.cycles if run.ok else None])
    res["crun_rows"] = crun_rows
    opt_rows = []
    crun_argv = '"--root=/run/crun", "run",'
    for label, extra in [("`run --no-pivot`", ' "--no-pivot",'), ("`run --no-new-keyring`", ' "--no-new-keyring",'),
                         ("`run --keep` (no delete after exit)", ' "--keep",')]:
        v = lab.init_variant("opt" + str(len(opt_rows)), [(crun_argv, crun_argv + extra)])
        if v is None:
            continue
        run = lab.machine(root=lab.root_with("opt" + str(len(opt_rows)), v), app=app_true)
        opt_rows.append([label, run.cycles if run.ok else None])
    res["opt_rows"] = opt_rows
    res["seccomp"] = "seccomp" in base.get("linux", {})

    # -- the proposals together, on the example's own command
    say("  the proposals together")
    steps = []
    keep = ('"--root=/run/crun", "run",', '"--root=/run/crun", "run", "--keep",')
    init_skip = lab.init_variant("p-skip", [skip_alias])
    init_skip_keep = lab.init_variant("p-skip-keep", [skip_alias, keep])
    if init_skip and init_skip_keep:
        root_skip = lab.root_with("p-skip", init_skip)
        root_skip_keep = lab.root_with("p-skip-keep", init_skip_keep)
        app_trim = lab.app_with_config("p-trim", proposed_config)
        app_trim_aligned = lab.remake(app_trim, "app-p-trim-aligned", order=aligned_first)
        for label, root, app in [
            ("as built", lab.root, lab.app),
            ("+ init: no second mounts through the `flashdriveN` aliases", root_skip, lab.app),
            ("+ `crun run --keep`", root_skip_keep, lab.app),
            ("+ config.json: no masked/readonly paths, no `/dev/pts` and `/dev/mqueue`, no ipc namespace",
             root_skip_keep, app_trim),
            ("+ app drive: files whose size is a multiple of 8 first (all data 8-aligned here)",
             root_skip_keep, app_trim_aligned),
        ]:
            c = lab.machine(root=root, app=app)
            d = lab.machine(root=root, app=app, bootargs=[DIRECT, "--", *HELLO])
            ok = c.ok and d.ok and "Hello from cmbuild!" in c.console and "Hello from cmbuild!" in d.console
            steps.append([label, c.cycles if ok else None, d.cycles if ok else None])
    res["steps"] = steps

    # -- layout of the app drive: offsets of the files' data modulo 8
    say("  app drive layout: file offsets")
    names = ["rootfs/usr/bin/busybox", "rootfs/usr/bin/hello",
             "rootfs/usr/lib/riscv64-linux-gnu/ld-linux-riscv64-lp64d.so.1",
             "rootfs/usr/lib/riscv64-linux-gnu/libc.so.6"]
    layout_rows = []
    for k in range(8):
        app = lab.app if k == 0 else lab.app_with_config(f"pad{k}", lambda c: None,
                                                          pad_to=len(lab.config_json) + k)
        offs = offsets(app, names)
        c = lab.machine(app=app).cycles
        d = lab.machine(app=app, bootargs=[DIRECT, "--", *HELLO]).cycles
        layout_rows.append([k, offs[names[0]] % 8, c, d, offs])
    res["layout_rows"] = layout_rows

    ordered = lab.remake(lab.app, "app-ordered", order=aligned_first)
    offs = offsets(ordered, names)
    res["ordered"] = (lab.machine(app=ordered).cycles,
                      lab.machine(app=ordered, bootargs=[DIRECT, "--", *HELLO]).cycles,
                      sorted({v % 8 for v in offs.values()}), ordered.stat().st_size)
    res["root_offsets"] = offsets(lab.root, ["usr/bin/busybox", "usr/bin/crun", "usr/sbin/init",
                                             "usr/lib/riscv64-linux-gnu/libc.so.6",
                                             "usr/lib/riscv64-linux-gnu/ld-linux-riscv64-lp64d.so.1",
                                             "usr/lib/riscv64-linux-gnu/libseccomp.so.2.6.0"])
    return res


def print_lab(b: Bench, r: dict, x: dict) -> None:
    out("### 6.3 Where the cycles go")
    out()
    out(f"Each row changes one thing and runs `cartesi-machine` with the command line `cmbuild run` "
        f"uses (same boot arguments, drives, RAM; check: the example's unchanged drives give "
        f"{'the same count as `cmbuild run`' if x['same_as_cmbuild'] else 'A DIFFERENT COUNT from `cmbuild run`'}). "
        f"Drives are read back with `sqfs2tar`, changed and written again with cmbuild's own "
        f"`drives.tar_to_squashfs` (unchanged, that gives the identical drive: "
        f"{'yes' if x['remake_identical'] else 'NO'}). A config.json variant is padded with blanks "
        "to the original length, because the offsets of the files after it matter (6.3d). "
        "The command is `/bin/true` (config.json `args` replaced, same length) unless said.")
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
    if x.get("init_rows") and pr:
        out("init's own steps (init ending before the command, as in the second row; one step "
            "changed at a time):")
        out()
        table(["change to init", "cycles", "saves"],
              [[label, cyc(c), mcyc(pr - c, True)] for label, c in x["init_rows"]])
        dbg = [ln for ln in x.get("debug_console", "").splitlines() if "/run/drives/" in ln]
        if dbg:
            out("With `cmbuild.debug=1` the stock init says, on a machine with only the root and app drives:")
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
    out("Uncompressed squashfs stores file data back to back, in the order of the tar stream "
        "(config.json first, then `rootfs/` in path order), so every file's offset depends on the "
        "lengths of all files before it, config.json included. Below, config.json is padded with "
        "k blanks (the same JSON): every file of the image moves by k bytes.")
    out()
    rows = []
    for k, mod, c, d, offs in x["layout_rows"]:
        mods = ", ".join(f"{n.rsplit('/', 1)[-1].split('-')[0]} {v % 8}" for n, v in offs.items())
        rows.append([k, mods, cyc(c), cyc(d)])
    table(["k", "offset mod 8 (busybox, hello, ld.so, libc)", "via crun", "direct"], rows)
    oc, od, mods, size = x["ordered"]
    out(f"Files whose size is a multiple of 8 written first (all ELF files here), config.json and "
        f"the other files after them (the same tree, only the tar order changed): offsets mod 8 "
        f"of the four files: {', '.join(map(str, mods))}; via crun {cyc(oc)} ({mcyc(oc - r['hello'].cycles, True)}), "
        f"direct {cyc(od)} ({mcyc(od - r['hello_direct'].cycles, True)}), drive {mb(size)}.")
    out()
    ro = x["root_offsets"]
    aligned = all(v % 8 == 0 for v in ro.values() if v >= 0)
    out(f"The runtime layer's files are {'all' if aligned else 'NOT all'} at offsets that are multiples "
        "of 8 (" + ", ".join(f"{n.rsplit('/', 1)[-1]} {v:,}" for n, v in ro.items()) + ")"
        + (": its files all have sizes that are multiples of 8 (ELF files), in path order after the "
           "96-byte superblock, by luck rather than by design." if aligned else "."))
    out()
    out(f"An ext2 app drive (`[drives.app] format = \"ext2\"`, file data in 4 KiB blocks): via crun "
        f"{cyc(r['ext2'])} ({mcyc(r['ext2'] - r['hello'].cycles, True)}), direct {cyc(r['ext2_direct'])} "
        f"({mcyc(r['ext2_direct'] - r['hello_direct'].cycles, True)}) against the squashfs drive.")
    out()
    if x.get("steps"):
        out("#### 6.3e The proposals together (the example's own command, `/app/hello.sh world`)")
        out()
        out("Each row adds one change to the row above. The issue's goal is boot → container exit via "
            "crun within 1.08 × the direct run.")
        out()
        rows = []
        for label, c, d in x["steps"]:
            if c is None or d is None:
                rows.append([label, "failed", "failed", "—", "—", "—"])
                continue
            rows.append([label, cyc(c), cyc(d), mcyc(c - d), f"{c / d:.3f}", mcyc(c - 1.08 * d, True)])
        table(["change", "via crun", "direct", "crun costs", "crun / direct", "over 1.08 × direct"], rows)
    if x.get("skip_alias_hello"):
        c, d = x["skip_alias_hello"]
        out(f"The example with init's scan skipping the `flashdriveN` aliases: via crun {cyc(c)} "
            f"({mcyc(c - r['hello'].cycles, True)}), direct {cyc(d)} ({mcyc(d - r['hello_direct'].cycles, True)}).")
        out()


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
    order = ["RAM", "drive root", "drive app", "hash tree", "other (ROM, DTB, cmio, PMAs, config.json)"]
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
