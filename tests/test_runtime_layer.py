"""The runtime layer stage, run for real from the pinned Debian packages, read back from the
squashfs it writes."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from cmbuild import debian, drives, elf
from cmbuild.errors import CmbuildError
from cmbuild.recipes import recipes_root, load_runtime_recipe
from cmbuild.stages.runtime import (SDSTUB_PATH, SIZE_TARGET, build_runtime, build_sdstub,
                                    prepare_tree, runtime_contents)
from cmbuild.store import Store

VERSION = "0.1.0"
MA = "usr/lib/riscv64-linux-gnu"
LOADER = "ld-linux-riscv64-lp64d.so.1"


# ----- recipes (fast) ------------------------------------------------------------------------

def test_recipe_loads_and_has_a_digest() -> None:
    r = load_runtime_recipe(recipes_root(), VERSION)
    assert r.version == VERSION and r.suite == "trixie" and r.architecture == "riscv64"
    data = (recipes_root() / "runtime" / f"{VERSION}.toml").read_bytes()
    assert r.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert {"crun", "busybox-static", "libc6"} <= {p.name for p in r.packages}
    assert {"sh", "mount", "poweroff"} <= set(r.busybox_applets)


def test_unknown_recipe_version_lists_the_available_ones() -> None:
    with pytest.raises(CmbuildError, match="no runtime recipe version 9.9.9") as e:
        load_runtime_recipe(recipes_root(), "9.9.9")
    assert VERSION in str(e.value)


def _recipe_copy(tmp_path: Path, edit: tuple[str, str] | None = None,
                 name: str = VERSION) -> Path:
    text = (recipes_root() / "runtime" / f"{VERSION}.toml").read_text()
    if edit:
        assert edit[0] in text
        text = text.replace(edit[0], edit[1])
    (tmp_path / "runtime").mkdir(exist_ok=True)
    (tmp_path / "runtime" / f"{name}.toml").write_text(text)
    return tmp_path


def test_recipe_rejects_unknown_keys_and_bad_pins(tmp_path: Path) -> None:
    root = _recipe_copy(tmp_path, ('suite = "trixie"', 'suite = "trixie"\nmirror = "x"'))
    with pytest.raises(CmbuildError, match="mirror: Extra inputs are not permitted"):
        load_runtime_recipe(root, VERSION)
    root = _recipe_copy(tmp_path, ('name = "crun"\nversion = "1.21-1"\nsha256 = "',
                                   'name = "crun"\nversion = "1.21-1"\nsha256 = "zz'))
    with pytest.raises(CmbuildError, match="package.0.sha256: expected 64 lower-case hex"):
        load_runtime_recipe(root, VERSION)
    root = _recipe_copy(tmp_path, name="0.0.9")
    with pytest.raises(CmbuildError, match="says version = '0.1.0', its name says '0.0.9'"):
        load_runtime_recipe(root, "0.0.9")


# ----- the stage (slow) ------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(debs_store: Path) -> Store:
    return Store(debs_store)


@pytest.fixture(scope="module")
def recipe():
    return load_runtime_recipe(recipes_root(), VERSION)


@pytest.fixture(scope="module")
def tree(store: Store, recipe, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pkgs")
    prepare_tree(store, recipe, out)
    return out


@pytest.fixture(scope="module")
def init(store: Store, tree: Path) -> str:
    """A stand-in for the init: busybox-static, a small static riscv64 program."""
    return store.add_file(tree / "usr/bin/busybox")


@pytest.fixture(scope="module")
def layer(store: Store, recipe, init: str) -> tuple[str, dict[str, tarfile.TarInfo], bytes]:
    digest = build_runtime(store, recipe, init_digest=init)
    data = drives.squashfs_to_tar(store.object_path(digest))
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        members = {m.name.lstrip("./").rstrip("/"): m for m in t.getmembers()}
    members.pop("", None)
    return digest, members, data


def _file(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        for m in t.getmembers():
            if m.name.lstrip("./") == name:
                f = t.extractfile(m)
                assert f is not None
                return f.read()
    raise KeyError(name)


@pytest.mark.slow
def test_layer_holds_exactly_the_runtime(layer, tree: Path, recipe, store: Store) -> None:
    digest, members, data = layer
    libs = elf.closure(["usr/bin/crun"], tree)
    expected = {"bin", "sbin", "lib", "usr", "usr/bin", "usr/sbin", "usr/lib", MA,
                "dev", "mnt", "proc", "run", "sys", "tmp",
                "usr/bin/crun", "usr/bin/busybox", "usr/sbin/init"}
    expected |= {f"usr/bin/{a}" for a in recipe.busybox_applets}
    expected |= set(libs)
    assert set(members) == expected  # and nothing else: no docs, no man pages, no .a
    # Debian's layout: merged /usr, the loader where PT_INTERP says, libraries' symlinks
    assert members["lib"].issym() and members["lib"].linkname == "usr/lib"
    assert members["bin"].linkname == "usr/bin" and members["sbin"].linkname == "usr/sbin"
    assert members["usr/lib/" + LOADER].issym()
    assert members[f"{MA}/{LOADER}"].isfile()
    for name in ("usr/bin/crun", "usr/bin/busybox", "usr/sbin/init", f"{MA}/{LOADER}"):
        assert members[name].isfile() and members[name].mode & 0o111 == 0o111, name
    for a in recipe.busybox_applets:
        assert members[f"usr/bin/{a}"].issym() and members[f"usr/bin/{a}"].linkname == "busybox"
    for d in ("dev", "mnt", "proc", "run", "sys", "tmp"):
        assert members[d].isdir()
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members.values())
    # the bytes are Debian's (and the init's)
    for rel, src in libs.items():
        if not src.is_symlink():
            assert _file(data, rel) == src.read_bytes(), rel
    assert _file(data, "usr/bin/crun") == (tree / "usr/bin/crun").read_bytes()
    assert _file(data, "usr/sbin/init") == (tree / "usr/bin/busybox").read_bytes()
    # what the stage says the layer holds is what it holds
    listing = runtime_contents(recipe, store)
    assert set(listing) == {"/" + m for m in members}
    assert store.object_path(digest).stat().st_size <= SIZE_TARGET


@pytest.mark.slow
def test_unsquashfs_agrees(layer, store: Store) -> None:
    digest = layer[0]
    out = subprocess.run(["unsquashfs", "-lln", str(store.object_path(digest))],
                         capture_output=True, text=True, check=True).stdout
    lines = [l for l in out.splitlines() if "squashfs-root" in l]
    assert len(lines) == len(layer[1]) + 1
    assert any(l.startswith("-rwxr-xr-x 0/0") and l.endswith("squashfs-root/usr/bin/crun")
               for l in lines)


@pytest.mark.slow
def test_same_digest_in_another_store(layer, store: Store, recipe, init: str,
                                      tmp_path: Path) -> None:
    """A second build in a fresh store (the same .deb files, copied by digest: nothing is
    downloaded) gives the same bytes, under another umask."""
    other = Store(tmp_path / "store")
    for p in recipe.debs():
        shutil.copy(store.object_path(p.digest), other.object_path(p.digest))
    init2 = other.add_file(store.object_path(init))
    old = os.umask(0o077)
    try:
        digest = build_runtime(other, recipe, init_digest=init2, quiet=True)
    finally:
        os.umask(old)
    assert digest == layer[0]
    # and it is cached by its stage key
    assert build_runtime(other, recipe, init_digest=init2, quiet=True) == digest


@pytest.mark.slow
def test_wrong_sha256_in_recipe_names_the_package(store: Store, init: str,
                                                  tmp_path: Path) -> None:
    real = load_runtime_recipe(recipes_root(), VERSION).package("libyajl2")
    root = _recipe_copy(tmp_path, (real.sha256, "f" * 64))
    bad = load_runtime_recipe(root, VERSION)
    before = set(store.all_objects())
    with pytest.raises(CmbuildError, match=re.escape(f"package libyajl2 {real.version}")) as e:
        build_runtime(store, bad, init_digest=init, quiet=True)
    assert "f" * 64 in str(e.value) and real.sha256 in str(e.value)
    assert set(store.all_objects()) == before


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("riscv64-linux-gnu-gcc") is None,
                    reason="riscv64-linux-gnu-gcc is not installed")
def test_dynamic_init_needs_nothing_more(store: Store, recipe, tmp_path: Path) -> None:
    """An init linked against libc only adds no file: its libraries are crun's."""
    src = tmp_path / "init.c"
    src.write_text("int main(void){return 0;}\n")
    subprocess.run(["riscv64-linux-gnu-gcc", "-O1", "-o", str(tmp_path / "init"), str(src)],
                   check=True)
    digest = store.add_file(tmp_path / "init")
    listing = runtime_contents(recipe, store, init_digest=digest)
    assert listing == runtime_contents(recipe, store)


