"""cmbuild benchmarks (not tests): where cmbuild stands against the tools users would use instead.

    python bench/run.py            # full: images of 50, 300 and 1000 MB (about 15 minutes)
    python bench/run.py --quick    # 50 and 300 MB, fewer repetitions (about 4 minutes)

Prints every figure as it is measured and writes ``docs/benchmarks.md`` (plus PNG plots in
``docs/`` when matplotlib is installed: ``pip install matplotlib``). Sections:

1. no-op rebuild: wall time of ``cmbuild app`` (and ``build``) when nothing changed, split into
   interpreter start-up, imports, task graph and up-to-date checks; a cProfile of one run;
2. early cutoff: which stages run, and for how long, after a retag, a new config with the same
   layers, a changed ``[machine] env`` value and a new top layer on a large image;
3./4. cold build (pull + unpack + app drive) from a registry on loopback against ``skopeo copy``
   + ``umoci raw unpack --rootless`` + ``mksquashfs`` (uncompressed), wall time and peak RSS,
   at several image sizes; per step (the unpack stage's own account of its parts), against the
   physical floor (read the layers, inflate them, write the drive), ``mksquashfs`` with other
   ``-processors``/``-mem`` against the stored drive's bytes, the rebuild after a ``[machine]
   env`` change, and the same build one stage per process;
5. inside the machine: the runtime layer per compression (size, build time) and, when
   ``cmbuild run`` works, the time from boot to container start and exit under QEMU (and the
   cycle counts under ``cartesi-machine`` when it is installed).

Everything runs in temporary directories that are removed as the run goes; the only server is a
``docker-registry`` on 127.0.0.1, stopped at the end. A hand-written part of docs/benchmarks.md
after the line ``<!-- notes -->`` is kept when the file is regenerated.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile  # noqa: F401  (used through `python -m cProfile`)
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DOCS = REPO / "docs"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

import imagegen  # noqa: E402
import inside  # noqa: E402

NOTES_MARK = "<!-- notes -->"
TIME = shutil.which("time") and Path("/usr/bin/time").exists()


# ----------------------------------------------------------------------------- measuring --
@dataclass
class Run:
    cmd: list[str]
    wall: float
    rss_mb: float
    rc: int
    out: str
    err: str


def measure(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 3600) -> Run:
    """Run ``cmd``; its wall time and the peak RSS of the largest process in its tree
    (``/usr/bin/time``'s %M, else getrusage(RUSAGE_CHILDREN) in a fresh wrapper process)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rssf:
        if TIME:
            full = ["/usr/bin/time", "-f", "%M", "-o", rssf.name, *cmd]
        else:
            full = [sys.executable, str(Path(__file__)), "--rusage-wrap", rssf.name, "--", *cmd]
        t0 = time.perf_counter()
        p = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        lines = [x for x in Path(rssf.name).read_text().split() if x.isdigit()]
    rss = int(lines[-1]) / 1024 if lines else float("nan")
    return Run(cmd, wall, rss, p.returncode, p.stdout, p.stderr)


def rusage_wrap(out: str, cmd: list[str]) -> int:
    import resource
    rc = subprocess.call(cmd)
    Path(out).write_text(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
    return rc


def must(r: Run, what: str) -> Run:
    if r.rc != 0:
        raise RuntimeError(f"{what} failed ({r.rc}): {' '.join(r.cmd)}\n{r.out[-3000:]}\n{r.err[-3000:]}")
    return r


@dataclass
class Stat:
    values: list[float]

    @property
    def med(self) -> float:
        return statistics.median(self.values) if self.values else float("nan")

    def fmt(self, unit: str = "s", digits: int = 2) -> str:
        if not self.values:
            return "n/a"
        v = self.values
        if len(v) == 1:
            return f"{v[0]:.{digits}f} {unit} (n=1)"
        return f"{self.med:.{digits}f} {unit} ({min(v):.{digits}f}–{max(v):.{digits}f}, n={len(v)})"


def cm_env(home: Path) -> dict[str, str]:
    """cmbuild's environment: this checkout first, no credentials of the host, unbuffered."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CMBUILD_") and k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE",
                                                         "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    # byte-compiled modules are cached, as they are for an installed package, but in the
    # temporary directory rather than in the checkout
    env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    env["DOCKER_CONFIG"] = str(home / "docker-config")
    env["REGISTRY_AUTH_FILE"] = str(home / "auth.json")
    (home / "docker-config").mkdir(parents=True, exist_ok=True)
    if not (home / "auth.json").exists():
        (home / "auth.json").write_text('{"auths": {}}')
    return env


def cmbuild_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "cmbuild", *args]


STAGE_LINE = re.compile(r"^cmbuild: ([\w-]+): (built|restored) (\w+)(?:, ([\d.]+) MB)? in ([\d.]+) s", re.M)


def ran(out: str) -> list[str]:
    """The tasks doit ran ('.  name'; doit writes these lines on stderr)."""
    return re.findall(r"^\.\s+(\S+)", out, re.M)


def uptodate(out: str) -> list[str]:
    return re.findall(r"^--\s+(\S+)", out, re.M)


def stage_times(err: str) -> dict[str, float]:
    return {m.group(1): float(m.group(5)) for m in STAGE_LINE.finditer(err)}


def stage_verbs(err: str) -> dict[str, str]:
    """'built' (the stage ran its build) or 'restored' (its output for this key was in the store)."""
    return {m.group(1): m.group(2) for m in STAGE_LINE.finditer(err)}


def write_project(proj: Path, image_toml: str, env_value: str = "bench", extra: str = "",
                  cache: Path | None = None) -> Path:
    proj.mkdir(parents=True, exist_ok=True)
    cache_line = f'\n[cache]\ndir = "{cache}"\n' if cache else ""
    (proj / "cartesi.toml").write_text(
        f"[image]\n{image_toml}\n\n[machine]\nenv = {{ GREETING = \"{env_value}\" }}\n{extra}{cache_line}")
    return proj


def registry_toml(host: str, repo: str, tag: str, digest: str) -> str:
    return f'ref = "{host}/{repo}:{tag}"\ndigest = "{digest}"'


# ------------------------------------------------------------------------------- machine --
def machine_info() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    def ver(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]
        except (OSError, subprocess.TimeoutExpired):
            return "absent"
    return {"cores": str(os.cpu_count()), "cpu": model, "ram": mem,
            "kernel": platform.release(), "python": platform.python_version(),
            "skopeo": ver(["skopeo", "--version"]), "umoci": ver(["umoci", "--version"]),
            "mksquashfs": ver(["mksquashfs", "-version"]),
            "qemu": ver(["qemu-system-riscv64", "--version"]),
            "cartesi-machine": ver(["cartesi-machine", "--version"]) if shutil.which("cartesi-machine") else "not installed"}


# ------------------------------------------------------------------------------ registry --
@contextlib.contextmanager
def registry(tmp: Path) -> Iterator[Any]:
    from registry_fixtures import start_registry, stop
    proc, reg = start_registry(tmp)
    try:
        yield reg
    finally:
        stop(proc)


def push(reg: Any, layout: Path, tag: str, repo: str, env: dict[str, str]) -> None:
    must(measure(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
                  f"oci:{layout}:{tag}", f"docker://{reg.host}/{repo}:{tag}"], env=env), "skopeo push")


def retag(reg: Any, repo: str, src: str, dst: str, env: dict[str, str]) -> None:
    must(measure(["skopeo", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false",
                  "--preserve-digests", f"docker://{reg.host}/{repo}:{src}",
                  f"docker://{reg.host}/{repo}:{dst}"], env=env), "skopeo retag")


# ------------------------------------------------------------------------------- results --
@dataclass
class Results:
    machine: dict[str, str]
    args: dict[str, Any]
    noop: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    incremental: list[dict[str, Any]] = field(default_factory=list)
    cold: list[dict[str, Any]] = field(default_factory=list)
    inside: dict[str, Any] = field(default_factory=dict)
    images: dict[int, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0


def say(msg: str) -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- cold build --
UNPACK_LINE = re.compile(r"^cmbuild: unpack: layers read ([\d.]+) s; canonical tar stored ([\d.]+) s"
                         r"(?:; app drive stored beside it ([\d.]+) s)?; total ([\d.]+) s", re.M)


def unpack_parts(err: str) -> dict[str, float]:
    """The unpack stage's own account of its time (cmbuild/stages/unpack.py prints it)."""
    m = UNPACK_LINE.search(err)
    if not m:
        return {}
    parts = {"layers read": float(m.group(1)), "canonical tar stored": float(m.group(2)),
             "total": float(m.group(4))}
    if m.group(3):
        parts["app drive stored"] = float(m.group(3))
    return parts


def cold_cmbuild(work: Path, image_toml: str, env: dict[str, str], breakdown: bool = False,
                 config_reps: int = 0) -> dict[str, Any]:
    proj = write_project(work / "proj", image_toml, cache=work / "cache")
    r = must(measure(cmbuild_cmd("app"), cwd=proj, env=env), "cmbuild app (cold)")
    st = stage_times(r.err)
    size = (proj / ".cartesi" / "app.sqfs").stat().st_size
    out = {"wall": r.wall, "rss": r.rss_mb, "stages": st, "out_size": size, "unpack_parts": unpack_parts(r.err),
           "verbs": stage_verbs(r.err)}
    if config_reps:
        out["config_change"] = config_change(proj, image_toml, config_reps, env, work / "cache")
    if breakdown:
        out["floor"] = floor(work, proj, env)
        out["mksquashfs"] = mksquashfs_runs(work, proj, env)
        out["per_stage"] = per_stage(work / "staged", image_toml, env)
    shutil.rmtree(work)
    return out


def config_change(proj: Path, image_toml: str, reps: int, env: dict[str, str], cache: Path) -> dict[str, Any]:
    """After the cold build: a new `[machine] env` value (never built before), then `cmbuild app`:
    its wall time, what ran, and whether the app drive kept its bytes and its inode."""
    app = proj / ".cartesi" / "app.sqfs"
    before = (app.stat().st_ino, app.stat().st_size, _sha256(app))
    # cmbuild fsyncs what it writes; the writes of the benchmark's other programs (the image
    # push, the standard tools) may still wait in the page cache, and an fsync in ext4 can
    # wait behind them for seconds: flushed first, so that the figure is cmbuild's own
    os.sync()
    runs = []
    for i in range(reps):
        write_project(proj, image_toml, env_value=f"changed {i}", cache=cache)
        r = must(measure(cmbuild_cmd("app"), cwd=proj, env=env), "cmbuild app after an env change")
        after = (app.stat().st_ino, app.stat().st_size, _sha256(app))
        runs.append({"wall": r.wall, "ran": ran(r.err), "same_drive": after == before})
    say(f"    after a [machine] env change: {Stat([x['wall'] for x in runs]).fmt()}, ran {runs[-1]['ran']}, "
        f"app drive same bytes and inode: {all(x['same_drive'] for x in runs)}")
    return {"runs": runs}


def _sha256(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def per_stage(work: Path, image_toml: str, env: dict[str, str]) -> dict[str, dict[str, float]]:
    """The same cold build one stage per process (`cmbuild pull`, then `unpack`, ...): each
    stage's wall time and peak RSS on its own. `cmbuild unpack` alone does not make the app
    drive, so this is the build with the stages one after the other."""
    proj = write_project(work / "proj", image_toml, cache=work / "cache")
    out = {}
    for stage in ("pull", "unpack", "squashfs", "config"):
        r = must(measure(cmbuild_cmd(stage), cwd=proj, env=env), f"cmbuild {stage}")
        out[stage] = {"wall": r.wall, "rss": r.rss_mb, "stage": stage_times(r.err).get(stage, float("nan"))}
    say("    one stage per process: " + ", ".join(f"{k} {v['stage']:.1f} s / {v['rss']:.0f} MB RSS"
                                                  for k, v in out.items()))
    shutil.rmtree(work)
    return out


def floor(work: Path, proj: Path, env: dict[str, str]) -> dict[str, float]:
    """What no build can avoid, measured on this build's own files: reading the compressed
    layers once (from the page cache, as the pull left them), inflating them (one thread,
    the library cmbuild uses), and writing a file the size of the app drive once (into the
    store's file system, then fsync)."""
    lock = json.loads((proj / "cartesi.lock").read_text())
    blobs = [str(work / "cache" / "objects" / "sha256" / layer["digest"][7:]) for layer in lock["image"]["layers"]]
    code = ("import sys, time\n"
            "from cmbuild.oci.flatten import inflate\n"
            "t = time.perf_counter(); n = 0\n"
            "for p in sys.argv[1:]:\n"
            "    with open(p, 'rb') as f:\n"
            "        while f.read(1 << 20): pass\n"
            "read = time.perf_counter() - t; t = time.perf_counter()\n"
            "for p in sys.argv[1:]:\n"
            "    d = inflate.decompressobj(31)\n"
            "    with open(p, 'rb') as f:\n"
            "        while b := f.read(1 << 16): n += len(d.decompress(b))\n"
            "print(read, time.perf_counter() - t)\n")
    r = must(measure([sys.executable, "-c", code, *blobs], env=env), "floor: read and inflate the layers")
    read, inflate = (float(x) for x in r.out.split())
    size = (proj / ".cartesi" / "app.sqfs").stat().st_size
    target = work / "cache" / "tmp" / "floor.img"
    t0 = time.perf_counter()
    with open(target, "wb") as f:
        block = bytes(1 << 20)
        left = size
        while left > 0:
            left -= f.write(block[:min(left, len(block))])
        f.flush()
        t_write = time.perf_counter() - t0
        os.fsync(f.fileno())
    t_fsync = time.perf_counter() - t0
    target.unlink()
    out = {"read_layers": read, "inflate_1_thread": inflate, "write_drive": t_write, "write_drive_fsync": t_fsync}
    say(f"    floor: read the layers {read:.2f} s, inflate them (1 thread) {inflate:.2f} s, write the drive "
        f"{t_write:.2f} s (+ fsync: {t_fsync:.2f} s)")
    return out


def mksquashfs_runs(work: Path, proj: Path, env: dict[str, str], reps: int = 3) -> dict[str, Any]:
    """mksquashfs -tar on this build's drive stream (tarstream.copy_tar, aligned, as the squashfs
    stage makes it) with cmbuild's options, varying -processors and -mem: the image's sha256
    (is it the drive cmbuild stored?), the time and the peak RSS of each run."""
    lock = json.loads((proj / "cartesi.lock").read_text())
    unpack, squash = lock["stages"]["unpack"], lock["stages"]["squashfs"]
    tar = work / "drive.tar"
    code = ("import sys, json; from cmbuild.tarstream import copy_tar\n"
            "with open(sys.argv[2], 'wb') as f: copy_tar(sys.argv[1], f, mount_points=json.loads(sys.argv[3]), aligned=True)\n")
    must(measure([sys.executable, "-c", code, str(work / "cache" / "objects" / "sha256" / unpack["output"][7:]),
                  str(tar), json.dumps(squash["inputs"]["mount_points"])], env=env), "drive tar")
    base = ["mksquashfs", "-", str(work / "x.sqfs"), "-tar", "-noI", "-noId", "-noD", "-noF", "-noX",
            "-no-fragments", "-mkfs-time", "0", "-all-time", "0", "-root-mode", "755", "-quiet", "-no-progress"]
    if os.geteuid() != 0:
        base = ["unshare", "--map-root-user", *base]
    out: dict[str, Any] = {"want": squash["output"][7:], "runs": {}}
    variants = {"-processors 1 -mem 64M (cmbuild)": ["-processors", "1", "-mem", "64M"],
                f"all {os.cpu_count()} processors, -mem 64M": ["-mem", "64M"],
                "-processors 1 -mem 256M": ["-processors", "1", "-mem", "256M"],
                f"all {os.cpu_count()} processors, -mem 256M": ["-mem", "256M"]}
    for _ in range(reps):
        for label, extra in variants.items():
            (work / "x.sqfs").unlink(missing_ok=True)
            with open(tar, "rb") as f, tempfile.NamedTemporaryFile("r", suffix=".rss") as rssf:
                t0 = time.perf_counter()
                p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rssf.name, *base, *extra] if TIME
                                   else [*base, *extra], stdin=f, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                rss = [x for x in Path(rssf.name).read_text().split() if x.isdigit()]
            if p.returncode != 0:
                raise RuntimeError(f"mksquashfs ({label}) failed: {p.stderr[-2000:]}")
            out["runs"].setdefault(label, []).append(
                {"wall": wall, "rss": int(rss[-1]) / 1024 if rss else float("nan"), "sha256": _sha256(work / "x.sqfs")})
    (work / "x.sqfs").unlink(missing_ok=True)
    tar.unlink()
    for label, runs in out["runs"].items():
        same = all(x["sha256"] == out["want"] for x in runs)
        say(f"    mksquashfs {label}: {Stat([x['wall'] for x in runs]).fmt()}, "
            f"{Stat([x['rss'] for x in runs]).fmt('MB', 0)} RSS, the stored drive's bytes: {same}")
    return out


def cold_standard(work: Path, host: str, repo: str, tag: str, env: dict[str, str]) -> dict[str, Any]:
    work.mkdir(parents=True)
    steps = {
        "skopeo copy": ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{host}/{repo}:{tag}", f"oci:{work / 'oci'}:{tag}"],
        "umoci raw unpack": ["umoci", "raw", "unpack", "--rootless", "--image", f"{work / 'oci'}:{tag}",
                             str(work / "rootfs")],
        "mksquashfs": ["mksquashfs", str(work / "rootfs"), str(work / "out.sqfs"),
                       "-noI", "-noId", "-noD", "-noF", "-noX", "-quiet", "-no-progress"],
    }
    out: dict[str, Any] = {"stages": {}, "rss_steps": {}}
    for name, cmd in steps.items():
        r = must(measure(cmd, env=env), name)
        out["stages"][name] = r.wall
        out["rss_steps"][name] = r.rss_mb
    out["wall"] = sum(out["stages"].values())
    out["rss"] = max(out["rss_steps"].values())
    out["out_size"] = (work / "out.sqfs").stat().st_size
    shutil.rmtree(work, ignore_errors=True)
    if work.exists():   # umoci --rootless may leave read-only directories
        subprocess.run(["chmod", "-R", "u+rwX", str(work)], check=False)
        shutil.rmtree(work)
    return out


def bench_cold(res: Results, tmp: Path, reg: Any, size: int, repo: str, digest: str,
               reps: int, env: dict[str, str]) -> None:
    cm, std = [], []
    if not res.cold:
        # one untimed build first: the modules cmbuild imports (doit, pydantic, requests...) are
        # byte-compiled into the benchmark's fresh PYTHONPYCACHEPREFIX once, as an installed
        # package has them, rather than in the first timed build
        cold_cmbuild(tmp / "warm-up", registry_toml(reg.host, repo, "v1", digest), env)
    for i in range(reps):
        # alternate which goes first so that neither always finds a warmer page cache
        order = ("cm", "std") if i % 2 == 0 else ("std", "cm")
        for which in order:
            if which == "cm":
                cm.append(cold_cmbuild(tmp / f"cold-cm-{i}", registry_toml(reg.host, repo, "v1", digest), env,
                                       breakdown=(i == 0), config_reps=5 if i == 0 else 0))
                say(f"  cmbuild   {size:5d} MB rep {i + 1}: {cm[-1]['wall']:.2f} s, {cm[-1]['rss']:.0f} MB RSS "
                    f"{cm[-1]['stages']}")
            else:
                std.append(cold_standard(tmp / f"cold-std-{i}", reg.host, repo, "v1", env))
                say(f"  standard  {size:5d} MB rep {i + 1}: {std[-1]['wall']:.2f} s, {std[-1]['rss']:.0f} MB RSS "
                    f"{ {k: round(v, 2) for k, v in std[-1]['stages'].items()} }")
    res.cold.append({"size_mb": size, "cmbuild": cm, "standard": std})
    c, s = Stat([x["wall"] for x in cm]), Stat([x["wall"] for x in std])
    say(f"cold build {size} MB: cmbuild {c.fmt()}, standard tools {s.fmt()}, "
        f"ratio cmbuild/standard {c.med / s.med:.2f}")


# -------------------------------------------------------------------------------- no-op --
def bench_noop(res: Results, proj: Path, reps: int, env: dict[str, str], label: str) -> None:
    runs = []
    for _ in range(reps):
        r = must(measure(cmbuild_cmd("app"), cwd=proj, env=env), "no-op cmbuild app")
        if ran(r.err):
            raise RuntimeError(f"no-op build ran {ran(r.err)}:\n{r.out}\n{r.err}")
        runs.append(r.wall)
    res.noop.setdefault("app", {})[label] = runs
    say(f"no-op `cmbuild app` ({label}): {Stat(runs).fmt()}")


def bench_noop_parts(res: Results, proj: Path, reps: int, env: dict[str, str]) -> None:
    """Wall time of successively larger parts of a no-op run, each a median of ``reps``."""
    parts = {
        "python -c pass (interpreter start-up)": [sys.executable, "-c", "pass"],
        "+ import doit": [sys.executable, "-c", "import doit.doit_cmd"],
        "+ import cmbuild (cli, tasks, pipeline, config, pydantic...)":
            [sys.executable, "-c", "import cmbuild.cli, cmbuild.tasks"],
        "+ load cartesi.toml, make the task graph (`cmbuild list`)": cmbuild_cmd("list"),
        "+ up-to-date checks of 4 stages (`cmbuild app`)": cmbuild_cmd("app"),
    }
    out = {}
    for name, cmd in parts.items():
        out[name] = [must(measure(cmd, cwd=proj, env=env), name).wall for _ in range(reps)]
        say(f"  {name}: {Stat(out[name]).fmt()}")
    res.noop["parts"] = out


def bench_profile(res: Results, proj: Path, tmp: Path, env: dict[str, str]) -> None:
    prof = tmp / "noop.prof"
    must(measure([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "cmbuild", "app"],
                 cwd=proj, env=env), "cProfile")
    st = pstats.Stats(str(prof))
    total = st.total_tt  # type: ignore[attr-defined]
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append({"where": _short(fname, line, func), "calls": nc, "tottime": tt, "cumtime": ct,
                     "mine": "/cmbuild/" in fname and "/site-packages/" not in fname})
    mine = sorted((r for r in rows if r["mine"] and not r["where"].endswith("<module>")),
                  key=lambda r: -r["cumtime"])
    top_tt = sorted(rows, key=lambda r: -r["tottime"])[:12]
    # import time by top-level package (-X importtime, self times)
    imp = subprocess.run([sys.executable, "-X", "importtime", "-m", "cmbuild", "app"], cwd=proj, env=env,
                         capture_output=True, text=True)
    by_pkg: dict[str, float] = {}
    for line in imp.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            pkg = m.group(4).split(".")[0]
            by_pkg[pkg] = by_pkg.get(pkg, 0.0) + int(m.group(1)) / 1e6
    imports = sorted(by_pkg.items(), key=lambda kv: -kv[1])
    res.profile = {"total": total, "mine": mine[:14], "top_tottime": top_tt,
                   "imports": imports[:12], "imports_total": sum(by_pkg.values())}
    say(f"  cProfile: {total:.3f} s profiled; imports {res.profile['imports_total']:.3f} s "
        f"(top: {', '.join(f'{k} {v * 1000:.0f} ms' for k, v in imports[:6])})")
    for r in mine[:8]:
        say(f"    {r['cumtime'] * 1000:7.1f} ms cum  {r['calls']:5d} calls  {r['where']}")


def _short(fname: str, line: int, func: str) -> str:
    if fname == "~":
        return func
    p = Path(fname)
    parts = p.parts
    for anchor in ("cmbuild", "doit", "pydantic", "pydantic_core"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[i:])}:{line} {func}"
    return f"{p.name}:{line} {func}"


# -------------------------------------------------------------------------- incremental --
def bench_incremental(res: Results, tmp: Path, reg: Any, repo: str, layout: Path,
                      writer: imagegen.LayoutWriter, layers: list[imagegen.Layer], base_digest: str,
                      size: int, reps: int, env: dict[str, str]) -> Path:
    """Builds a project on the base image, then changes one thing at a time; returns the project."""
    proj = write_project(tmp / "incr", registry_toml(reg.host, repo, "v1", base_digest), cache=tmp / "incr-cache")
    must(measure(cmbuild_cmd("app"), cwd=proj, env=env), "incremental: first build")

    def step(what: str, image_toml: str, env_value: str = "bench") -> dict[str, Any]:
        write_project(proj, image_toml, env_value=env_value, cache=tmp / "incr-cache")
        r = must(measure(cmbuild_cmd("app"), cwd=proj, env=env), what)
        return {"wall": r.wall, "ran": ran(r.err), "uptodate": uptodate(r.err), "stages": stage_times(r.err),
                "verbs": stage_verbs(r.err), "rss": r.rss_mb}

    cases: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "(a1) same image under a new tag (same manifest digest)",
        "(a2) new config, same layers (only its `created` time differs)",
        "(a3) new config, same layers (a label added: it becomes an annotation in config.json)",
        "(b) one [machine] env value changed",
        f"(c) a new 1 MB top layer on the {size} MB image")}
        # each repetition uses a value never built before, else the store would just restore it
    names = list(cases)
    current = registry_toml(reg.host, repo, "v1", base_digest)
    base = registry_toml(reg.host, repo, "v1", base_digest)
    for i in range(reps):
        if i:
            step("back to the base image", base)   # every change starts from the base image
        retag(reg, repo, "v1", f"retag{i}", env)
        cases[names[0]].append(step(names[0], registry_toml(reg.host, repo, f"retag{i}", base_digest)))
        d = writer.add_image(f"rebuilt{i}", layers, created=f"2026-01-0{i + 1}T00:00:00Z")
        push(reg, layout, f"rebuilt{i}", repo, env)
        cases[names[1]].append(step(names[1], registry_toml(reg.host, repo, f"rebuilt{i}", d)))
        d = writer.add_image(f"relabel{i}", layers, label=f"rep {i}")
        push(reg, layout, f"relabel{i}", repo, env)
        current = registry_toml(reg.host, repo, f"relabel{i}", d)
        cases[names[2]].append(step(names[2], current))
        cases[names[3]].append(step(names[3], current, env_value=f"changed {i}"))
        top = writer.add_layer(100 + i, 1_000_000, seed=7)
        d = writer.add_image(f"top{i}", layers + [top])
        push(reg, layout, f"top{i}", repo, env)
        cases[names[4]].append(step(names[4], registry_toml(reg.host, repo, f"top{i}", d)))
    for name, runs in cases.items():
        if not runs:
            continue
        res.incremental.append({"case": name, "runs": runs})
        say(f"  {name}: ran {runs[-1]['ran']}, up to date {runs[-1]['uptodate']}, "
            f"wall {Stat([r['wall'] for r in runs]).fmt()}, stages {runs[-1]['stages']}")
    write_project(proj, registry_toml(reg.host, repo, "v1", base_digest), cache=tmp / "incr-cache")
    must(measure(cmbuild_cmd("app"), cwd=proj, env=env), "incremental: back to the base image")
    return proj


