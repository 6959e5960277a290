"""Minimal, byte-exact tar reading and writing for layer flattening.

Reading: :func:`iter_tar` walks an *uncompressed, seekable* tar file (ustar, GNU and PAX
variants, as written by Docker, BuildKit, Go's ``archive/tar``, GNU tar and Python's
``tarfile``) and yields :class:`TarEntry` records with raw ``bytes`` names, so non-UTF-8 names
survive untouched. File contents are not read: an entry records where its data starts, and the
caller copies it later. PAX global headers (``g``) are ignored, as Docker and containerd do.

Writing: :class:`TarWriter` writes a canonical PAX tar: a ustar header per entry, preceded by a
``x`` header only when something does not fit (long names, xattrs, large numbers), with
fixed header fields (no uname/gname, no atime/ctime) so that the same tree always gives the same
bytes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator


BLOCK = 512
COPY_CHUNK = 1 << 20
FLUSH_AT = 1 << 20

# Type flags (as single bytes).
REG = b"0"
AREG = b"\0"
LNK = b"1"
SYM = b"2"
CHR = b"3"
BLK = b"4"
DIR = b"5"
FIFO = b"6"
CONT = b"7"
PAX_X = b"x"
PAX_G = b"g"
GNU_LONGNAME = b"L"
GNU_LONGLINK = b"K"

HEADER_ONLY = {LNK, SYM, CHR, BLK, DIR, FIFO}
MAX_OCTAL_7 = 0o7777777
MAX_OCTAL_11 = 0o77777777777
MAX_META_SIZE = 16 << 20  # PAX / GNU long-name data larger than this is refused


@dataclass(slots=True)
class TarEntry:
    """One member of a tar, after PAX and GNU long-name records have been applied."""

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    linkname: bytes
    devmajor: int
    devminor: int
    offset: int  # where the data starts in the file
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def display(name: bytes) -> str:
    """A printable form of a raw tar name, for error messages."""
    return name.decode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def _parse_number(field_: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 when the top bit is set."""
    if field_ and field_[0] & 0x80:
        value = int.from_bytes(field_[1:], "big") | ((field_[0] & 0x3F) << (8 * (len(field_) - 1)))
        if field_[0] & 0x40:  # negative (0xff prefix)
            value -= 1 << (8 * len(field_) - 2)
        return value
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    return int(text, 8)  # ValueError on garbage, reported by the caller


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        want = int(stored, 8) if stored else -1
    except ValueError:
        return False
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if unsigned == want:
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:]) + 8 * 32
    return signed == want


def _cstring(data: bytes) -> bytes:
    return data.split(b"\0", 1)[0]


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Parse PAX extended-header records (``"%d %s=%s\\n"``), length-delimited so that
    values may hold any byte, newlines included."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # trailing NUL padding written by some tools
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise ValueError("PAX record without a length")
        length = int(data[pos:space])
        end = pos + length
        if length <= 0 or end > len(data) or data[end - 1:end] != b"\n":
            raise ValueError("PAX record with a bad length")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise ValueError("PAX record without '='")
        records[key] = value
        pos = end
    return records


def _pax_int(value: bytes) -> int:
    """A PAX decimal, maybe with a fraction (mtime): its integer part."""
    return int(value.split(b".", 1)[0])


class TarFormatError(Exception):
    """A malformed tar. ``entry`` names the entry being read or, when ``after`` is true, the
    last good entry before the damage (None when it is the first)."""

    def __init__(self, message: str, entry: bytes | None = None, after: bool = False):
        super().__init__(message)
        self.entry = entry
        self.after = after


