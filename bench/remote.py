#!/usr/bin/env python3
"""Benchmark (not a test): a cold build that finds a warm remote stage cache, against the same
build from scratch.

For each case, three "machines" (project folders with stores of their own) build the same
project: A from scratch with pushing on (it fills the remote), B with an empty store and the
warm remote (it should download, not build), C with an empty store and no remote (the
baseline). Wall time and the bytes that crossed the network (counted by TCP relays in front of
the registry: one for the image's source, one for the remote cache) are printed as a markdown
table on standard output; progress goes to standard error.

Cases: the example (examples/hello, an OCI layout on disk) up to ``snapshot`` when
``cartesi-machine`` and its kernel are installed (else up to ``build``), and a generated image of
300 MB in 8 layers pulled from a registry on loopback, up to ``app`` (its content does not run).

    eval "$(../shared/cartesi-machine/setup)"; python3 bench/remote.py [--reps N] [--size MB]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO / "tests"))

import imagegen  # noqa: E402
from run import cm_env, push, registry  # noqa: E402

EXAMPLE = REPO / "examples" / "hello" / "image"
LINE = re.compile(r"^cmbuild: ([\w-]+): (built|restored|downloaded from \S+|found on \S+) ", re.M)


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Relay:
    """A TCP relay on 127.0.0.1 to ``port`` that counts the bytes each way."""

    def __init__(self, port: int):
        self.upstream = port
        self.sent = 0       # client -> server
        self.received = 0   # server -> client
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.sent = self.received = 0

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pump, args=(c, u, "sent"), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, "received"), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, count: str) -> None:
        try:
            while True:
                data = a.recv(1 << 16)
                if not data:
                    break
                b.sendall(data)
                with self.lock:
                    setattr(self, count, getattr(self, count) + len(data))
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def has_cm() -> bool:
    kernel = Path(os.environ.get("CARTESI_IMAGES_PATH", "/nonexistent")) / "linux.bin"
    return bool(shutil.which("cartesi-machine")) and kernel.is_file()


def write_project(proj: Path, image_toml: str, cache: Path, remote: str | None, push_on: bool,
                  cartesi: bool) -> Path:
    proj.mkdir(parents=True)
    machine = 'backend = "qemu"\n'
    if cartesi:
        kernel = Path(os.environ["CARTESI_IMAGES_PATH"]) / "linux.bin"
        machine = f'backend = "cartesi"\nram_image = "{kernel}"\n'
    cache_t = f'dir = "{cache}"\n'
    if remote:
        cache_t += f'remote = "{remote}"\npush = {"true" if push_on else "false"}\n'
    (proj / "cartesi.toml").write_text(f"[image]\n{image_toml}\n\n[machine]\n{machine}\n[cache]\n{cache_t}")
    return proj


def build(work: Path, name: str, image_toml: str, target: str, remote: str | None, push_on: bool,
          cartesi: bool, env: dict[str, str], relays: list[Relay]) -> dict[str, Any]:
    for r in relays:
        r.reset()
    proj = write_project(work / name / "proj", image_toml, work / name / "cache", remote, push_on, cartesi)
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "cmbuild", target], cwd=proj, env=env,
                       capture_output=True, text=True, timeout=3600)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"bench: cmbuild {target} ({name}) failed:\n{p.stderr[-3000:]}")
    verbs: dict[str, str] = {}
    for m in LINE.finditer(p.stderr):
        verbs[m.group(1)] = {"found": "found, not downloaded"}.get(m.group(2).split(" ")[0],
                                                                    m.group(2).split(" ")[0])
    out = {"wall": wall, "verbs": verbs, "bytes": [(r.sent, r.received) for r in relays],
           "root": (proj / ".cartesi" / "image" / "hash").read_bytes().hex()
           if (proj / ".cartesi" / "image" / "hash").exists() else ""}
    shutil.rmtree(work / name)
    return out


def summary(verbs: dict[str, str]) -> str:
    by: dict[str, list[str]] = {}
    for stage, v in sorted(verbs.items()):
        by.setdefault(v, []).append(stage)
    return "; ".join(f"{v}: {', '.join(s)}" for v, s in sorted(by.items()))


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def case(work: Path, label: str, image_toml: str, target: str, cartesi: bool, reps: int,
         env: dict[str, str], img: Relay, cache: Relay, repo: str) -> list[str]:
    remote = f"{cache.host}/{repo}"
    say(f"{label}: A, from scratch, pushing")
    a = build(work, "a", image_toml, target, remote, True, cartesi, env, [img, cache])
    bs, cs = [], []
    for i in range(reps):
        say(f"{label}: B{i + 1}, empty store, warm remote")
        bs.append(build(work, f"b{i}", image_toml, target, remote, False, cartesi, env, [img, cache]))
        say(f"{label}: C{i + 1}, empty store, no remote")
        cs.append(build(work, f"c{i}", image_toml, target, None, False, cartesi, env, [img, cache]))
    b_wall = statistics.median(x["wall"] for x in bs)
    c_wall = statistics.median(x["wall"] for x in cs)
    b, c = bs[0], cs[0]
    rows = [
        f"| {label}: A, from scratch, pushing | {a['wall']:.1f} s | {mb(a['bytes'][0][1])} | "
        f"{mb(a['bytes'][1][0])} sent | {summary(a['verbs'])} |",
        f"| {label}: B, empty store, warm remote | **{b_wall:.1f} s** | {mb(b['bytes'][0][1])} | "
        f"{mb(b['bytes'][1][1])} received | {summary(b['verbs'])} |",
        f"| {label}: C, empty store, no remote | {c_wall:.1f} s | {mb(c['bytes'][0][1])} | — | "
        f"{summary(c['verbs'])} |",
    ]
    say(f"{label}: A {a['wall']:.1f} s, B {b_wall:.1f} s, C {c_wall:.1f} s "
        f"(B/C {b_wall / c_wall:.2f})")
    for x in rows:
        say("  " + x)
    if a["root"] and not (a["root"] == b["root"] == c["root"]):
        sys.exit(f"bench: root hashes differ: {a['root']} {b['root']} {c['root']}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2, help="runs of B and C (the median is shown)")
    ap.add_argument("--size", type=int, default=300, help="size of the generated image, MB")
    args = ap.parse_args()
    cartesi = has_cm()
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="cmbuild-bench-remote-") as t:
        tmp = Path(t)
        env = cm_env(tmp / "home")
        with registry(tmp / "registry") as reg:
            port = int(reg.host.rsplit(":", 1)[1])
            img, cache = Relay(port), Relay(port)
            target = "snapshot" if cartesi else "build"
            rows += case(tmp / "example", f"example, `{target}`", f'path = "{EXAMPLE}"\nref = "latest"',
                         target, cartesi, args.reps, env, img, cache, "cache/example")
            say(f"generating a {args.size} MB image")
            layout = tmp / "layout"
            _, _, digest = imagegen.make_image(layout, args.size)
            push(reg, layout, "v1", "bench/big", env)
            shutil.rmtree(layout)
            rows += case(tmp / "big", f"{args.size} MB image, `app`",
                         f'ref = "{img.host}/bench/big:v1"\ndigest = "{digest}"', "app", False,
                         args.reps, env, img, cache, "cache/big")
            img.close()
            cache.close()
    print("| build | wall | from the image's registry | remote cache | stages |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