@pytest.mark.slow
def test_lz4_layer(store: Store, recipe, init: str, layer) -> None:
    digest = build_runtime(store, recipe, init_digest=init, compression="lz4", quiet=True)
    assert digest != layer[0]
    data = drives.squashfs_to_tar(store.object_path(digest))
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        names = {m.name.lstrip("./").rstrip("/") for m in t.getmembers()} - {""}
    assert names == set(layer[1])


# ----- the libsystemd stub ---------------------------------------------------------------------

def _readelf() -> str | None:
    return shutil.which("riscv64-linux-gnu-readelf") or shutil.which("readelf")


def _versioned(readelf: str, path: Path, defined: bool) -> set[str]:
    """``name@VERSION`` of a file's dynamic symbols: undefined ones (imports) or defined ones."""
    out = subprocess.run([readelf, "--dyn-syms", "-W", str(path)], capture_output=True,
                         text=True, check=True).stdout
    got = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) < 8 or f[3] not in ("FUNC", "OBJECT"):
            continue
        if (f[6] != "UND") == defined:
            got.add(f[7].replace("@@", "@"))
    return got


@pytest.mark.slow
@pytest.mark.skipif(_readelf() is None, reason="readelf is not installed")
def test_sdstub_defines_every_symbol_crun_imports(store: Store, tree: Path) -> None:
    if load_runtime_recipe(recipes_root(), VERSION).libsystemd != "stub":
        pytest.skip("the recipe ships Debian's libsystemd")
    readelf = _readelf()
    assert readelf is not None
    stub = store.object_path(build_sdstub(store))
    imports = {s for s in _versioned(readelf, tree / "usr/bin/crun", defined=False)
               if "@LIBSYSTEMD_" in s}
    assert len(imports) >= 10  # sd_bus_*, sd_notify*, sd_journal_send_with_location
    assert imports <= _versioned(readelf, stub, defined=True)
    assert elf.needed(stub) == [] and elf.soname(stub) == "libsystemd.so.0"
    assert (tree / SDSTUB_PATH).read_bytes() == stub.read_bytes()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-riscv64-static") is None,
                    reason="qemu-riscv64-static (qemu-user-static) is not installed")
