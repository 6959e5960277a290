"""Drive images from tar streams: squashfs (read-only) and ext2 (writable).

All builders take one canonical tar (sorted entries, numeric owners, clamped times) and
produce byte-identical images on any machine, user, umask and time zone:

- squashfs without compression: ``mksquashfs -tar`` with every compression switched off.
  In tar mode it gives the root directory the *builder's* owner (squashfs-tools issue #173),
  so a non-root builder runs it in a user namespace where it is uid 0 (``unshare -r``).
  It aborts when SOURCE_DATE_EPOCH is set together with ``-mkfs-time``, so that variable is
  removed from its environment.
- squashfs with compression (lz4, zstd, xz, gzip, lzo): ``tar2sqfs`` (squashfs-tools-ng),
  single job so the block order never depends on thread timing.
- ext2: ``genext2fs -a`` with ``-f`` (timestamps 0) and a size computed from the tar.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO, BinaryIO, Callable

from .errors import CmbuildError

COMPRESSIONS = ("none", "lz4", "zstd", "xz", "gzip", "lzo")
FORMATS = ("squashfs", "ext2")
EXTENSIONS = {"squashfs": "sqfs", "ext2": "ext2"}
BLOCK = 4096


def tool_env() -> dict[str, str]:
    """A fixed environment for the file-system tools: C locale, UTC, no SOURCE_DATE_EPOCH."""
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "TZ") and not k.startswith("LC_")}
    env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC"})
    return env


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise CmbuildError(f"'{name}' is not installed", hint=f"install Debian's package {package} "
                           "(scripts/bootstrap installs everything cmbuild needs)")
    return path


def tool_version(name: str) -> str:
    """The first line a tool prints about its version (for lock files), or 'absent'."""
    if shutil.which(name) is None:
        return "absent"
    for flag in ("-version", "--version", "-V"):
        try:
            p = subprocess.run([name, flag], capture_output=True, text=True, timeout=20, env=tool_env())
        except (OSError, subprocess.TimeoutExpired):
            continue
        for line in (p.stdout + "\n" + p.stderr).splitlines():
            if "version" in line.lower() or re.search(r"\d+\.\d+", line):
                if not line.lower().lstrip().startswith(("usage", "syntax", "-")):
                    return line.strip()
    return "unknown"


def _run(cmd: list[str], stdin: IO[bytes] | None, what: str) -> None:
    p = subprocess.run(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tool_env())
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()[-8:]
        raise CmbuildError(f"{what} failed (exit {p.returncode}): " + " | ".join(tail),
                           where=" ".join(cmd[:2]))


def _open_src(src: Path | BinaryIO) -> tuple[BinaryIO, bool]:
    if isinstance(src, (str, Path)):
        return open(src, "rb"), True
    return src, False


def tar_to_squashfs(src: Path | BinaryIO, out: Path, compression: str = "none") -> None:
    """Write a squashfs image of the tar ``src`` (a path or a binary stream) to ``out``."""
    if compression not in COMPRESSIONS:
        raise CmbuildError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")
    out = Path(out)
    if out.exists():
        out.unlink()
    f, close = _open_src(src)
    try:
        if compression == "none":
            # Measured (docs/benchmarks.md): the image's bytes are the same with 1, 2, 4 or 8
            # processors and with -mem from 32M to 256M; with nothing to compress more
            # processors are no faster, so one leaves the cores to whoever feeds the tar, and
            # -mem 64M bounds its peak memory at about 60 MB (256M: 156 MB at 1 GB).
            cmd = [need_tool("mksquashfs", "squashfs-tools"), "-", str(out), "-tar",
                   "-noI", "-noId", "-noD", "-noF", "-noX", "-no-fragments",
                   "-mkfs-time", "0", "-all-time", "0", "-root-mode", "755",
                   "-processors", "1", "-mem", "64M", "-quiet", "-no-progress"]
            if os.geteuid() != 0:
                cmd = [need_tool("unshare", "util-linux"), "--map-root-user"] + cmd
            _run(cmd, f, "mksquashfs")
        else:
            cmd = [need_tool("tar2sqfs", "squashfs-tools-ng"), "--quiet", "--no-keep-time",
                   "--num-jobs", "1", "--compressor", compression,
                   "--defaults", "uid=0,gid=0,mode=0755,mtime=0", "--force", str(out)]
            _run(cmd, f, "tar2sqfs")
    except BaseException:
        if out.exists():
            out.unlink()
        raise
    finally:
        if close:
            f.close()


PIPE_SIZE = 1 << 20


def _widen(fd: int) -> None:
    """Give a pipe 1 MiB of buffer (Linux: /proc/sys/fs/pipe-max-size allows that by default)
    instead of 64 KiB: 16 times fewer switches between the writer and the tool."""
    import fcntl
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass   # a smaller buffer works too, only more slowly


def squashfs_from_writer(write: Callable[[BinaryIO], None], out: Path, compression: str = "none") -> None:
    """Like :func:`tar_to_squashfs`, but the tar is produced by ``write(stream)`` in a thread
    and piped straight into the tool: no temporary copy of the tar on disk."""
    import threading
    r, w = os.pipe()
    _widen(w)
    error: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(w, "wb", buffering=1 << 20) as f:
                write(f)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(e)

    t = threading.Thread(target=produce, name="tar-writer", daemon=True)
    t.start()
    try:
        with os.fdopen(r, "rb") as f:
            tar_to_squashfs(f, out, compression)
    finally:
        t.join()
    # a BrokenPipeError means the tool died first, and its own error was raised above
    if error and not isinstance(error[0], BrokenPipeError):
        if out.exists():
            out.unlink()
        raise error[0]


def tar_content_size(tar_path: Path) -> tuple[int, int]:
    """(bytes of file data rounded to blocks, number of entries) of a tar file."""
    total, count = 0, 0
    with tarfile.open(tar_path, "r:") as t:
        for m in t:
            count += 1
            if m.isfile():
                total += (m.size + BLOCK - 1) // BLOCK * BLOCK
            elif m.issym():
                total += BLOCK if len(m.linkname) > 60 else 0
    return total, count


def tar_to_ext2(tar_path: Path, out: Path, extra_size: int = 0, label: str | None = None,
                size: int | None = None) -> None:
    """Write an ext2 image of the tar at ``tar_path`` with ``extra_size`` bytes of free space
    (or exactly ``size`` bytes, rounded up to a block, when given)."""
    tool = need_tool("genext2fs", "genext2fs")
    data, entries = tar_content_size(tar_path)
    inodes = entries + 64 + max(extra_size, size or 0) // 16384
    # data + directories/metadata overhead (inode tables at 128 bytes, bitmaps, 5% slack)
    needed = data + extra_size + entries * 1024 + inodes * 128 + (1 << 20)
    needed = (needed * 105 // 100 + BLOCK - 1) // BLOCK * BLOCK
    if size is not None:
        size = (size + BLOCK - 1) // BLOCK * BLOCK
        if size < needed - extra_size:
            raise CmbuildError(f"size {size} bytes is too small for the content "
                               f"(about {needed - extra_size} bytes needed)")
    else:
        size = needed
    out = Path(out)
    if out.exists():
        out.unlink()
    cmd = [tool, "-f", "-B", str(BLOCK), "-b", str(size // BLOCK), "-N", str(inodes),
           "-m", "0", "-a", str(tar_path)]
    if label:
        cmd += ["-L", label]
    cmd.append(str(out))
    try:
        _run(cmd, None, "genext2fs")
    except BaseException:
        if out.exists():
            out.unlink()
        raise


def squashfs_to_tar(path: Path) -> bytes:
    """The contents of a squashfs image as one tar (for reading a drive back in tests/audits)."""
    tool = need_tool("sqfs2tar", "squashfs-tools-ng")
    p = subprocess.run([tool, "--no-skip", str(path)], capture_output=True, env=tool_env())
    if p.returncode != 0:
        raise CmbuildError("cannot read squashfs: " + p.stderr.decode(errors="replace").strip(),
                           where=str(path))
    return p.stdout


def make_drive(tar_path: Path, out: Path, fmt: str, compression: str = "none",
               extra_size: int = 0, label: str | None = None, size: int | None = None) -> None:
    """Build a drive of format ``fmt`` ('squashfs' or 'ext2') from a tar file."""
    if fmt == "squashfs":
        if extra_size:
            raise CmbuildError("extra_size needs a writable drive (format = \"ext2\")")
        tar_to_squashfs(tar_path, out, compression)
    elif fmt == "ext2":
        if compression != "none":
            raise CmbuildError("ext2 drives are not compressed (compression = \"none\")")
        tar_to_ext2(tar_path, out, extra_size, label, size)
    else:
        raise CmbuildError(f"unknown drive format {fmt!r}; choose squashfs or ext2")
