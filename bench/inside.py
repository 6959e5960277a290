"""Section 5 of the benchmarks: the runtime layer per compression, and what it costs inside the
machine (QEMU: console milestones timed on the host; cartesi-machine, when installed: cycles).

QEMU here is TCG (no RISC-V hardware), so its seconds are an emulator's seconds: they compare
compressions with one another, not with real hardware. The Cartesi machine's cycle counts are
deterministic and are the figure that matters on-chain.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello" / "image"
COMPRESSIONS = ("none", "lz4", "zstd", "xz")
CYCLES = re.compile(r"^Cycles: (\d+)", re.M)
PRINTK = re.compile(r"^\[\s*(\d+\.\d+)\]")


def project(root: Path, compression: str, store: Path, backend: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    backend_line = f'backend = "{backend}"\n' if backend else ""
    (root / "cartesi.toml").write_text(
        f'[image]\npath = "{EXAMPLE}"\nref = "latest"\n\n[runtime]\ncompression = "{compression}"\n\n'
        f'[machine]\n{backend_line}env = {{ GREETING = "bench" }}\n\n[cache]\ndir = "{store}"\n')
    return root


def timed_lines(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> tuple[int, float, list[tuple[float, str, str]]]:
    """Run ``cmd``; every line of its stdout and stderr with the host time (s since start) it came."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    pending = {"out": b"", "err": b""}
    for f, name in ((p.stdout, "out"), (p.stderr, "err")):
        assert f is not None
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ, name)
    lines: list[tuple[float, str, str]] = []
    open_ = 2
    while open_:
        if time.monotonic() - t0 > timeout:
            p.kill()
            break
        for key, _ in sel.select(timeout=1.0):
            chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
            now = time.monotonic() - t0
            if not chunk:
                sel.unregister(key.fileobj)
                open_ -= 1
                continue
            buf = pending[key.data] + chunk
            *done, pending[key.data] = buf.split(b"\n")
            lines += [(now, key.data, x.decode("utf-8", "replace").rstrip("\r")) for x in done]
    for name, rest in pending.items():
        if rest:
            lines.append((time.monotonic() - t0, name, rest.decode("utf-8", "replace")))
    rc = p.wait()
    return rc, time.monotonic() - t0, lines


def milestones(lines: list[tuple[float, str, str]]) -> dict[str, float]:
    """Host times (s since ``cmbuild run`` started) of: the machine started (cmbuild names the
    backend just before it starts QEMU), OpenSBI's banner if it shows, the init's first message (root
    mounted, about to start crun), the container's first line, the init's exit-code line."""
    out: dict[str, float] = {}
    # standard output is the machine's console alone (doit's and cmbuild's lines are on
    # standard error); the machine starts just after cmbuild names the backend the last time
    # (`build` says it, then `boot`, right before it starts the machine)
    starts = [t for t, src, text in lines if src == "err" and text.startswith("cmbuild: backend:")]
    start = starts[-1] if starts else None
    for t, src, text in lines:
        if src == "err":
            continue
        if "firmware" not in out and "OpenSBI" in text:
            out["firmware"] = t
        if text.startswith("cmbuild: exit-code"):
            out["container exited"] = t
        elif text.startswith("cmbuild: "):
            out.setdefault("init ready", t)
        elif "init ready" in out and text.strip() and not PRINTK.match(text):
            out.setdefault("container output", t)
    if start is not None:
        out["machine started"] = start
    return out


