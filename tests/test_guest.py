"""The guest programs (init.c, shim.c): reproducible static riscv64 builds, and the exit code
table kept the same in the source and in docs/guest.md."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.guest import build
from cmbuild.store import Store

ROOT = Path(__file__).resolve().parent.parent
needs_cc = pytest.mark.skipif(shutil.which(build.CC) is None,
                              reason=f"{build.CC} is not installed")
EM_RISCV = 243


def _elf_facts(data: bytes) -> dict:
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not ELF64 LE"
    e_machine, = struct.unpack_from("<H", data, 18)
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return {"machine": e_machine, "interp": 3 in types, "dynamic": 2 in types}


@needs_cc
@pytest.mark.parametrize("name", ["init", "shim"])
def test_builds_reproducibly(tmp_path: Path, name: str) -> None:
    fn = build.build_init if name == "init" else build.build_shim
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    da = fn(a)
    db = fn(b, force=True)
    assert da == db
    assert fn(a, force=True) == da  # a third build, in a different scratch directory
    data = a.object_path(da).read_bytes()
    facts = _elf_facts(data)
    assert facts == {"machine": EM_RISCV, "interp": False, "dynamic": False}, facts
    assert b".note.gnu.build-id" not in data
    assert str(a.root).encode() not in data and str(ROOT).encode() not in data
    assert len(data) < 600_000


@needs_cc
def test_cached_by_stage_key(tmp_path: Path) -> None:
    s = Store(tmp_path)
    d = build.build_init(s)
    before = sorted(p.name for p in s.keys.iterdir())
    assert build.build_init(s) == d
    assert sorted(p.name for p in s.keys.iterdir()) == before


@needs_cc
def test_compiler_version_names_toolchain() -> None:
    v = build.compiler_version()
    assert "riscv64-linux-gnu-gcc" in v and "libc6-dev-riscv64-cross" in v


@needs_cc
def test_compile_error_is_clear(tmp_path: Path) -> None:
    src = tmp_path / "bad.c"
    src.write_text("int main(void) { return missing; }\n")
    with pytest.raises(CmbuildError, match="compiling bad.c failed") as e:
        build.compile_static(src, tmp_path / "bad")
    assert "missing" in str(e.value)


def _table_from_source(text: str) -> dict[int, str]:
    header = text.split("*/", 1)[0]
    return {int(m.group(1)): m.group(2).strip()
            for m in re.finditer(r"^ \*   (1[0-9]{2})  (.+)$", header, re.M)}


def test_exit_codes_documented() -> None:
    """Every failure code in init.c's enum and shim.c's enum is in docs/guest.md's table, and
    the header comment's table matches the enum."""
    guest = ROOT / "cmbuild/guest"
    init = (guest / "init.c").read_text()
    shim = (guest / "shim.c").read_text()
    doc = (ROOT / "docs/guest.md").read_text()
    enum_init = {int(v) for v in re.findall(r"E_[A-Z_]+ = (\d+),", init)}
    enum_shim = {int(v) for v in re.findall(r"E_[A-Z]+ = (\d+)", shim)}
    assert enum_init == set(_table_from_source(init)), "init.c header table != enum"
    assert not enum_init & enum_shim, "init and shim codes must be distinct"
    doc_codes = {int(m) for m in re.findall(r"^\| (1[0-9]{2}) \|", doc, re.M)}
    assert enum_init | enum_shim == doc_codes
    assert all(100 <= c < 128 for c in doc_codes)
