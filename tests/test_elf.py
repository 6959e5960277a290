"""cmbuild.elf: DT_NEEDED, PT_INTERP, DT_SONAME and the library closure, on real riscv64 files."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cmbuild import elf
from cmbuild.errors import CmbuildError
from cmbuild.recipes import recipes_root, load_runtime_recipe
from cmbuild.stages.runtime import prepare_tree
from cmbuild.store import Store

CC = "riscv64-linux-gnu-gcc"
LOADER = "ld-linux-riscv64-lp64d.so.1"
MA = "usr/lib/riscv64-linux-gnu"


# ----- fast: files made by the cross compiler -------------------------------------------------

needs_cc = pytest.mark.skipif(shutil.which(CC) is None, reason=f"{CC} is not installed")


def cc(tmp: Path, name: str, src: str, *args: str) -> Path:
    c = tmp / (name + ".c")
    c.write_text(src)
    out = tmp / name
    subprocess.run([CC, "-O1", "-o", str(out), str(c), *args], check=True)
    return out


@needs_cc
def test_cross_compiled_files(tmp_path: Path) -> None:
    lib = cc(tmp_path, "libfoo.so.1", "int foo(void){return 1;}",
             "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1")
    prog = cc(tmp_path, "prog", "int foo(void); int main(void){return foo();}",
              str(lib), "-Wl,--no-as-needed")
    static = cc(tmp_path, "static", "int main(void){return 0;}", "-static")
    assert elf.soname(lib) == "libfoo.so.1"
    assert elf.interpreter(lib) is None
    assert elf.needed(prog)[:1] == ["libfoo.so.1"] and "libc.so.6" in elf.needed(prog)
    assert elf.interpreter(prog) == "/lib/" + LOADER
    assert elf.parse(prog).machine == 243  # EM_RISCV
    assert elf.needed(static) == [] and elf.interpreter(static) is None


def test_not_elf(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(CmbuildError, match="not an ELF file"):
        elf.needed(tmp_path / "script")
    (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01\x01")
    with pytest.raises(CmbuildError, match="truncated"):
        elf.parse(tmp_path / "short")


@needs_cc
def test_closure_in_a_small_tree(tmp_path: Path) -> None:
    """A tree laid out like Debian's: libraries found through the multiarch dir and the
    merged-/usr alias lib -> usr/lib, symlinks kept, missing ones named."""
    tree = tmp_path / "tree"
    (tree / MA).mkdir(parents=True)
    (tree / "usr/bin").mkdir(parents=True)
    build = tmp_path / "build"
    build.mkdir()
    libbar = cc(build, "libbar.so.2", "int bar(void){return 2;}", "-shared", "-fPIC",
                "-Wl,-soname,libbar.so.2")
    libfoo = cc(build, "libfoo.so.1", "int bar(void); int foo(void){return bar();}",
                "-shared", "-fPIC", "-Wl,-soname,libfoo.so.1", str(libbar), "-Wl,--no-as-needed")
    prog = cc(build, "prog", "int foo(void); int main(void){return foo();}", str(libfoo),
              "-Wl,--no-as-needed", "-Wl,-rpath-link," + str(build))
    shutil.copy(prog, tree / "usr/bin/prog")
    shutil.copy(libfoo, tree / MA / "libfoo.so.1.0.0")
    os.symlink("libfoo.so.1.0.0", tree / MA / "libfoo.so.1")
    # an absolute symlink is resolved inside the tree, never on the host
    shutil.copy(libbar, tree / MA / "libbar.so.2")
    shutil.copy(libbar, tree / MA / LOADER)  # any file will do as the loader here
    os.symlink("riscv64-linux-gnu/" + LOADER, tree / "usr/lib" / LOADER)
    with pytest.raises(CmbuildError, match="usr/bin/prog needs libc.so.6") as e:
        elf.closure(["usr/bin/prog"], tree)
    assert "/lib/riscv64-linux-gnu" in str(e.value)
    # give it a libc: an absolute symlink to a file in the tree
    shutil.copy(libbar, tree / MA / "libc-real.so")
    os.symlink("/" + MA + "/libc-real.so", tree / MA / "libc.so.6")
    got = elf.closure(["usr/bin/prog"], tree)
    assert sorted(got) == sorted([
        "usr/lib/" + LOADER, f"{MA}/{LOADER}", f"{MA}/libfoo.so.1", f"{MA}/libfoo.so.1.0.0",
        f"{MA}/libbar.so.2", f"{MA}/libc.so.6", f"{MA}/libc-real.so"])
    assert got[f"{MA}/libfoo.so.1"].is_symlink()
    assert all(str(p).startswith(str(tree)) for p in got.values())
    # a symlink pointing outside the tree cannot escape it
    os.remove(tree / MA / "libc.so.6")
    os.symlink("../../../../../../../etc/passwd", tree / MA / "libc.so.6")
    with pytest.raises(CmbuildError, match="needs libc.so.6"):
        elf.closure(["usr/bin/prog"], tree)


# ----- slow: the real packages of the runtime recipe -----------------------------------------

@pytest.fixture(scope="module")
def tree(debs_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = Store(debs_store)
    recipe = load_runtime_recipe(recipes_root(), "0.1.0")
    out = tmp_path_factory.mktemp("tree")
    prepare_tree(store, recipe, out)  # the packages (and the libsystemd stub, if used)
    return out


@pytest.mark.slow
def test_real_binaries(tree: Path) -> None:
    crun = tree / "usr/bin/crun"
    assert elf.interpreter(crun) == "/lib/" + LOADER
    assert {"libc.so.6", "libcap.so.2", "libseccomp.so.2", "libyajl.so.2"} <= set(elf.needed(crun))
    assert elf.soname(tree / MA / "libc.so.6") == "libc.so.6"
    assert elf.soname(tree / MA / "libcap.so.2") == "libcap.so.2"  # through the symlink
    assert elf.interpreter(tree / "usr/bin/busybox") is None
    assert elf.needed(tree / "usr/bin/busybox") == []


@pytest.mark.slow
def test_real_closure_of_crun(tree: Path) -> None:
    got = elf.closure(["usr/bin/crun"], tree)
    names = {k.rsplit("/", 1)[-1] for k in got}
    assert {LOADER, "libc.so.6", "libcap.so.2", "libseccomp.so.2", "libyajl.so.2",
            "libsystemd.so.0"} <= names
    assert "usr/lib/" + LOADER in got and got["usr/lib/" + LOADER].is_symlink()
    assert f"{MA}/{LOADER}" in got and not got[f"{MA}/{LOADER}"].is_symlink()
    # every symlink's target is in the closure too, and every real file is an ELF library
    for rel, path in got.items():
        if path.is_symlink():
            target = os.path.normpath(os.path.join(os.path.dirname(rel), os.readlink(path)))
            assert target in got, rel
        else:
            assert path.read_bytes()[:4] == b"\x7fELF"
    assert not any(k.startswith(("usr/share", "etc")) for k in got)


@pytest.mark.slow
def test_missing_library_is_named(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tree"
    shutil.copytree(tree, copy, symlinks=True)
    for p in (copy / MA).glob("libyajl.so*"):
        p.unlink()
    with pytest.raises(CmbuildError, match=r"usr/bin/crun needs libyajl\.so\.2, which is in "
                                           "none of the packages"):
        elf.closure(["usr/bin/crun"], copy)
