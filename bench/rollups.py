#!/usr/bin/env python3
"""Benchmark (not a test): what a rollups input costs inside the real Cartesi machine.

Builds the echo example (examples/echo: Python, standard library only, no Cartesi package in the
image; the runtime layer's built-in rollups server answers it), takes its template snapshot,
then sends inputs through ``cmbuild advance`` / ``cmbuild inspect`` and prints, as markdown
tables on standard output: the cycles of the template (boot to the first input), of an advance
with an empty payload, with an echo of 1 KiB and 64 KiB (each a notice, a voucher and a report),
of a rejected advance and of an inspect; and the built-in server's size in the runtime layer.
Cycle counts are deterministic: each figure is one run. Progress goes to standard error.

    eval "$(../shared/cartesi-machine/setup)"; python3 bench/rollups.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def cmbuild(proj: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CMBUILD_CONFIG"}
    p = subprocess.run([sys.executable, "-m", "cmbuild", *args], cwd=proj, capture_output=True,
                       text=True, timeout=1800, env=env)
    return p


def main() -> int:
    kernel = Path(os.environ.get("CARTESI_IMAGES_PATH", "")) / "linux.bin"
    if shutil.which("cartesi-machine") is None or not kernel.is_file():
        print("bench/rollups.py needs cartesi-machine on PATH and $CARTESI_IMAGES_PATH/linux.bin "
              "(eval \"$(../shared/cartesi-machine/setup)\")", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-rollups-") as t:
        tmp = Path(t)
        say("building the echo image")
        image = tmp / "image"
        subprocess.run([sys.executable, str(REPO / "examples/echo/build.py"), str(image), "--store",
                        str(tmp / "debs")], check=True, capture_output=True)
        proj = tmp / "proj"
        proj.mkdir()
        (proj / "cartesi.toml").write_text(
            f'[image]\npath = "{image}"\nref = "latest"\n\n[rollups]\n\n[machine]\nbackend = "cartesi"\n'
            f'ram_image = "{kernel}"\ntimeout = 1800\n')
        say("template snapshot")
        p = cmbuild(proj, "snapshot")
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            return 1
        template = int([ln for ln in p.stderr.splitlines() if ln.startswith("Cycles: ")][-1].split()[1])
        rows = []
        big = tmp / "64k.bin"
        big.write_bytes(bytes(range(256)) * 256)
        for what, args in [
            ("advance, empty payload (a notice, a voucher and a report, all empty)", ["advance", "--hex", "0x"]),
            ("advance, 1 KiB echoed", ["advance", "--hex", "0x" + "ab" * 1024]),
            ("advance, 64 KiB echoed", ["advance", "--file", str(big)]),
            ("advance, rejected (no outputs; rolled back)", ["advance", "--text", "reject"]),
            ("inspect, 1 KiB (a report)", ["inspect", "--hex", "0x" + "ef" * 1024]),
        ]:
            say(what)
            r = cmbuild(proj, *args, "--json")
            if r.returncode not in (0, 1):
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            doc = json.loads(r.stdout)
            rows.append((what, doc["status"], doc["cycles"]))
        listing = subprocess.run(["unsquashfs", "-lls", str(proj / ".cartesi/root.sqfs")],
                                 capture_output=True, text=True, check=True).stdout
        size = int(next(ln.split()[2] for ln in listing.splitlines() if ln.endswith("/usr/sbin/rollups")))
        layer = (proj / ".cartesi/root.sqfs").stat().st_size
    version = subprocess.run(["cartesi-machine", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"Machine: {version}, RAM 128 MiB; the echo example (Python 3.13, examples/echo).\n")
    print("| what | result | cycles |\n|---|---|---|")
    print(f"| template: boot, the server, Python's start, up to the first `/finish` | rx-accepted | {template:,} |")
    for what, status, cycles in rows:
        print(f"| {what} | {status} | {cycles:,} |")
    print(f"\nThe built-in rollups server, `/usr/sbin/rollups`: {size:,} bytes, in a runtime layer of "
          f"{layer / 1e6:.2f} MB.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
