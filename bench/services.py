#!/usr/bin/env python3
"""Benchmark (not a test): what one service ([services.<name>]) adds to a run inside the real
Cartesi machine: cycles from boot to the machine's end, and the memory in use when the app runs.

The app is the example image running a shell that prints MemAvailable (/proc/meminfo) and exits.
Cases: no service; busybox httpd from the app's own image (one drive), ready on a port; the same
httpd from a minimal busybox image (its own drive); redis-server from Debian (tests/redis). Every
service is stopped when the app ends (SIGTERM; httpd, PID 1 of its namespace with no handler,
is killed after its stop_timeout, 3 s by default). Cycle counts are deterministic: one run each. Prints a
markdown table on standard output, progress on standard error.

    eval "$(../shared/cartesi-machine/setup)"; python3 bench/services.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "hello" / "image"
BB = "/usr/bin/busybox"
APP = "busybox grep MemAvailable /proc/meminfo"
HTTPD = "mkdir -p /tmp/www && echo hi > /tmp/www/i && exec busybox httpd -f -p 127.0.0.1:8080 -h /tmp/www"


def say(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(work: Path, name: str, services: str, cache: Path) -> dict[str, int]:
    kernel = Path(os.environ["CARTESI_IMAGES_PATH"]) / "linux.bin"
    proj = work / name
    proj.mkdir()
    (proj / "cartesi.toml").write_text(
        f'[image]\npath = "{EXAMPLE}"\nref = "latest"\n\n[machine]\nbackend = "cartesi"\n'
        f'ram_image = "{kernel}"\nentrypoint = {json.dumps([BB, "sh", "-c", APP])}\n\n'
        f'[cache]\ndir = "{cache}"\n\n{services}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("CMBUILD_")}
    p = subprocess.run([sys.executable, "-m", "cmbuild", "run"], cwd=proj, capture_output=True,
                       text=True, timeout=1800, env=env)
    if p.returncode != 0:
        sys.exit(f"bench: {name} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    cycles = int(re.search(r"cmbuild: cycles: (\d+)", p.stderr).group(1))
    avail = int(re.search(r"MemAvailable:\s+(\d+) kB", p.stdout).group(1))
    return {"cycles": cycles, "avail_kb": avail}


def main() -> int:
    sys.path.insert(0, str(REPO / "tests"))
    from ocihelpers import busybox_image, debian_busybox, scripted_image

    with tempfile.TemporaryDirectory(prefix="cmbuild-bench-services-") as t:
        tmp = Path(t)
        cache = tmp / "cache"
        busybox_image(tmp / "bbimg", debian_busybox(cache))
        say("building the redis image")
        scripted_image(REPO / "tests" / "redis" / "build.py", tmp / "redis", cache)
        cases = [
            ("no service", ""),
            ("busybox httpd, the app's image (one drive), ready_port",
             f'[services.web]\npath = "{EXAMPLE}"\nref = "latest"\nuser = "root"\n'
             f'entrypoint = {json.dumps([BB, "sh", "-c", HTTPD])}\nready_port = 8080\n'),
            ("the same, `init = true` (SIGTERM forwarded: httpd ends at once)",
             f'[services.web]\npath = "{EXAMPLE}"\nref = "latest"\nuser = "root"\n'
             f'entrypoint = {json.dumps([BB, "sh", "-c", HTTPD])}\nready_port = 8080\n'
             'init = true\n'),
            ("the same, `stop_timeout = 0` (SIGKILL right after SIGTERM)",
             f'[services.web]\npath = "{EXAMPLE}"\nref = "latest"\nuser = "root"\n'
             f'entrypoint = {json.dumps([BB, "sh", "-c", HTTPD])}\nready_port = 8080\n'
             'stop_timeout = 0\n'),
            ("busybox httpd, its own minimal image (a second drive), `stop_timeout = 0`",
             f'[services.web]\npath = "{tmp / "bbimg"}"\nref = "latest"\n'
             f'entrypoint = {json.dumps(["/bin/sh", "-c", HTTPD])}\nready_port = 8080\n'
             'stop_timeout = 0\n'),
            ("redis-server 8 from Debian (its own image), ready_port",
             f'[services.redis]\npath = "{tmp / "redis"}"\nref = "latest"\nready_port = 6379\n'),
        ]
        rows = []
        base = None
        (tmp / "runs").mkdir()
        for i, (label, services) in enumerate(cases):
            say(label)
            r = run(tmp / "runs", f"case-{i}", services, cache)
            base = base or r
            rows.append(f"| {label} | {r['cycles']:,} | {r['cycles'] - base['cycles']:+,} | "
                        f"{r['avail_kb'] / 1024:.1f} MiB | {(base['avail_kb'] - r['avail_kb']) / 1024:+.1f} MiB |")
            say(rows[-1])
    print("| run (app: print MemAvailable, exit) | cycles, boot to end | added | MemAvailable in the app | memory the service holds |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
