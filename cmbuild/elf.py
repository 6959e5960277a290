"""A small ELF64 reader: what a dynamically linked program needs to run.

Only what the runtime layer needs: the DT_NEEDED list, the DT_SONAME and the program
interpreter (PT_INTERP) of a file, and :func:`closure`, which finds every shared library a set of
programs loads, inside an unpacked package tree (never on the host). The dynamic section is
found through the program headers and its strings through DT_STRTAB, like the dynamic loader
does, so stripped files without section headers are read too.
"""

from __future__ import annotations

import os
import posixpath
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import CmbuildError

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME = 0, 1, 5, 10, 14

DEFAULT_LIBDIRS = ("lib/riscv64-linux-gnu", "usr/lib/riscv64-linux-gnu", "lib", "usr/lib")
# Debian's merged /usr: these top-level names are symlinks into usr/
MERGED_USR = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib"}


@dataclass(frozen=True)
class ElfInfo:
    machine: int
    interpreter: str | None
    needed: tuple[str, ...]
    soname: str | None


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CmbuildError(f"cannot read ELF file: {e.strerror}", where=str(path)) from e


def parse(path: Path | str) -> ElfInfo:
    """Read the dynamic-linking facts of one ELF64 file."""
    path = Path(path)
    data = _read(path)
    if data[:4] != b"\x7fELF":
        raise CmbuildError("not an ELF file", where=str(path))
    if data[4] != 2:
        raise CmbuildError("not a 64-bit ELF file (only ELF64 is supported)", where=str(path))
    end = {1: "<", 2: ">"}.get(data[5])
    if end is None:
        raise CmbuildError("bad ELF byte order", where=str(path))
    try:
        (e_type, e_machine, _ver, _entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize,
         e_phnum) = struct.unpack_from(end + "HHIQQQIHHH", data, 16)
        phdrs = []
        for i in range(e_phnum):
            p_type, _pflags, p_offset, p_vaddr, _paddr, p_filesz, _memsz, _align = \
                struct.unpack_from(end + "IIQQQQQQ", data, e_phoff + i * e_phentsize)
            phdrs.append((p_type, p_offset, p_vaddr, p_filesz))
    except struct.error as e:
        raise CmbuildError("truncated ELF header or program headers", where=str(path)) from e

    def cstr(off: int) -> str:
        if off < 0 or off >= len(data):
            raise CmbuildError("ELF string offset out of range", where=str(path))
        stop = data.find(b"\0", off)
        return data[off:stop if stop >= 0 else len(data)].decode("utf-8", "surrogateescape")

    def vaddr_to_offset(addr: int) -> int:
        for p_type, p_offset, p_vaddr, p_filesz in phdrs:
            if p_type == PT_LOAD and p_vaddr <= addr < p_vaddr + p_filesz:
                return addr - p_vaddr + p_offset
        raise CmbuildError(f"address {addr:#x} is in no loaded segment", where=str(path))

    interp = None
    dyn: list[tuple[int, int]] = []
    for p_type, p_offset, _vaddr, p_filesz in phdrs:
        if p_type == PT_INTERP:
            interp = cstr(p_offset)
        elif p_type == PT_DYNAMIC:
            for off in range(p_offset, p_offset + p_filesz - 15, 16):
                tag, val = struct.unpack_from(end + "qQ", data, off)
                if tag == DT_NULL:
                    break
                dyn.append((tag, val))
    needed: list[str] = []
    soname = None
    strtab = [v for t, v in dyn if t == DT_STRTAB]
    if dyn:
        if not strtab:
            raise CmbuildError("dynamic section without DT_STRTAB", where=str(path))
        base = vaddr_to_offset(strtab[0])
        for tag, val in dyn:
            if tag == DT_NEEDED:
                needed.append(cstr(base + val))
            elif tag == DT_SONAME:
                soname = cstr(base + val)
    return ElfInfo(e_machine, interp, tuple(needed), soname)


def needed(path: Path | str) -> list[str]:
    """The DT_NEEDED entries of an ELF file, in order."""
    return list(parse(path).needed)


def interpreter(path: Path | str) -> str | None:
    """The program interpreter (PT_INTERP), or None for static programs and libraries."""
    return parse(path).interpreter


def soname(path: Path | str) -> str | None:
    """The DT_SONAME of a shared library, or None."""
    return parse(path).soname


# ----- paths inside a tree ---------------------------------------------------------------

def _norm(rel: str) -> str:
    rel = posixpath.normpath("/" + rel.replace(os.sep, "/")).lstrip("/")
    return "" if rel == "." else rel


