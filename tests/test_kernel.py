"""The kernel stage: recipes, the reproducible boot initramfs, module resolution from Debian's
package, and the Cartesi kernel download (against a local HTTP server: no internet here)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
from pathlib import Path
from typing import Iterator

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.recipes import recipes_root, KernelRecipe, load_kernel_recipe
from cmbuild.stages import kernel
from cmbuild.stages.kernel import CpioEntry, read_cpio, write_cpio
from cmbuild.store import Store

CARTESI_SHA = "5c900060da2db2bfa84cd39cd9cd722988c83c42225f3cac55f2d3157e48f32f"


# ----- recipes --------------------------------------------------------------------------------

def test_shipped_recipes_load() -> None:
    q = load_kernel_recipe(recipes_root(), "qemu-6.12.117-1")
    assert q.machine == "qemu" and q.suite == "trixie" and q.architecture == "riscv64"
    assert q.package().name.startswith("linux-image-") and q.package().version == "6.12.117-1"
    assert {"virtio_mmio", "virtio_blk", "squashfs", "overlay", "ext4"} <= set(q.modules)
    c = load_kernel_recipe(recipes_root(), "cartesi-v0.21.0")
    assert c.kernel_sha256 == CARTESI_SHA
    assert c.url == ("https://github.com/cartesi/machine-linux-image/releases/download/v0.21.0/"
                     "linux-6.5.13-ctsi-2-v0.21.0.bin")
    assert q.sha256 != c.sha256  # the recipe files' own digests (stage key inputs)


@pytest.mark.parametrize("doc, message", [
    ({"version": "x", "machine": "arm"}, "machine must be one of"),
    ({"version": "x", "machine": "cartesi", "url": "https://h/k"}, "needs url and sha256"),
    ({"version": "x", "machine": "cartesi", "url": "https://h/k", "sha256": "AB"}, "64 lower"),
    ({"version": "x", "machine": "cartesi", "url": "ftp://h/k", "sha256": "a" * 64}, "http"),
    ({"version": "x", "machine": "qemu", "suite": "trixie", "architecture": "riscv64"},
     "exactly one"),
    ({"version": "x", "machine": "qemu"}, "suite and architecture"),
    ({"version": "x", "machine": "qemu", "suite": "s", "architecture": "a",
      "modules": ["Bad Name"],
      "package": [{"name": "k", "version": "1", "sha256": "a" * 64}]}, "module name"),
])
def test_bad_recipes_refused(doc: dict, message: str) -> None:
    with pytest.raises(Exception, match=message):
        KernelRecipe.model_validate(doc)


# ----- cpio -----------------------------------------------------------------------------------

def _entries() -> list[CpioEntry]:
    return [CpioEntry("init", "file", 0o755, b"\x7fELF-shim"),
            CpioEntry("lib/modules/a.ko", "file", 0o644, b"A" * 5),
            CpioEntry("dev/console", "char", 0o600, rdev=(5, 1)),
            CpioEntry("lib", "dir", 0o755),
            CpioEntry("dev", "dir", 0o755),
            CpioEntry("lib/modules", "dir", 0o755)]


def test_cpio_reproducible_and_readable() -> None:
    a, b = io.BytesIO(), io.BytesIO()
    write_cpio(_entries(), a)
    write_cpio(list(reversed(_entries())), b)
    assert a.getvalue() == b.getvalue()
    assert len(a.getvalue()) % 512 == 0
    got = read_cpio(a.getvalue())
    assert [p for p, _m, _d in got] == ["dev", "dev/console", "init", "lib", "lib/modules",
                                        "lib/modules/a.ko"]
    modes = {p: m for p, m, _d in got}
    assert modes["dev/console"] == 0o20600 and modes["init"] == 0o100755
    assert modes["lib"] == 0o40755
    assert dict((p, d) for p, _m, d in got)["lib/modules/a.ko"] == b"AAAAA"
    data = a.getvalue()
    # every header: uid, gid, mtime are 0 (fields 3, 4, 6 of newc)
    pos = 0
    while True:
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        assert (f[2], f[3], f[5]) == (0, 0, 0)
        name = data[pos + 110: pos + 110 + f[11] - 1]
        pos += 110 + f[11]
        pos += -pos % 4
        pos += f[6] + (-f[6] % 4)
        if name == b"TRAILER!!!":
            break


def test_cpio_refuses_bad_trees() -> None:
    with pytest.raises(CmbuildError, match="before its directory"):
        write_cpio([CpioEntry("lib/x", "file", 0o644, b"")], io.BytesIO())
    with pytest.raises(CmbuildError, match="duplicate"):
        write_cpio([CpioEntry("x", "file", 0o644), CpioEntry("x/", "dir", 0o755)], io.BytesIO())
    with pytest.raises(CmbuildError, match="bad"):
        write_cpio([CpioEntry("../x", "file", 0o644)], io.BytesIO())


# ----- the qemu kernel from Debian's package ---------------------------------------------------

def test_default_recipes_per_machine() -> None:
    for machine in ("qemu", "cartesi"):
        path = kernel.recipe_path(recipes_root(), machine)
        assert path.is_file()
        assert kernel.load_machine_recipe(recipes_root(), machine).machine == machine
    with pytest.raises(CmbuildError, match="no kernel for machine"):
        kernel.recipe_path(recipes_root(), "arm")
    with pytest.raises(CmbuildError, match="not qemu"):
        kernel.load_machine_recipe(recipes_root(), "qemu", "cartesi-v0.21.0")
    assert [p.name for p in kernel.shim_sources()] == ["shim.c"]


@pytest.mark.slow
def test_qemu_kernel_stage_reproducible(tmp_path: Path) -> None:
    recipe = load_kernel_recipe(recipes_root(), "qemu-6.12.117-1")
    a = Store(tmp_path / "a")
    out_a = kernel.build_kernel(a, recipes_root(), "qemu")
    doc = a.read_json(out_a)
    assert doc["machine"] == "qemu" and doc["initrd"] and doc["kernel"]
    # dependencies come before what needs them; ext4's from its modinfo
    mods = doc["modules"]
    for dep in ("jbd2", "mbcache", "crc16"):
        assert mods.index(dep) < mods.index("ext4")
    assert mods.index("virtio_mmio") < mods.index("virtio_blk")
    files = read_cpio(a.object_path(doc["initrd"]).read_bytes())
    names = {p for p, _m, _d in files}
    assert {"init", "dev/console", "lib/modules/load.order", "lib/modules/virtio_blk.ko",
            "lib/modules/squashfs.ko", "lib/modules/overlay.ko"} <= names
    order = dict((p, d) for p, _m, d in files)["lib/modules/load.order"].decode().split()
    assert order == [f"{m}.ko" for m in mods]
    kernel_bytes = a.object_path(doc["kernel"]).read_bytes()
    assert kernel_bytes[0x38:0x3C] == b"RSC\x05"
    # a second store (the .deb copied in, so no second download) gives the same bytes
    b = Store(tmp_path / "b")
    deb = recipe.package().deb().digest
    b.add_file(a.object_path(deb), expect=deb)
    assert kernel.build_qemu_kernel(b, recipe) == out_a
    assert b.read_json(out_a) == doc
    resolved = kernel.kernel_files(b, out_a)
    assert resolved.initrd == b.object_path(doc["initrd"]) and resolved.cmdline == []


# ----- the Cartesi kernel: download with the sha256 checked while streaming -------------------

PAYLOAD = b"fake kernel image\n" * 100_000  # 1.8 MB, several chunks


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path != "/kernel.bin":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _right() -> str:
    return "sha256:" + hashlib.sha256(PAYLOAD).hexdigest()


def _empty(store: Store) -> bool:
    return not store.all_objects() and not any(store.tmp.iterdir())


def test_download_wrong_sha256_refused(tmp_path: Path, server: str) -> None:
    s = Store(tmp_path)
    wrong = "sha256:" + "0" * 64
    with pytest.raises(CmbuildError, match="refused") as e:
        kernel.fetch_url(s, f"{server}/kernel.bin", wrong)
    assert "127.0.0.1" in str(e.value) and "nothing was stored" in str(e.value)
    assert _empty(s)


def test_download_right_sha256_stored(tmp_path: Path, server: str) -> None:
    s = Store(tmp_path)
    d = kernel.fetch_url(s, f"{server}/kernel.bin", _right())
    assert d == _right()
    assert s.object_path(d).read_bytes() == PAYLOAD
    assert not any(s.tmp.iterdir())


def test_download_http_error(tmp_path: Path, server: str) -> None:
    s = Store(tmp_path)
    with pytest.raises(CmbuildError, match="HTTP 404"):
        kernel.fetch_url(s, f"{server}/nope.bin", _right())
    assert _empty(s)


def test_download_unreachable(tmp_path: Path, server: str) -> None:
    s = Store(tmp_path)
    port = server.rsplit(":", 1)[1]
    with pytest.raises(CmbuildError, match="download failed"):
        # a port on 127.0.0.1 that nothing listens on: the server's port plus one is usually
        # free; either way nothing may be stored
        kernel.fetch_url(s, f"http://127.0.0.1:{int(port) + 1}/kernel.bin", _right(),
                         timeout=5)
    assert _empty(s)


def test_cartesi_kernel_stage(tmp_path: Path, server: str) -> None:
    s = Store(tmp_path)
    recipe = KernelRecipe.model_validate({"version": "cartesi-test", "machine": "cartesi",
                                          "url": f"{server}/kernel.bin",
                                          "sha256": _right().split(":")[1]})
    out = kernel.build_from_recipe(s, recipe)
    assert out == _right()  # the output is the RAM image itself
    assert s.object_path(out).read_bytes() == PAYLOAD
    # cached: the same key answers without the server
    recipe2 = recipe.model_copy(update={"url": "http://127.0.0.1:9/gone"})
    assert kernel.build_cartesi_kernel(s, recipe2) == out


def test_cartesi_kernel_wrong_sha_stores_nothing(tmp_path: Path, server: str) -> None:
    s = Store(tmp_path)
    recipe = KernelRecipe.model_validate({"version": "cartesi-test", "machine": "cartesi",
                                          "url": f"{server}/kernel.bin", "sha256": "1" * 64})
    with pytest.raises(CmbuildError, match="refused"):
        kernel.build_from_recipe(s, recipe)
    assert _empty(s) and not any(s.keys.iterdir())


def test_kernel_from_local_file(tmp_path: Path) -> None:
    s = Store(tmp_path / "store")
    f = tmp_path / "linux.bin"
    f.write_bytes(PAYLOAD)
    out = kernel.build_kernel_from_file(s, f)
    assert out == _right()
    f.write_bytes(PAYLOAD + b"changed")
    out2 = kernel.build_kernel_from_file(s, f)
    assert out2 != out  # its sha256 is the key's input
    with pytest.raises(CmbuildError, match="not a file"):
        kernel.build_kernel_from_file(s, tmp_path / "missing.bin")