def iter_tar(fd: int, size: int) -> Iterator[TarEntry]:
    """Yield the entries of the uncompressed tar open as ``fd`` (``size`` bytes long).

    Raises :class:`TarFormatError` on a malformed or truncated archive. An archive that ends
    at a block boundary without the end-of-archive blocks is accepted (as Go's reader does).
    """
    pos = 0
    pax: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    last_name: bytes | None = None
    while True:
        block = os.pread(fd, BLOCK, pos)
        if not block:
            if pax or long_name is not None or long_link is not None:
                raise TarFormatError("archive ends after an extended header", last_name, True)
            return
        if len(block) < BLOCK:
            raise TarFormatError("truncated tar header", last_name, True)
        if block == bytes(BLOCK):
            return  # end-of-archive marker
        if not _checksum_ok(block):
            raise TarFormatError(f"bad tar header checksum at byte {pos}", last_name, True)
        typeflag = block[156:157]
        name = _cstring(block[0:100])
        magic = block[257:265]
        if magic[:6] == b"ustar\0":  # POSIX ustar: name may have a prefix
            prefix = _cstring(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        try:
            entry_size = _parse_number(block[124:136])
            mode = _parse_number(block[100:108])
            uid = _parse_number(block[108:116])
            gid = _parse_number(block[116:124])
            mtime = _parse_number(block[136:148])
            devmajor = _parse_number(block[329:337]) if typeflag in (CHR, BLK) else 0
            devminor = _parse_number(block[337:345]) if typeflag in (CHR, BLK) else 0
        except ValueError:
            raise TarFormatError(f"bad numeric field in tar header at byte {pos}",
                                 long_name or name) from None
        if entry_size < 0:
            raise TarFormatError("negative size in tar header", long_name or name)
        data_at = pos + BLOCK
        if typeflag in (PAX_X, PAX_G, GNU_LONGNAME, GNU_LONGLINK):
            if entry_size > MAX_META_SIZE:
                raise TarFormatError("extended header is too large", long_name or name)
            data = os.pread(fd, entry_size, data_at)
            if len(data) < entry_size:
                raise TarFormatError("truncated extended header", long_name or name)
            pos = data_at + _padded(entry_size)
            if typeflag == PAX_X:
                try:
                    pax.update(parse_pax(data))
                except ValueError as e:
                    raise TarFormatError(f"bad PAX header: {e}", long_name or name) from None
            elif typeflag == GNU_LONGNAME:
                long_name = _cstring(data)
            elif typeflag == GNU_LONGLINK:
                long_link = _cstring(data)
            # PAX_G: global headers are ignored, like Docker and containerd do.
            continue

        linkname = _cstring(block[157:257])
        if long_name is not None:
            name = long_name
        if long_link is not None:
            linkname = long_link
        xattrs: dict[bytes, bytes] = {}
        if pax:
            try:
                name, linkname, entry_size, uid, gid, mtime = _apply_pax(
                    pax, name, linkname, entry_size, uid, gid, mtime, xattrs)
            except (ValueError, UnicodeDecodeError):
                raise TarFormatError("bad numeric value in PAX header", name) from None
        if b"\0" in name or b"\0" in linkname:
            raise TarFormatError("NUL byte in a name or link target", name.split(b"\0")[0])
        if typeflag == AREG and name.endswith(b"/"):
            typeflag = DIR
        has_data = typeflag not in HEADER_ONLY
        end = data_at + (entry_size if has_data else 0)
        if end > size:
            raise TarFormatError("truncated tar: entry data runs past the end of the layer", name)
        yield TarEntry(name, typeflag, mode & 0o7777, uid, gid, mtime, entry_size if has_data else 0,
                       linkname, devmajor, devminor, data_at, xattrs)
        last_name = name
        pos = data_at + (_padded(entry_size) if has_data else 0)
        pax = {}
        long_name = long_link = None


def _apply_pax(pax: dict[bytes, bytes], name: bytes, linkname: bytes, size: int, uid: int,
               gid: int, mtime: int, xattrs: dict[bytes, bytes]
               ) -> tuple[bytes, bytes, int, int, int, int]:
    for key, value in pax.items():
        if not value and not key.startswith(b"SCHILY.xattr."):
            continue  # an empty value unsets the keyword: keep the header field
        if key == b"path":
            name = value
        elif key == b"linkpath":
            linkname = value
        elif key == b"size":
            size = int(value)
        elif key == b"uid":
            uid = int(value)
        elif key == b"gid":
            gid = int(value)
        elif key == b"mtime":
            mtime = _pax_int(value)
        elif key.startswith(b"SCHILY.xattr."):
            xattrs[key[len(b"SCHILY.xattr."):]] = value
        elif key.startswith(b"GNU.sparse."):
            raise TarFormatError("sparse files are not supported", name)
    return name, linkname, size, uid, gid, mtime


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
_USTAR_MAGIC = b"ustar\x0000"
_ZERO_DEV = b"0000000\0"
_PAX_NAME = b"././@PaxHeader"


def pax_record(key: bytes, value: bytes) -> bytes:
    """One PAX record ``"<len> <key>=<value>\\n"`` where ``<len>`` counts itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def _ustar_block(name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int,
                 mtime: int, linkname: bytes, devmajor: int, devminor: int) -> bytes:
    buf = bytearray(BLOCK)
    buf[0:len(name)] = name
    buf[100:108] = b"%07o\0" % mode
    buf[108:116] = b"%07o\0" % uid
    buf[116:124] = b"%07o\0" % gid
    buf[124:136] = b"%011o\0" % size
    buf[136:148] = b"%011o\0" % mtime
    buf[148:156] = b"        "
    buf[156:157] = typeflag
    buf[157:157 + len(linkname)] = linkname
    buf[257:265] = _USTAR_MAGIC
    buf[329:337] = b"%07o\0" % devmajor if devmajor else _ZERO_DEV
    buf[337:345] = b"%07o\0" % devminor if devminor else _ZERO_DEV
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def build_header(name: bytes, typeflag: bytes, mode: int, uid: int, gid: int, size: int,
                 mtime: int, linkname: bytes = b"", devmajor: int = 0, devminor: int = 0,
                 xattrs: dict[bytes, bytes] | None = None) -> bytes:
    """The header block(s) of one entry: an optional PAX ``x`` header, then ustar.

    The PAX header holds only what the ustar header cannot: a name or link target over 100
    bytes, numbers too large for their octal field, and xattrs. Records are sorted by key.
    """
    records: dict[bytes, bytes] = {}
    if len(name) > 100:
        records[b"path"] = name
        name = name[:100]
    if len(linkname) > 100:
        records[b"linkpath"] = linkname
        linkname = linkname[:100]
    if (b"path" in records and not _is_utf8(records[b"path"])) or (
            b"linkpath" in records and not _is_utf8(records[b"linkpath"])):
        records[b"hdrcharset"] = b"BINARY"
    if size > MAX_OCTAL_11:
        records[b"size"] = b"%d" % size
        size = 0
    if uid > MAX_OCTAL_7:
        records[b"uid"] = b"%d" % uid
        uid = 0
    if gid > MAX_OCTAL_7:
        records[b"gid"] = b"%d" % gid
        gid = 0
    if mtime > MAX_OCTAL_11:
        records[b"mtime"] = b"%d" % mtime
        mtime = 0
    if devmajor > MAX_OCTAL_7 or devminor > MAX_OCTAL_7:
        raise ValueError("device number too large for a tar header")
    if xattrs:
        for key, value in xattrs.items():
            records[b"SCHILY.xattr." + key] = value
    head = b""
    if records:
        payload = b"".join(pax_record(k, records[k]) for k in sorted(records))
        head = (_ustar_block(_PAX_NAME, PAX_X, 0o644, 0, 0, len(payload), 0, b"", 0, 0)
                + payload + bytes(_padded(len(payload)) - len(payload)))
    return head + _ustar_block(name, typeflag, mode, uid, gid, size, mtime, linkname,
                               devmajor, devminor)


class TarWriter:
    """Writes tar blocks to a binary stream, coalescing small writes. When the stream is a
    pipe, the data of large files moves from the page cache into the pipe with splice(2),
    never through this process's memory."""

    def __init__(self, out: BinaryIO):
        self._out = out
        self._buf = bytearray()
        self._copybuf = bytearray(COPY_CHUNK)
        self._pipe = _pipe_fd(out)
        self.written = 0

    def _put(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._out.write(bytes(self._buf))
            self.written += len(self._buf)
            self._buf.clear()

    def header(self, header: bytes) -> None:
        self._put(header)

    def data_from(self, fd: int, offset: int, size: int) -> None:
        """Copy ``size`` bytes at ``offset`` of ``fd`` as the current entry's data, padded."""
        if size <= 1 << 16:
            chunk = os.pread(fd, size, offset)
            if len(chunk) != size:
                raise OSError(f"short read of {size} bytes at {offset}")
            self._put(chunk)
        else:
            self.flush()
            (self._splice if self._pipe is not None else self._copy)(fd, offset, size)
            self.written += size
        pad = _padded(size) - size
        if pad:
            self._put(bytes(pad))

    def _copy(self, fd: int, offset: int, size: int) -> None:
        view = memoryview(self._copybuf)
        while size:
            n = os.preadv(fd, [view[:min(size, COPY_CHUNK)]], offset)
            if n <= 0:
                raise OSError(f"short read of {size} bytes at {offset}")
            self._out.write(view[:n])
            offset += n
            size -= n

    def _splice(self, fd: int, offset: int, size: int) -> None:
        assert self._pipe is not None
        self._out.flush()
        while size:
            n = os.splice(fd, self._pipe, size, offset_src=offset)
            if n <= 0:
                raise OSError(f"short read of {size} bytes at {offset}")
            offset += n
            size -= n

    def finish(self) -> None:
        """Two zero blocks end the archive."""
        self._put(bytes(2 * BLOCK))
        self.flush()


def _pipe_fd(out: BinaryIO) -> int | None:
    """The file descriptor of ``out`` when it is a pipe that splice(2) can fill, else None."""
    import stat
    try:
        fd = out.fileno()
        return fd if hasattr(os, "splice") and stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (AttributeError, OSError, ValueError):
        return None


def write_entry(w: TarWriter, e: TarEntry, fd: int, name: bytes | None = None,
                linkname: bytes | None = None) -> None:
    """Write entry ``e`` (its header, and its data read from ``fd`` at ``e.offset``), under
    ``name`` and ``linkname`` when given."""
    w.header(build_header(e.name if name is None else name, e.type, e.mode, e.uid, e.gid, e.size,
                          e.mtime, e.linkname if linkname is None else linkname, e.devmajor,
                          e.devminor, e.xattrs))
    if e.size and e.type not in HEADER_ONLY:
        w.data_from(fd, e.offset, e.size)