def _canonical(root: Path, rel: str, aliases: Mapping[str, str], what: str) -> str | None:
    """Resolve every directory component of ``rel`` inside ``root`` (following symlinks in the
    tree, absolute ones relative to ``root``, and the ``aliases`` of top-level directories),
    keeping the last component as it is. Returns the canonical relative path, or None when a
    directory does not exist. Nothing ever resolves outside ``root``."""
    parts = [p for p in _norm(rel).split("/") if p]
    if not parts:
        return None
    done: list[str] = []
    todo = parts[:-1]
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        cand = "/".join(done + [name])
        full = root / cand
        if full.is_symlink():
            hops += 1
            if hops > 40:
                raise CmbuildError("too many levels of symbolic links", where=f"{what}: {rel}")
            target = os.readlink(full)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p and p != "."] + todo
            continue
        if full.is_dir():
            done.append(name)
            continue
        if not done and name in aliases:
            todo = [p for p in aliases[name].split("/") if p] + todo
            continue
        return None
    return "/".join(done + [parts[-1]])


def _file_chain(root: Path, rel: str, aliases: Mapping[str, str],
                what: str) -> list[str] | None:
    """The canonical paths from ``rel`` through its symlinks to a regular file; None if missing."""
    chain: list[str] = []
    cur: str | None = rel
    while True:
        cur = _canonical(root, cur, aliases, what) if cur is not None else None
        if cur is None:
            return None
        if cur in chain or len(chain) > 40:
            raise CmbuildError("symbolic link loop", where=f"{what}: {rel}")
        chain.append(cur)
        full = root / cur
        if full.is_symlink():
            target = os.readlink(full)
            cur = target if target.startswith("/") else posixpath.join(posixpath.dirname(cur),
                                                                      target)
            continue
        if full.is_file():
            return chain
        return None


def closure(binaries: Iterable[str | Path], search_root: Path,
            libdirs: Iterable[str] = DEFAULT_LIBDIRS,
            aliases: Mapping[str, str] = MERGED_USR) -> dict[str, Path]:
    """Every file the dynamic loader opens to run ``binaries`` (paths relative to
    ``search_root``, an unpacked package tree): the interpreter and the DT_NEEDED libraries,
    transitively, each library looked up in ``libdirs`` in order.

    Returns canonical path in the layer (relative, no leading slash) -> path in the tree. Where a
    name is a symlink (``libcap.so.2 -> libcap.so.2.75``) both the link and its target are in
    the result, so the layer keeps Debian's layout; the top-level directories in ``aliases``
    (merged /usr: ``lib -> usr/lib``) are followed and are the layer's business.
    The binaries themselves are not in the result. A library that cannot be found is an error
    that names the program which needs it."""
    root = Path(search_root)
    libdirs = tuple(libdirs)
    out: dict[str, Path] = {}
    queue: list[tuple[str, str]] = []  # (canonical path of an ELF file, who asked for it)
    for b in binaries:
        rel = str(b)
        if Path(rel).is_absolute():
            try:
                rel = str(Path(rel).relative_to(root))
            except ValueError:
                raise CmbuildError(f"binary {b} is not inside {root}") from None
        chain = _file_chain(root, rel, aliases, str(b))
        if chain is None:
            raise CmbuildError(f"binary {rel} not found in the package tree", where=str(root))
        queue.append((chain[-1], rel))
    seen: set[str] = set()
    while queue:
        rel, _who = queue.pop(0)
        if rel in seen:
            continue
        seen.add(rel)
        info = parse(root / rel)
        if info.interpreter:
            chain = _file_chain(root, info.interpreter, aliases, rel)
            if chain is None:
                raise CmbuildError(f"{rel} needs the program interpreter {info.interpreter}, "
                                   "which is in none of the packages", where=str(root),
                                   hint="add the package that provides it (libc6) to the recipe")
            for c in chain:
                out[c] = root / c
            queue.append((chain[-1], rel))
        for lib in info.needed:
            if "/" in lib:
                candidates = [lib]
            else:
                candidates = [posixpath.join(d, lib) for d in libdirs]
            for cand in candidates:
                chain = _file_chain(root, cand, aliases, rel)
                if chain is not None:
                    break
            else:
                raise CmbuildError(
                    f"{rel} needs {lib}, which is in none of the packages "
                    f"(looked in {', '.join('/' + d for d in libdirs)})", where=str(root),
                    hint="add the Debian package that provides it to the recipe")
            for c in chain:
                out[c] = root / c
            queue.append((chain[-1], rel))
    return dict(sorted(out.items()))
