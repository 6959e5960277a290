"""Build a small linux/riscv64 OCI image of Redis from Debian's packages (the service of the
redis test): ``/usr/bin/redis-server`` and exactly the files of its ELF closure, from the
Debian trixie packages pinned in ``packages.toml`` (fetched with :mod:`cmbuild.debian`, checked
against their sha256), plus ``/etc/passwd``, ``/etc/group``, ``/tmp`` and ``/data``.

    python3 tests/redis/build.py OUT_DIR [--store DIR]   # writes the layout (byte-identical)
    python3 tests/redis/build.py --pin                   # re-pin packages.toml from apt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
for _path in (REPO, REPO / "examples"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import ocibuild  # noqa: E402
from ocibuild import ARCH, SUITE, Layer, Store  # noqa: E402

PACKAGES_TOML = HERE / "packages.toml"
PACKAGE_NAMES = ("redis-tools", "libc6", "libatomic1", "liblzf1", "libjemalloc2", "libstdc++6",
                 "libgcc-s1", "libsystemd0", "libcap2", "libssl3t64", "zlib1g", "libzstd1")
PROGRAM = "usr/bin/redis-check-rdb"   # redis-server is a link to it
CONFIG = {
    "Entrypoint": ["/usr/bin/redis-server"],
    "Cmd": ["--bind", "127.0.0.1", "--port", "6379", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--dir", "/data"],
    "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    "WorkingDir": "/data",
    "Labels": {"org.opencontainers.image.title": "cmbuild test: redis-server from Debian"},
}


def build(out: Path, store: Store) -> None:
    pins = ocibuild.read_pins(PACKAGES_TOML, PACKAGE_NAMES)
    with tempfile.TemporaryDirectory(prefix="redis-image-") as tmp:
        trees = ocibuild.extract(store, pins, Path(tmp))
        native = ocibuild.merge_trees([trees[n] for n in PACKAGE_NAMES], Path(tmp) / "native")
        layer = Layer("redis-server and its libraries")
        for top in ("bin", "sbin", "lib"):
            layer.symlink(top, f"usr/{top}")
        ocibuild.copy_elf_closure(layer, native, PROGRAM, where=str(PACKAGES_TOML))
        layer.symlink("usr/bin/redis-server", "redis-check-rdb")
        for name in PACKAGE_NAMES:
            layer.copy_copyright(trees[name], name)
        layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        layer.file("etc/group", b"root:x:0:\n")
        layer.dir("tmp", 0o1777)
        layer.dir("data", 0o755)
        for mnt, mode in (("dev", 0o755), ("proc", 0o555), ("sys", 0o555)):
            layer.dir(mnt, mode)
        v = {p.name: p.version for p in pins}
        history = [{"created_by": f"redis-tools {v['redis-tools']} and its ELF closure "
                                  f"(Debian {SUITE}/{ARCH})", "comment": "cmbuild tests/redis"}]
        blobs, index = ocibuild.image_blobs([layer], CONFIG, history)
    ocibuild.write_layout(out, blobs, index)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("--store", type=Path, default=None, help="where the .debs are kept")
    ap.add_argument("--pin", action="store_true", help="re-pin packages.toml first")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="redis-store-") as tmp:
        store = Store(args.store or Path(tmp))
        if args.pin:
            ocibuild.pin(store, PACKAGES_TOML, PACKAGE_NAMES,
                         "The Debian packages of the redis test image (tests/redis/build.py --pin).")
        if args.out:
            build(args.out, store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
