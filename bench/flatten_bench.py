"""Benchmark of the layer flattener (not a test).

Generates an image of about 300 MB in 8 gzip layers (many small files, some large ones,
whiteouts, an opaque directory, hardlinks) in a temporary directory, flattens it, and prints
the throughput and the peak RSS.

    python bench/flatten_bench.py [--size-mb 300] [--layers 8] [--zstd] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import random
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmbuild.oci.flatten import LayerInput, flatten  # noqa: E402


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE,
         link: str = "", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, 1_700_000_000
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def make_layer(index: int, size: int, rng: random.Random) -> bytes:
    """One layer of about ``size`` bytes: 80% in large files, the rest in small ones."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"usr/lib/l{index}", kind=tarfile.DIRTYPE, mode=0o755)
        big_left = size * 8 // 10
        n = 0
        while big_left > 0:
            chunk = min(big_left, rng.randrange(2 << 20, 12 << 20))
            # half random, half text: realistic compression ratio
            data = os.urandom(chunk // 2) + (b"lorem ipsum dolor sit amet " * (chunk // 54 + 1))[:chunk - chunk // 2]
            _add(tar, f"usr/lib/l{index}/big{n}.so", data, mode=0o755)
            big_left -= chunk
            n += 1
        small_left = size - size * 8 // 10
        n = 0
        while small_left > 0:
            chunk = rng.randrange(200, 16_000)
            data = (f"# file {index}/{n}\n".encode() + os.urandom(chunk // 4).hex().encode())[:chunk]
            _add(tar, f"usr/share/l{index % 3}/d{n % 50}/f{index}_{n}.txt", data)
            small_left -= chunk
            n += 1
        if index > 0:
            _add(tar, f"usr/lib/l{index - 1}/.wh.big0.so", b"")
            _add(tar, f"usr/share/l{(index - 1) % 3}/d7/.wh..wh..opq", b"")
            _add(tar, f"usr/bin/link{index}", kind=tarfile.LNKTYPE, link=f"usr/lib/l{index}/big0.so")
            _add(tar, f"usr/bin/sym{index}", kind=tarfile.SYMTYPE, link=f"../lib/l{index}/big0.so")
    return buf.getvalue()


def run(tmp: Path, keep: Path | None) -> None:
    """Flatten the layers in ``tmp`` (listed in ``tmp/layers``): runs in a fresh process so that
    the peak RSS is the flattener's own."""
    inputs = [LayerInput(tmp / line.split(":")[1], line)
              for line in (tmp / "layers").read_text().split()]
    total = int((tmp / "total").read_text())
    scratch = tmp / "scratch"
    scratch.mkdir()
    out_path = keep or tmp / "out.tar"
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with open(out_path, "wb") as out:
        stats = flatten(inputs, out, scratch=scratch)
    elapsed = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"flatten: {elapsed:.2f} s, {total / 1e6 / elapsed:.0f} MB/s of layer tar, "
          f"{stats.entries} entries, {stats.files} files, {stats.bytes / 1e6:.0f} MB of content, "
          f"{stats.tar_size / 1e6:.0f} MB tar")
    print(f"peak RSS: {rss / 1024:.0f} MB (interpreter and imports: {rss_start / 1024:.0f} MB)")


def generate(tmp: Path, size_mb: int, layers: int, zstd: bool) -> None:
    rng = random.Random(42)
    t0 = time.perf_counter()
    digests, total = [], 0
    for i in range(layers):
        tar = make_layer(i, size_mb * (1 << 20) // layers, rng)
        total += len(tar)
        blob = (zstandard.ZstdCompressor(level=1).compress(tar) if zstd
                else gzip.compress(tar, compresslevel=1, mtime=0))
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        (tmp / digest.split(":")[1]).write_bytes(blob)
        digests.append(digest)
    (tmp / "layers").write_text("\n".join(digests))
    (tmp / "total").write_text(str(total))
    compressed = sum((tmp / d.split(":")[1]).stat().st_size for d in digests)
    print(f"generated {len(digests)} {'zstd' if zstd else 'gzip'} layers, "
          f"{total / 1e6:.0f} MB uncompressed, {compressed / 1e6:.0f} MB compressed, "
          f"in {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--zstd", action="store_true", help="compress layers with zstd")
    parser.add_argument("--keep", type=Path, help="write the output tar here")
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run(args.run, args.keep)
        return
    if args.generate:
        generate(args.generate, args.size_mb, args.layers, args.zstd)
        return
    # Generation and flattening each run in a fresh process: ru_maxrss survives exec, so
    # this small parent keeps the flattener's figure honest.
    with tempfile.TemporaryDirectory(prefix="flatten-bench-") as tmp:
        gen = [sys.executable, __file__, "--generate", tmp, "--size-mb", str(args.size_mb),
               "--layers", str(args.layers)] + (["--zstd"] if args.zstd else [])
        subprocess.run(gen, check=True)
        cmd = [sys.executable, __file__, "--run", tmp]
        if args.keep:
            cmd += ["--keep", str(args.keep)]
        subprocess.run(cmd, check=True)


if __name__ == "__main__":
    main()