def bench_inside(tmp: Path, env: dict[str, str], reps: int, store: Path | None, noop_reps: int,
                 say: Callable[[str], None], measure: Callable[..., Any], cmbuild_cmd: Callable[..., list[str]],
                 stage_times: Callable[[str], dict[str, float]], ran: Callable[[str], list[str]]) -> dict[str, Any]:
    tmp.mkdir(parents=True, exist_ok=True)
    store = store or tmp / "store"
    res: dict[str, Any] = {"runtime": {}, "qemu": {}, "cartesi": {}, "notes": []}

    # warm-up: init and the pinned Debian packages (downloaded once into the store W); each
    # compression is then built in a fresh store that holds W's objects (hard links) but no
    # stage keys, so that each measured build is a real build without a download
    warm = project(tmp / "warm", "none", store)
    r = measure(cmbuild_cmd("runtime"), cwd=warm, env=env)
    if r.rc != 0:
        res["notes"].append("the runtime stage failed here: " + (r.err.strip().splitlines() or ["?"])[-1])
        say("  " + res["notes"][-1])
        return res
    for comp in COMPRESSIONS:
        fresh = tmp / f"store-{comp}"
        for sub in ("objects", "apt"):
            if (store / sub).is_dir():
                shutil.copytree(store / sub, fresh / sub, copy_function=os.link)
        proj = project(tmp / f"rt-{comp}", comp, fresh)
        r = measure(cmbuild_cmd("runtime"), cwd=proj, env=env)
        if r.rc != 0:
            res["notes"].append(f"runtime ({comp}) failed: " + (r.err.strip().splitlines() or ["?"])[-1])
            continue
        st = stage_times(r.err)
        size = (proj / ".cartesi" / "root.sqfs").stat().st_size
        res["runtime"][comp] = {"size": size, "build": st.get("runtime"), "wall": r.wall,
                                "built": "runtime" in ran(r.out)}
        say(f"  runtime layer {comp:5s}: {size / 1e6:.2f} MB, stage {st.get('runtime', 'cached')} s, "
            f"wall {r.wall:.2f} s")
        shutil.rmtree(fresh)
        shutil.rmtree(tmp / f"rt-{comp}")

    # QEMU: does `cmbuild build` (kernel included) work here?
    first = project(tmp / "none", "none", store)
    r = measure(cmbuild_cmd("build"), cwd=first, env=env, timeout=1800)
    if r.rc != 0:
        why = (r.err.strip().splitlines() or r.out.strip().splitlines() or ["?"])[-1]
        res["notes"].append(f"`cmbuild build` does not work in this checkout yet, so nothing ran under "
                            f"QEMU: {why}")
        say("  " + res["notes"][-1])
    else:
        noop = [measure(cmbuild_cmd("build"), cwd=first, env=env).wall for _ in range(noop_reps)]
        res["noop_build"] = noop
        say(f"  no-op `cmbuild build`: median {statistics.median(noop):.2f} s")
        for comp in COMPRESSIONS:
            proj = project(tmp / comp, comp, store)
            if measure(cmbuild_cmd("build"), cwd=proj, env=env, timeout=1800).rc != 0:
                continue
            runs = []
            for _ in range(reps):
                rc, wall, lines = timed_lines(cmbuild_cmd("run"), proj, env)
                ms = milestones(lines)
                ms["end"] = wall
                runs.append({"rc": rc, "milestones": ms})
                if rc != 0:
                    tail = " | ".join(x[2] for x in lines[-4:])
                    res["notes"].append(f"`cmbuild run` ({comp}) exited {rc}: {tail}")
                    break
            res["qemu"][comp] = runs
            say(f"  qemu {comp:5s}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1]["milestones"].items()))

    # cartesi-machine: cycle counts (deterministic: one run each)
    if shutil.which("cartesi-machine"):
        for comp in COMPRESSIONS:
            proj = project(tmp / f"cm-{comp}", comp, store, backend="cartesi")
            r = measure(cmbuild_cmd("run"), cwd=proj, env=env, timeout=1800)
            m = CYCLES.search(r.out + "\n" + r.err)
            res["cartesi"][comp] = {"rc": r.rc, "cycles": int(m.group(1)) if m else None, "wall": r.wall}
            say(f"  cartesi-machine {comp}: {res['cartesi'][comp]}")
        # baseline: Cartesi's own init running one command (default images of the installation)
        r = measure(["cartesi-machine", "--", "true"], timeout=900)
        m = CYCLES.search(r.out + "\n" + r.err)
        res["cartesi"]["baseline"] = {"rc": r.rc, "cycles": int(m.group(1)) if m else None, "wall": r.wall}
    else:
        res["notes"].append("cartesi-machine is not installed here: the cycle counts were not measured "
                            "(the code path in bench/inside.py runs when it is on PATH)")
    return res