def bench_tool_versions(res: Results, env: dict[str, str]) -> None:
    """What update_lock's tool_versions() costs (it runs in every build that runs a stage)."""
    code = ("import time; from cmbuild.tasks import tool_versions; t=time.perf_counter(); "
            "tool_versions('qemu'); print(time.perf_counter()-t)")
    vals = [float(must(measure([sys.executable, "-c", code], env=env), "tool_versions").out.strip())
            for _ in range(3)]
    res.noop["tool_versions"] = vals
    say(f"  tool_versions() (5 tool --version subprocesses, once per build that runs a stage): {Stat(vals).fmt()}")


# ---------------------------------------------------------------------------------- main --
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="50 and 300 MB only, fewer repetitions")
    ap.add_argument("--sizes", type=int, nargs="+", help="image sizes in MB (default 50 300 1000; quick 50 300)")
    ap.add_argument("--reps", type=int, help="repetitions of each cold build (default 3; quick 2)")
    ap.add_argument("--noop-reps", type=int, help="repetitions of each no-op run (default 10; quick 5)")
    ap.add_argument("--incr-reps", type=int, help="repetitions of each incremental change (default 3; quick 1)")
    ap.add_argument("--machine-reps", type=int, help="runs per compression inside the machine (default 3; quick 1)")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--skip", nargs="*", default=[], choices=["noop", "incremental", "cold", "inside"])
    ap.add_argument("--store", type=Path, help="a cmbuild store to reuse for the runtime/kernel stages "
                    "(section 5), so that pinned Debian packages are not downloaded again")
    ap.add_argument("--out", type=Path, default=DOCS / "benchmarks.md")
    ap.add_argument("--json", type=Path, help="also write the raw figures here")
    ap.add_argument("--reuse", type=Path, help="a --json file of an earlier run: the sections skipped "
                    "with --skip take their figures from it (to re-measure one section)")
    ap.add_argument("--rusage-wrap", nargs=1, help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rusage_wrap:
        return rusage_wrap(a.rusage_wrap[0], a.rest)
    sizes = a.sizes or ([50, 300] if a.quick else [50, 300, 1000])
    reps = a.reps or (2 if a.quick else 3)
    noop_reps = a.noop_reps or (5 if a.quick else 10)
    incr_reps = a.incr_reps or (1 if a.quick else 3)
    machine_reps = a.machine_reps or (1 if a.quick else 3)
    incr_size = 300 if 300 in sizes else max(sizes)

    t_start = time.perf_counter()
    res = Results(machine_info(), {"quick": a.quick, "sizes": sizes, "reps": reps, "noop_reps": noop_reps,
                                   "incr_reps": incr_reps, "machine_reps": machine_reps, "layers": a.layers})
    m = res.machine
    say(f"machine: {m['cores']} cores, {m['cpu']}, {m['ram']} RAM; python {m['python']}")
    with tempfile.TemporaryDirectory(prefix="cmbuild-bench-") as tmp_s:
        tmp = Path(tmp_s)
        env = cm_env(tmp / "home")
        # fill the bytecode cache first, as an installed package has it, so that the first
        # timed run does not also compile cmbuild
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "cmbuild")], env=env,
                       capture_output=True, check=False)
        with registry(tmp / "registry") as reg:
            for size in sizes if {"cold", "incremental", "noop"} - set(a.skip) else []:
                say(f"\n== image of {size} MB in {a.layers} layers")
                t0 = time.perf_counter()
                layout = tmp / f"layout-{size}"
                writer, layers, digest = imagegen.make_image(layout, size, a.layers, seed=size)
                repo = f"bench/img{size}"
                push(reg, layout, "v1", repo, env)
                res.images[size] = {"layers": len(layers), "raw": sum(x.raw_size for x in layers),
                                    "compressed": sum(x.size for x in layers)}
                say(f"  generated and pushed in {time.perf_counter() - t0:.1f} s: "
                    f"{res.images[size]['raw'] / 1e6:.0f} MB of layer tar, "
                    f"{res.images[size]['compressed'] / 1e6:.0f} MB gzip")
                if "cold" not in a.skip:
                    bench_cold(res, tmp, reg, size, repo, digest, reps, env)
                if size == incr_size:
                    if "incremental" not in a.skip or "noop" not in a.skip:
                        say(f"\n== incrementality on the {size} MB image")
                        proj = bench_incremental(res, tmp, reg, repo, layout, writer, layers, digest, size,
                                                 incr_reps if "incremental" not in a.skip else 0, env)
                        if "noop" not in a.skip:
                            say("\n== no-op rebuild")
                            bench_noop(res, proj, noop_reps, env, f"{size} MB image from the registry")
                            example = write_project(tmp / "example", 'path = "{}"\nref = "latest"'.format(
                                REPO / "examples" / "hello" / "image"), cache=tmp / "example-cache")
                            must(measure(cmbuild_cmd("app"), cwd=example, env=env), "example build")
                            bench_noop(res, example, noop_reps, env, "example image (OCI layout)")
                            nocache = {k: v for k, v in env.items() if k != "PYTHONPYCACHEPREFIX"}
                            nocache["PYTHONDONTWRITEBYTECODE"] = "1"
                            bench_noop(res, proj, noop_reps, nocache,
                                       f"{size} MB image, no bytecode cache (PYTHONDONTWRITEBYTECODE=1)")
                            bench_noop_parts(res, proj, noop_reps, env)
                            bench_profile(res, proj, tmp, env)
                            bench_tool_versions(res, env)
                        shutil.rmtree(tmp / "incr", ignore_errors=True)
                        shutil.rmtree(tmp / "incr-cache", ignore_errors=True)
                shutil.rmtree(layout)
                # the registry's copy of this image is not needed any more: free the disk
                shutil.rmtree(tmp / "registry" / "data" / "docker" / "registry" / "v2" / "repositories" / repo,
                              ignore_errors=True)
                shutil.rmtree(tmp / "registry" / "data" / "docker" / "registry" / "v2" / "blobs", ignore_errors=True)
        if "inside" not in a.skip:
            say("\n== inside the machine")
            res.inside = inside.bench_inside(tmp / "inside", env, machine_reps, a.store, noop_reps, say,
                                             measure, cmbuild_cmd, stage_times, ran)
    res.seconds = time.perf_counter() - t_start
    if a.reuse:
        old = json.loads(a.reuse.read_text())
        sections = {"noop": ("noop", "profile"), "incremental": ("incremental",), "cold": ("cold", "images"),
                    "inside": ("inside",)}
        for skipped in a.skip:
            for name in sections[skipped]:
                setattr(res, name, old[name])
        res.images = {int(k): v for k, v in res.images.items()}
        res.args = old["args"]
        res.seconds = old["seconds"]
        say(f"figures of {', '.join(a.skip)} taken from the earlier run")
    say(f"\nbenchmark took {res.seconds / 60:.1f} min")
    import report
    report.write(res, a.out)
    say(f"wrote {a.out.relative_to(REPO) if a.out.is_relative_to(REPO) else a.out}")
    if a.json:
        a.json.write_text(json.dumps(_plain(res), indent=1, default=str))
    return 0


def _plain(res: Results) -> dict[str, Any]:
    from dataclasses import asdict
    return asdict(res)


if __name__ == "__main__":
    sys.exit(main())