def test_crun_binds_against_the_layer(layer, store: Store, tmp_path: Path) -> None:
    """The dynamic loader of the layer resolves every symbol of crun, versions included,
    against the layer's libraries (``ldd -r`` under qemu-user, with the layer as /)."""
    root = tmp_path / "root"
    with tarfile.open(fileobj=io.BytesIO(layer[2])) as t:
        if hasattr(tarfile, "tar_filter"):
            t.extractall(root, filter="tar")
        else:  # pragma: no cover (Python < 3.11.4)
            t.extractall(root)
    p = subprocess.run(["qemu-riscv64-static", "-L", str(root), "-E", "LD_TRACE_LOADED_OBJECTS=1",
                        "-E", "LD_BIND_NOW=1", "-E", "LD_WARN=yes", str(root / "usr/bin/crun")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "undefined symbol" not in p.stdout + p.stderr
    assert "not found" not in p.stdout + p.stderr
    assert "libsystemd.so.0 => /lib/riscv64-linux-gnu/libsystemd.so.0" in p.stdout


@pytest.mark.slow
def test_debian_libsystemd_variant(store: Store, init: str, tmp_path: Path) -> None:
    """``libsystemd = "debian"``: Debian's libsystemd0 (and the libm it needs) instead of the
    stub; still within the size target."""
    text = (recipes_root() / "runtime" / f"{VERSION}.toml").read_text()
    if 'libsystemd = "stub"' not in text:
        pytest.skip("the recipe already ships Debian's libsystemd")
    root = _recipe_copy(tmp_path, ('libsystemd = "stub"', 'libsystemd = "debian"'))
    pin = debian.lookup(store, "libsystemd0", suite="trixie", arch="riscv64")
    path = root / "runtime" / f"{VERSION}.toml"
    path.write_text(path.read_text() + f'\n[[package]]\nname = "libsystemd0"\n'
                    f'version = "{pin.version}"\nsha256 = "{pin.sha256}"\n')
    recipe = load_runtime_recipe(root, VERSION)
    listing = runtime_contents(recipe, store)
    assert listing[f"/{MA}/libsystemd.so.0"].startswith("symlink libsystemd.so.0.")
    assert f"/{MA}/libm.so.6" in listing
    digest = build_runtime(store, recipe, init_digest=init, quiet=True)
    assert store.object_path(digest).stat().st_size <= SIZE_TARGET
    # a stub recipe that also pins libsystemd0 is refused
    path.write_text(path.read_text().replace('libsystemd = "debian"', 'libsystemd = "stub"'))
    with pytest.raises(CmbuildError, match="replaces package libsystemd0"):
        load_runtime_recipe(root, VERSION)
