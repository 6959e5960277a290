"""The rollups HTTP server (cmbuild/guest/rollups): built for the host with its fake cmio device
(cmio-fake.c) and driven over HTTP, the fake's yield files checked byte for byte against
independent Python computations (keccak-256, the Solidity ABI, libcmt's Merkle tree); and the
riscv64 build, reproducible, static and small.

The expected error texts of the JSON cases are serde_json 1.0.125's own messages (the
reference server's serde_json), collected by running serde_json on each body."""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from test_guest import _elf_facts  # the same ELF reading as init's build test

from cmbuild.guest import build
from cmbuild.store import Store

ROOT = Path(__file__).resolve().parent.parent
RDIR = ROOT / "cmbuild/guest/rollups"
HOST_CC = "gcc"
needs_host_cc = pytest.mark.skipif(shutil.which(HOST_CC) is None, reason="gcc is not installed")
needs_riscv_cc = pytest.mark.skipif(shutil.which(build.CC) is None, reason=f"{build.CC} is not installed")
LIMIT = 5 << 20

# ------------------------------------------------------------------ keccak-256 (Python) ------


def _rc_bit(t: int) -> int:
    """The round-constant LFSR of the Keccak specification."""
    if t % 255 == 0:
        return 1
    r = 1
    for _ in range(t % 255):
        r <<= 1
        if r & 0x100:
            r ^= 0x171
    return r & 1


_RC = [sum(_rc_bit(j + 7 * i) << ((1 << j) - 1) for j in range(7)) for i in range(24)]
_ROT = [[0, 36, 3, 41, 18], [1, 44, 10, 45, 2], [62, 6, 43, 15, 61], [28, 55, 25, 21, 56],
        [27, 20, 39, 8, 14]]
_M = (1 << 64) - 1


def _rol(x: int, n: int) -> int:
    return ((x << n) | (x >> (64 - n))) & _M if n else x


def _keccak_f(a: list[list[int]]) -> list[list[int]]:
    for rc in _RC:
        c = [a[x][0] ^ a[x][1] ^ a[x][2] ^ a[x][3] ^ a[x][4] for x in range(5)]
        d = [c[(x - 1) % 5] ^ _rol(c[(x + 1) % 5], 1) for x in range(5)]
        a = [[a[x][y] ^ d[x] for y in range(5)] for x in range(5)]
        b = [[0] * 5 for _ in range(5)]
        for x in range(5):
            for y in range(5):
                b[y][(2 * x + 3 * y) % 5] = _rol(a[x][y], _ROT[x][y])
        a = [[b[x][y] ^ ((~b[(x + 1) % 5][y]) & b[(x + 2) % 5][y]) for y in range(5)]
             for x in range(5)]
        a[0][0] ^= rc
    return a


def keccak256(data: bytes) -> bytes:
    """Keccak-256 with the original padding (0x01 ... 0x80), as Ethereum uses it."""
    rate = 136
    msg = bytearray(data) + b"\x01" + bytes((-len(data) - 1) % rate)
    msg[-1] |= 0x80
    a = [[0] * 5 for _ in range(5)]
    for off in range(0, len(msg), rate):
        block = msg[off:off + rate]
        for i in range(rate // 8):
            x, y = i % 5, i // 5
            a[x][y] ^= int.from_bytes(block[8 * i:8 * i + 8], "little")
        a = _keccak_f(a)
    return b"".join(a[i % 5][i // 5].to_bytes(8, "little") for i in range(4))


def test_python_keccak_matches_known_vectors() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert keccak256(b"abc").hex() == "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"
    try:
        from Crypto.Hash import keccak as pycryptodome_keccak
    except ImportError:
        return
    for n in (0, 1, 135, 136, 137, 300):
        data = bytes(range(256)) * 2
        h = pycryptodome_keccak.new(digest_bits=256)
        h.update(data[:n])
        assert keccak256(data[:n]) == h.digest()


# ------------------------------------------------------------------ ABI and Merkle (Python) --

def _word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def _bytes_tail(payload: bytes) -> bytes:
    return _word(len(payload)) + payload + bytes(-len(payload) % 32)


def selector(signature: str) -> bytes:
    return keccak256(signature.encode())[:4]


def abi_advance(chain_id: int, app: bytes, sender: bytes, block_number: int, timestamp: int,
                prev_randao: int, index: int, payload: bytes) -> bytes:
    sel = selector("EvmAdvance(uint256,address,address,uint256,uint256,uint256,uint256,bytes)")
    head = (_word(chain_id) + bytes(12) + app + bytes(12) + sender + _word(block_number)
            + _word(timestamp) + _word(prev_randao) + _word(index) + _word(8 * 32))
    return sel + head + _bytes_tail(payload)


def abi_notice(payload: bytes) -> bytes:
    return selector("Notice(bytes)") + _word(32) + _bytes_tail(payload)


def abi_voucher(dest: bytes, value: int, payload: bytes) -> bytes:
    return (selector("Voucher(address,uint256,bytes)") + bytes(12) + dest + _word(value)
            + _word(96) + _bytes_tail(payload))


def abi_delegate_call_voucher(dest: bytes, payload: bytes) -> bytes:
    return (selector("DelegateCallVoucher(address,bytes)") + bytes(12) + dest + _word(64)
            + _bytes_tail(payload))


def merkle_root(outputs: list[bytes], height: int = 63) -> bytes:
    """libcmt's outputs tree: leaves keccak256(output), absent leaves zero, 63 levels."""
    level = [keccak256(o) for o in outputs]
    zero = bytes(32)
    for _ in range(height):
        if len(level) % 2:
            level.append(zero)
        level = [keccak256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
        zero = keccak256(zero + zero)
    return level[0] if level else zero


def test_selectors_in_abi_h() -> None:
    """The selectors written in abi.h are the keccak-256 of the signatures beside them."""
    text = (RDIR / "abi.h").read_text()
    found = re.findall(r"#define SEL_\w+ (0x..), (0x..), (0x..), (0x..)\s+/\* (\S+) \*/", text)
    assert len(found) == 4
    for *sel, signature in found:
        assert bytes(int(b, 16) for b in sel) == selector(signature), signature


# ------------------------------------------------------------------ host builds -------------

@pytest.fixture(scope="module")
def host_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server built for the host with the fake cmio device."""
    if shutil.which(HOST_CC) is None:
        pytest.skip("gcc is not installed")
    work = tmp_path_factory.mktemp("rollups-host")
    names = [n if n != "cmio.c" else "cmio-fake.c" for n in build.ROLLUPS_SOURCES]
    sources = [RDIR / n for n in names] + sorted(RDIR.glob("*.h"))
    build.compile_many(sources, work / "rollups", cc=HOST_CC,
                       extra_flags=[*build.ROLLUPS_CFLAGS, "-fno-pie", "-no-pie"],
                       libs=build.ROLLUPS_LIBS)
    return work / "rollups"


KECCAK_DRIVER = r"""
#include "keccak.h"
int main(int argc, char **argv)
{
    (void)argc; (void)argv;
    struct sb in = {0}, out = {0};
    for (;;) {
        if (!sb_reserve(&in, 65536)) return 1;
        long r = sys_read(0, in.p + in.len, 65536);
        if (r <= 0) break;
        in.len += (size_t)r;
    }
    u8 h[KECCAK_LEN];
    keccak256(in.p, in.len, h);
    sb_hex(&out, h, sizeof h);
    write_all(1, out.p, out.len);
    return 0;
}
"""


@pytest.fixture(scope="module")
def keccak_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which(HOST_CC) is None:
        pytest.skip("gcc is not installed")
    work = tmp_path_factory.mktemp("keccak")
    (work / "driver.c").write_text(KECCAK_DRIVER)
    sources = [work / "driver.c", RDIR / "sys.c", RDIR / "keccak.c", RDIR / "sys.h", RDIR / "keccak.h"]
    build.compile_many(sources, work / "driver", cc=HOST_CC,
                       extra_flags=[*build.ROLLUPS_CFLAGS, "-fno-pie", "-no-pie"],
                       libs=build.ROLLUPS_LIBS)
    return work / "driver"


@needs_host_cc
@pytest.mark.parametrize("data", [
    b"", b"abc", b"The quick brown fox jumps over the lazy dog", b"a" * 135, b"a" * 136,
    b"a" * 137, b"b" * 271, b"b" * 272, b"c" * 273, bytes(range(256)) * 40])
def test_keccak_vectors(keccak_driver: Path, data: bytes) -> None:
    out = subprocess.run([keccak_driver], input=data, capture_output=True, check=True).stdout
    assert out.decode() == keccak256(data).hex()


@needs_host_cc
def test_keccak_known_answers(keccak_driver: Path) -> None:
    def run(d: bytes) -> str:
        return subprocess.run([keccak_driver], input=d, capture_output=True, check=True).stdout.decode()
    assert run(b"") == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    assert run(b"The quick brown fox jumps over the lazy dog") == \
        "4d741b6f1eb29cb2a9b9911c82f56fa8d73b04959d3d9d222895df6c0b28aa15"


# ------------------------------------------------------------------ the server under test ---

class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode()

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers}, {self.body[:200]!r})"


def read_response(sock: socket.socket, buf: bytearray) -> Response:
    """One response from sock (buf keeps bytes read past it)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a response: {bytes(buf)!r}")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    body = bytearray(rest)
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed in a response body")
        body += chunk
    buf[:] = body[n:]
    return Response(status, headers, bytes(body[:n]))


def is_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True when the server has closed the connection (reads EOF or a reset)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


class Server:
    """A running host build with its fake cmio directory."""

    def __init__(self, binary: Path, tmp: Path, env: dict[str, str] | None = None):
        self.dir = tmp / "cmio"
        self.dir.mkdir()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CMIO_FAKE_DIR": str(self.dir)}
        e.update(env or {})
        self.proc = subprocess.Popen([binary, "--address", f"127.0.0.1:{self.port}"], env=e,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.stderr: list[str] = []
        ready = threading.Event()

        def drain() -> None:
            for line in self.proc.stderr:
                self.stderr.append(line.decode(errors="replace").rstrip("\n"))
                if self.stderr[-1].startswith("rollups: listening on"):
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        assert ready.wait(10), "the server did not start"
        assert self.stderr == [f"rollups: listening on 127.0.0.1:{self.port}"], self.stderr

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return s

    def raw(self, data: bytes) -> Response:
        with self.connect() as s:
            s.sendall(data)
            return read_response(s, bytearray())

    def post(self, path: str, body: bytes | str, headers: dict[str, str] | None = None) -> Response:
        if isinstance(body, str):
            body = body.encode()
        h = {"Content-Type": "application/json", "Content-Length": str(len(body)),
             "Connection": "close"}
        h.update(headers or {})
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
        return self.raw(head.encode() + b"\r\n" + body)

    def respond(self, k: int, reason: int, data: bytes = b"") -> None:
        """What the emulator answers to the k-th manual yield."""
        (self.dir / f"response-{k:05d}.bin").write_bytes(f"{reason}\n".encode() + data)

    def yields(self) -> list[tuple[int, str, int, bytes]]:
        out = []
        for p in sorted(self.dir.glob("yield-*.bin")):
            m = re.fullmatch(r"yield-(\d{5})-(manual|automatic)-(\d+)\.bin", p.name)
            assert m, p.name
            out.append((int(m[1]), m[2], int(m[3]), p.read_bytes()))
        return out

    def stop(self) -> None:
        alive = self.proc.poll() is None
        self.proc.kill()
        self.proc.wait()
        assert alive, f"the server died (exit {self.proc.returncode}): {self.stderr}"


@pytest.fixture
def server(host_server: Path, tmp_path: Path):
    s = Server(host_server, tmp_path)
    yield s
    s.stop()


APP = bytes.fromhex("ab" * 20)
SENDER = bytes.fromhex("f39fd6e51aad88f6f4ce6ab8827279cfffb92266")
DEST = bytes.fromhex("1234567890abcdef1234567890abcdef12345678")
EMPTY_ROOT = merkle_root([])


def advance(index: int, payload: bytes) -> bytes:
    return abi_advance(31337, APP, SENDER, 1000 + index, 1700000000 + index, 0xfeed, index, payload)


def advance_json(index: int, payload: bytes) -> str:
    return ('{"request_type":"advance_state","data":{"metadata":{"chain_id":31337,'
            f'"app_contract":"0x{APP.hex()}","msg_sender":"0x{SENDER.hex()}",'
            f'"block_number":{1000 + index},"block_timestamp":{1700000000 + index},'
            f'"prev_randao":"0x{0xfeed:064x}","input_index":{index}}},"payload":"0x{payload.hex()}"}}}}')


def finish(server: Server, status: str = "accept") -> Response:
    return server.post("/finish", f'{{"status":"{status}"}}')


# ------------------------------------------------------------------ the protocol ------------

@needs_host_cc
def test_first_finish_yields_the_empty_root(server: Server) -> None:
    server.respond(0, 1, b"query")
    r = finish(server, "reject")  # the first status is ignored: the template point accepts
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert r.text == '{"request_type":"inspect_state","data":{"payload":"0x7175657279"}}'
    assert server.yields() == [(0, "manual", 1, EMPTY_ROOT)]


@needs_host_cc
def test_advance_outputs_and_root(server: Server) -> None:
    server.respond(0, 0, advance(0, b"hello"))
    r = finish(server)
    assert r.status == 200 and r.text == advance_json(0, b"hello"), r
    assert server.post("/notice", '{"payload":"0xdeadbeef"}').text == '{"index":0}'
    r = server.post("/voucher", f'{{"destination":"0x{DEST.hex()}","value":"0x{5:064x}",'
                                f'"payload":"0x0102"}}')
    assert (r.status, r.headers["content-type"], r.text) == (201, "application/json", '{"index":1}')
    assert server.post("/voucher", f'{{"destination":"0x{DEST.hex().upper()}","payload":"0x"}}').text == \
        '{"index":2}'
    assert server.post("/delegate-call-voucher",
                       f'{{"destination":"0x{DEST.hex()}","payload":"0x{"ff" * 40}"}}').text == '{"index":3}'
    r = server.post("/report", '{"payload":"0x0a0b"}')
    assert (r.status, r.body, "content-type" in r.headers) == (202, b"", False)
    outputs = [abi_notice(bytes.fromhex("deadbeef")), abi_voucher(DEST, 5, b"\x01\x02"),
               abi_voucher(DEST, 0, b""), abi_delegate_call_voucher(DEST, b"\xff" * 40)]
    server.respond(1, 1, b"")
    assert finish(server).status == 200
    assert server.yields() == [
        (0, "manual", 1, EMPTY_ROOT),
        (1, "automatic", 2, outputs[0]), (2, "automatic", 2, outputs[1]),
        (3, "automatic", 2, outputs[2]), (4, "automatic", 2, outputs[3]),
        (5, "automatic", 4, b"\x0a\x0b"),
        (6, "manual", 1, merkle_root(outputs)),
    ]


@needs_host_cc
def test_merkle_root_over_many_inputs(server: Server) -> None:
    counts = [0, 1, 2, 5, 8, 21, 3]
    outputs: list[bytes] = []
    k = 0
    for i, n in enumerate(counts):
        server.respond(k, 0, advance(i, b"x"))
        assert finish(server).status == 200
        k += 1
        for j in range(n):
            payload = f"{i}:{j}".encode()
            r = server.post("/notice", f'{{"payload":"0x{payload.hex()}"}}')
            assert r.text == f'{{"index":{len(outputs)}}}'
            outputs.append(abi_notice(payload))
    server.respond(k, 1, b"")
    assert finish(server).status == 200
    accepted = [y[3] for y in server.yields() if y[1:3] == ("manual", 1)]
    expected, total = [EMPTY_ROOT], 0  # the template point, then after each input
    for n in counts:
        total += n
        expected.append(merkle_root(outputs[:total]))
    assert accepted == expected


@needs_host_cc
def test_reject_restores_the_tree(server: Server) -> None:
    server.respond(0, 0, advance(0, b"a"))
    finish(server)
    kept = [abi_notice(b"kept-0"), abi_notice(b"kept-1")]
    for o in (b"kept-0", b"kept-1"):
        server.post("/notice", f'{{"payload":"0x{o.hex()}"}}')
    server.respond(1, 0, advance(1, b"b"))
    assert finish(server).text == advance_json(1, b"b")
    for i, o in enumerate((b"gone-0", b"gone-1", b"gone-2")):
        assert server.post("/notice", f'{{"payload":"0x{o.hex()}"}}').text == f'{{"index":{2 + i}}}'
    server.respond(2, 0, advance(2, b"c"))
    assert finish(server, "reject").text == advance_json(2, b"c")
    # the rejected input's outputs are gone: indices start again where the last accept left them
    assert server.post("/notice", '{"payload":"0x6e6577"}').text == '{"index":2}'
    server.respond(3, 1, b"")
    finish(server)
    manual = [(y[2], y[3]) for y in server.yields() if y[1] == "manual"]
    assert manual == [(1, EMPTY_ROOT), (1, merkle_root(kept)), (2, b""),
                      (1, merkle_root(kept + [abi_notice(b"new")]))]


@needs_host_cc
def test_inspect_leaves_no_outputs(server: Server) -> None:
    server.respond(0, 0, advance(0, b"a"))
    finish(server)
    server.post("/notice", '{"payload":"0x01"}')
    server.respond(1, 1, b"what")
    assert finish(server).text == '{"request_type":"inspect_state","data":{"payload":"0x77686174"}}'
    assert server.post("/notice", '{"payload":"0x02"}').text == '{"index":1}'
    server.post("/report", '{"payload":"0x03"}')
    server.respond(2, 1, b"")
    finish(server, "reject")  # after an inspect the status is ignored too
    manual = [(y[2], y[3]) for y in server.yields() if y[1] == "manual"]
    root = merkle_root([abi_notice(b"\x01")])
    assert manual == [(1, EMPTY_ROOT), (1, root), (1, root)]


@needs_host_cc
def test_exception_and_gio(server: Server) -> None:
    server.respond(0, 0, advance(0, b"a"))
    finish(server)
    server.respond(1, 42, b"reply")
    r = server.post("/gio", '{"domain":16,"id":"0x0102"}')
    assert (r.status, "content-type" in r.headers) == (202, False)
    assert r.text == ('{"code":42,"data":"0x7265706c79","response":"0x7265706c79",'
                      '"response_code":42}')
    server.respond(2, 0, b"")  # an emulator that resumes after the exception
    r = server.post("/exception", '{"payload":"0x626f6f6d"}')
    assert (r.status, r.body) == (202, b"")
    assert server.yields()[1:] == [(1, "manual", 16, b"\x01\x02"), (2, "manual", 4, b"boom")]


@needs_host_cc
def test_outputs_before_the_first_input_do_not_stay(server: Server) -> None:
    """Outputs outside an advance are not in the emulator's tree, so not in ours either."""
    assert server.post("/notice", '{"payload":"0x01"}').text == '{"index":0}'
    server.respond(0, 1, b"")
    finish(server)
    assert server.yields()[-1] == (1, "manual", 1, EMPTY_ROOT)


@needs_host_cc
@pytest.mark.parametrize("rx,why", [
    (b"\x00\x00\x00\x00" + advance(0, b"x")[4:], "wrong selector"),
    (advance(0, b"x")[:100], "truncated head"),
    (advance(0, b"x")[:-32], "payload shorter than its length"),
    (advance(0, b"x")[:4] + b"\x01" + advance(0, b"x")[5:], "chain id over 64 bits"),
    (advance(0, b"x")[:36] + b"\x01" + advance(0, b"x")[37:], "address over 20 bytes"),
])
def test_bad_advance_input(server: Server, rx: bytes, why: str) -> None:
    server.respond(0, 0, rx)
    r = finish(server)
    assert (r.status, r.headers["content-type"], r.text) == (
        400, "text/plain", "error performing handle_rollup_requests: `rollup error: "
                           "IOCTL_ROLLUP_READ_ADVANCE_STATE returned error -105`"), why
    server.respond(1, 0, advance(1, b"y"))  # the input still counts: accepting it moves on
    assert finish(server).text == advance_json(1, b"y")


@needs_host_cc
def test_unsupported_request_and_failed_yield(server: Server) -> None:
    server.respond(0, 7, b"")
    r = finish(server)
    assert (r.status, r.text) == (400, "error performing handle_rollup_requests: "
                                       "`request type unsupported`")
    r = finish(server)  # no response-00001.bin: the yield fails like an ioctl would
    assert (r.status, r.text) == (400, "error performing initial finish request: `rollup error: "
                                       "IOCTL_ROLLUP_FINISH returned error -2`")


@needs_host_cc
def test_buffers_too_small(host_server: Path, tmp_path: Path) -> None:
    s = Server(host_server, tmp_path, {"CMIO_FAKE_TX_LENGTH": "100", "CMIO_FAKE_RX_LENGTH": "8"})
    try:
        r = s.post("/notice", f'{{"payload":"0x{"00" * 33}"}}')  # 4 + 32 + 32 + 64 > 100
        assert (r.status, r.text) == (400, "unable to insert notice, error details: 'rollup error: "
                                           "IOCTL_ROLLUP_WRITE_NOTICE returned error -105'")
        assert s.post("/notice", f'{{"payload":"0x{"00" * 32}"}}').text == '{"index":0}'
        r = s.post("/voucher", f'{{"destination":"0x{DEST.hex()}","payload":"0x"}}')
        assert r.text == ("unable to insert voucher, error details: 'rollup error: "
                          "IOCTL_ROLLUP_WRITE_OUTPUT returned error -105'")
        r = s.post("/report", f'{{"payload":"0x{"00" * 101}"}}')
        assert r.text == ("unable to insert notice, error details: 'rollup error: "
                          "IOCTL_ROLLUP_WRITE_REPORT returned error -105'")
        r = s.post("/exception", f'{{"payload":"0x{"00" * 101}"}}')
        assert r.text == ("unable to throw exception, error details: 'rollup error: "
                          "IOCTL_ROLLUP_THROW_EXCEPTION returned error -105'")
        s.respond(0, 1, b"0123456789")
        r = finish(s)
        assert r.text == ("error performing handle_rollup_requests: `rollup error: "
                          "IOCTL_ROLLUP_READ_INSPECT_STATE returned error -105`")
        s.respond(1, 20, b"0123456789")
        r = s.post("/gio", '{"domain":16,"id":"0x"}')
        assert r.text == ("unable to process gio request, error details: 'rollup error: "
                          "GIO request returned error -105'")
    finally:
        s.stop()


# ------------------------------------------------------------------ hex and validation -----

NOTICE_HEX = ("unable to insert notice, error details: 'rollup error: Error decoding notice payload, "
              "payload must be in Ethereum hex binary format'")
VOUCHER_HEX = ("unable to insert voucher, error details: 'rollup error: Error decoding voucher "
               "payload, it must be in Ethereum hex binary format'")
D = "0x" + DEST.hex()


@needs_host_cc
@pytest.mark.parametrize("path,body,status,ctype,text", [
    ("/notice", '{"payload":"0xabc"}', 400, "text/plain", NOTICE_HEX),
    ("/notice", '{"payload":"0xzz"}', 400, "text/plain", NOTICE_HEX),
    ("/notice", '{"payload":""}', 400, "text/plain", NOTICE_HEX),
    ("/notice", '{"payload":"0"}', 400, "text/plain", NOTICE_HEX),
    ("/notice", '{"payload":"0x"}', 201, "application/json", '{"index":0}'),
    ("/report", '{"payload":"0x1"}', 400, "text/plain",
     "unable to insert notice, error details: 'rollup error: Error decoding report payload, "
     "payload must be in Ethereum hex binary format'"),
    ("/exception", '{"payload":"0xq0"}', 400, "text/plain",
     "unable to throw exception, error details: 'rollup error: Error decoding report payload, "
     "payload must be in Ethereum hex binary format'"),
    ("/gio", '{"domain":16,"id":"0x0"}', 400, "text/plain",
     "unable to process gio request, error details: 'rollup error: Error decoding gio request "
     "payload, payload must be in Ethereum hex binary format'"),
    ("/gio", '{"domain":15,"id":"0x"}', 400, None,
     'Validation errors in fields:\n\tdomain: Validation error: range [{"min": Number(16), '
     '"value": Number(15)}]'),
    ("/voucher", f'{{"destination":"{D}","payload":"0x0"}}', 400, "text/plain", VOUCHER_HEX),
    ("/voucher", f'{{"destination":"{D}","value":"0x1","payload":"0x"}}', 400, "text/plain",
     "unable to insert voucher, error details: 'Odd number of digits'"),
    ("/voucher", f'{{"destination":"{D}","value":"ab0x1234","payload":"0x"}}', 400, "text/plain",
     "unable to insert voucher, error details: 'Invalid character 'x' at position 1'"),
    ("/voucher", '{"destination":"0x1234","payload":"0x"}', 400, "text/plain", "address not valid"),
    ("/voucher", f'{{"destination":"0x{"z" * 36}0x12","payload":"0x"}}', 400, "text/plain",
     "unable to insert voucher, error details: 'Invalid character 'z' at position 0'"),
    ("/voucher", '{"destination":"zz","value":"0x1g","payload":"0x"}', 400, None,
     'Validation errors in fields:\n\tdestination: Validation error: regex [{"value": String("zz")}]'
     '\n\tvalue: Validation error: regex [{"value": String("0x1g")}]'),
    ("/voucher", f'{{"destination":"{D}","value":"0x{"1" * 65}","payload":"0x"}}', 400, None,
     'Validation errors in fields:\n\tvalue: Validation error: regex [{"value": String("0x'
     + "1" * 65 + '")}]'),
    ("/delegate-call-voucher", f'{{"destination":"{D}","payload":"0x0"}}', 400, "text/plain",
     VOUCHER_HEX),
    ("/delegate-call-voucher", '{"destination":"0x12","payload":"0x"}', 400, "text/plain",
     "address not valid"),
    ("/delegate-call-voucher", '{"destination":"\\"q","payload":"0x"}', 400, None,
     'Validation errors in fields:\n\tdestination: Validation error: regex [{"value": '
     'String("\\"q")}]'),
    ("/finish", '{"status":"maybe"}', 400, "text/plain", "status must be 'accept' or 'reject'"),
])
def test_reference_errors(server: Server, path: str, body: str, status: int, ctype: str | None,
                          text: str) -> None:
    r = server.post(path, body)
    assert (r.status, r.headers.get("content-type"), r.text) == (status, ctype, text)


@needs_host_cc
def test_payload_without_0x_is_cut_like_the_reference(server: Server) -> None:
    """The reference decodes payload[2..] whatever the first two characters are."""
    assert server.post("/notice", '{"payload":"deadbeef"}').text == '{"index":0}'
    assert server.yields()[-1][3] == abi_notice(bytes.fromhex("adbeef"))


# serde_json 1.0.125's messages for these bodies (see the module docstring)
JSON_CASES = [
    ("/finish", "", "EOF while parsing a value at line 1 column 0"),
    ("/finish", "{}", "missing field `status` at line 1 column 2"),
    ("/finish", '{"status": 1}', "invalid type: integer `1`, expected a string at line 1 column 12"),
    ("/finish", '{"status":"accept"} x', "trailing characters at line 1 column 21"),
    ("/finish", '{"status":"accept",}', "trailing comma at line 1 column 20"),
    ("/finish", "[1]", "invalid type: integer `1`, expected a string at line 1 column 2"),
    ("/finish", "[]", "invalid length 0, expected struct FinishRequest with 1 element at line 1 column 2"),
    ("/finish", "null", "invalid type: null, expected struct FinishRequest at line 1 column 4"),
    ("/finish", '"accept"', 'invalid type: string "accept", expected struct FinishRequest at line 1 column 8'),
    ("/finish", '{"status":"a","status":"b"}', "duplicate field `status` at line 1 column 22"),
    ("/finish", '  {  "status"  :  "x"  ,  "status" : 1 }', "duplicate field `status` at line 1 column 35"),
    ("/finish", '{"status":"\\ud800"}', "unexpected end of hex escape at line 1 column 18"),
    ("/finish", '{"status":"\\udc00"}', "lone leading surrogate in hex escape at line 1 column 17"),
    ("/finish", '{"status":"a\x01"}',
     "control character (\\u0000-\\u001F) found while parsing a string at line 1 column 13"),
    ("/finish", '{"status":"\\x"}', "invalid escape at line 1 column 13"),
    ("/finish", '{"status":"abc', "EOF while parsing a string at line 1 column 14"),
    ("/finish", '{"status"}', "expected `:` at line 1 column 10"),
    ("/finish", '{"status":"accept"', "EOF while parsing an object at line 1 column 18"),
    ("/finish", "{1:2}", "key must be a string at line 1 column 2"),
    ("/finish", '{"a":tru}', "expected ident at line 1 column 9"),
    ("/finish", '["accept","more"]', "trailing characters at line 1 column 11"),
    ("/finish", '\n\n  {"status":\n  nul}', "expected ident at line 4 column 6"),
    ("/finish", '{"status":{"x":1}}', "invalid type: map, expected a string at line 1 column 10"),
    ("/finish", '{"status":[1,2}', "invalid type: sequence, expected a string at line 1 column 10"),
    ("/finish", '{"status":-01}', "invalid number at line 1 column 13"),
    ("/finish", '{"status":1.}', "invalid number at line 1 column 13"),
    ("/finish", '{"status":true}', "invalid type: boolean `true`, expected a string at line 1 column 14"),
    ("/finish", '{"x":{"a" 1},"status":"accept"}', "expected `:` at line 1 column 11"),
    ("/finish", '{"x":[1 2],"status":"accept"}', "expected `,` or `]` at line 1 column 9"),
    ("/finish", '{"x":"\\q","status":"accept"}', "invalid escape at line 1 column 8"),
    ("/finish", '{"status":"accept"}\n\n x', "trailing characters at line 3 column 2"),
    ("/voucher", '{"destination":"0x1","value":"0x2"}', "missing field `payload` at line 1 column 35"),
    ("/voucher", '["0x1"]', "invalid length 1, expected struct Voucher with 3 elements at line 1 column 7"),
    ("/voucher", '{"destination":5,"payload":"0x"}',
     "invalid type: integer `5`, expected a string at line 1 column 16"),
    ("/voucher", '{"destination":"0x1","value":7,"payload":"0x"}',
     "invalid type: integer `7`, expected a string at line 1 column 30"),
    ("/gio", '{"domain":70000,"id":"0x"}', "invalid value: integer `70000`, expected u16 at line 1 column 15"),
    ("/gio", '{"domain":-1,"id":"0x"}', "invalid value: integer `-1`, expected u16 at line 1 column 12"),
    ("/gio", '{"domain":"16","id":"0x"}', 'invalid type: string "16", expected u16 at line 1 column 14'),
    ("/gio", '{"domain":1e400,"id":"0x"}', "number out of range at line 1 column 15"),
    ("/gio", '{"id":"0x"}', "missing field `domain` at line 1 column 11"),
    ("/gio", '{"domain":16,"id":"0x","domain":17}', "duplicate field `domain` at line 1 column 31"),
    ("/gio", "[16]", "invalid length 1, expected struct GIORequest with 2 elements at line 1 column 4"),
    ("/gio", '{"domain":1.5,"id":"0x"}', "invalid type: floating point `1.5`, expected u16 at line 1 column 13"),
    ("/gio", '{"domain":1e20,"id":"0x"}', "invalid type: floating point `1e20`, expected u16 at line 1 column 14"),
    ("/gio", '{"domain":-0,"id":"0x"}', "invalid type: floating point `-0.0`, expected u16 at line 1 column 12"),
    ("/gio", '{"domain":123456789012345678901,"id":"0x"}',
     "invalid type: floating point `1.2345678901234567e20`, expected u16 at line 1 column 31"),
    ("/gio", '{"domain":0.00001,"id":"0x"}',
     "invalid type: floating point `0.00001`, expected u16 at line 1 column 17"),
    ("/gio", '{"domain":1e-7,"id":"0x"}', "invalid type: floating point `1e-7`, expected u16 at line 1 column 14"),
    ("/gio", '{"domain":1e15,"id":"0x"}',
     "invalid type: floating point `1000000000000000.0`, expected u16 at line 1 column 14"),
    ("/gio", '{"domain":1.7976931348623157e308,"id":""}',
     "invalid type: floating point `1.7976931348623157e308`, expected u16 at line 1 column 32"),
    ("/gio", '{"domain":5e-324,"id":""}', "invalid type: floating point `5e-324`, expected u16 at line 1 column 16"),
    ("/gio", '{"domain":2.5e-5,"id":""}', "invalid type: floating point `0.000025`, expected u16 at line 1 column 16"),
]


@needs_host_cc
@pytest.mark.parametrize("path,body,message", JSON_CASES)
def test_json_errors_are_serde_json_s(server: Server, path: str, body: str, message: str) -> None:
    r = server.post(path, body.encode("utf-8", "surrogatepass"))
    assert (r.status, "content-type" in r.headers, r.text) == (
        400, False, "Payload error: Json deserialize error: " + message)
    assert server.yields() == []  # nothing reached the machine


@needs_host_cc
def test_json_accepts_what_serde_json_accepts(server: Server) -> None:
    bodies = ['["accept"]', '{"x":[1,{"y":[true,null,-0.5e+3]}],"status":"accept","z":"\\u00e9"}',
              ' \t\r\n{ "status" : "acc\\u0065pt" } \n']
    for k, body in enumerate(bodies):
        server.respond(k, 1, b"")
        assert server.post("/finish", body).status == 200, body
    assert server.post("/voucher", f'["{D}",null,"0x01"]').text == '{"index":0}'
    server.respond(3, 9, b"")
    assert server.post("/gio", '{"domain":65535,"id":"0x"}').status == 202


def _serde_f64(text: str) -> float:
    """serde_json 1.0.125's number parsing (without float_roundtrip), for the numbers below."""
    pow10 = [float(f"1e{k}") for k in range(309)]
    positive = not text.startswith("-")
    s = text.lstrip("-")
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?", s)
    int_part, frac, exp = m[1], m[2] or "", int(m[3] or 0)
    top = 2**64 - 1

    def overflow(a: int, b: int) -> bool:
        return a >= top // 10 and (a > top // 10 or b > top % 10)

    significand, exponent, long_integer = int(int_part[0]), 0, False
    for c in map(int, int_part[1:]):
        if long_integer or overflow(significand, c):
            long_integer = True
            exponent += 1  # parse_long_integer: the digit only scales
        else:
            significand = significand * 10 + c
    decimal_overflow = False
    for c in map(int, frac):
        if decimal_overflow or overflow(significand, c):
            decimal_overflow = True  # parse_decimal_overflow: the rest is dropped
            continue
        significand = significand * 10 + c
        exponent -= 1
    exponent += exp
    f = float(significand)
    while True:
        if abs(exponent) < 309:
            f = f * pow10[exponent] if exponent >= 0 else f / pow10[-exponent]
            break
        if f == 0.0:
            break
        if exponent >= 0:
            return float("inf")  # serde_json: number out of range
        f /= 1e308
        exponent += 308
    return f if positive else -f


def _ryu(f: float) -> str:
    """ryu's formatting of the shortest round-trip digits (Python's repr has the same digits)."""
    if f == 0:
        return "-0.0" if str(f).startswith("-") else "0.0"
    sign, digits, exp = Decimal(repr(abs(f))).normalize().as_tuple()
    d = "".join(map(str, digits))
    length, k = len(d), exp
    kk = length + k
    out = "-" if f < 0 else ""
    if 0 <= k and kk <= 16:
        return out + d + "0" * (kk - length) + ".0"
    if 0 < kk <= 16:
        return out + d[:kk] + "." + d[kk:]
    if -5 < kk <= 0:
        return out + "0." + "0" * -kk + d
    return out + d[0] + ("." + d[1:] if length > 1 else "") + f"e{kk - 1}"


@needs_host_cc
def test_float_messages_follow_ryu(server: Server) -> None:
    """Random numbers in a u16 field: the message shows the value serde_json parsed, printed the
    way ryu prints it; computed here independently (Python's shortest repr, ryu's layout)."""
    import random
    rnd = random.Random(20240601)
    texts = []
    for _ in range(150):
        kind = rnd.random()
        if kind < 0.4:
            x = struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(64)))[0]
            if x != x or abs(x) == float("inf"):
                continue
            texts.append(repr(x).replace("e+", "e"))
        elif kind < 0.7:
            texts.append(f"{rnd.randint(0, 10**rnd.randint(1, 22))}.{rnd.randint(0, 10**rnd.randint(1, 12))}"
                         f"e{rnd.randint(-320, 300)}")
        else:
            texts.append(f"{rnd.random() * 10**rnd.randint(-8, 24):.{rnd.randint(1, 17)}g}".replace("e+", "e"))
    sock = server.connect()
    buf = bytearray()
    for t in texts:
        if "e" not in t and "." not in t:
            continue
        body = f'{{"domain":{t},"id":"0x"}}'.encode()
        sock.sendall(b"POST /gio HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        r = read_response(sock, buf)
        f = _serde_f64(t)
        if abs(f) == float("inf"):
            assert "number out of range" in r.text, (t, r.text)
            continue
        column = len(body) - len(',"id":"0x"}')
        assert r.text == (f"Payload error: Json deserialize error: invalid type: floating point "
                          f"`{_ryu(f)}`, expected u16 at line 1 column {column}"), t
    sock.close()


# ------------------------------------------------------------------ HTTP --------------------

BAD_FINISH = b'{}'
BAD_FINISH_TEXT = "Payload error: Json deserialize error: missing field `status` at line 1 column 2"


def request(path: str = "/finish", body: bytes = BAD_FINISH, extra: str = "", version: str = "1.1",
            method: str = "POST") -> bytes:
    return (f"{method} {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


@needs_host_cc
def test_keep_alive_pipelining_and_close(server: Server) -> None:
    s = server.connect()
    buf = bytearray()
    for _ in range(3):  # keep-alive: one connection, several requests
        s.sendall(request())
        r = read_response(s, buf)
        assert (r.status, r.text, "connection" in r.headers) == (400, BAD_FINISH_TEXT, False)
    s.sendall(request() + request(path="/nothing") + request())  # pipelined
    assert [read_response(s, buf).status for _ in range(3)] == [400, 404, 400]
    s.sendall(request(extra="Connection: close\r\n"))
    r = read_response(s, buf)
    assert r.headers["connection"] == "close" and r.text == BAD_FINISH_TEXT
    assert is_closed(s)
    s.close()
    # HTTP/1.0: closes unless asked to keep the connection
    s = server.connect()
    s.sendall(request(version="1.0"))
    assert read_response(s, bytearray()).status == 400 and is_closed(s)
    s.close()
    s = server.connect()
    s.sendall(request(version="1.0", extra="Connection: keep-alive\r\n") * 2)
    buf = bytearray()
    assert [read_response(s, buf).headers.get("connection") for _ in range(2)] == ["keep-alive"] * 2
    s.close()


@needs_host_cc
def test_idle_connection_does_not_block_others(server: Server) -> None:
    idle = server.connect()
    idle.sendall(request())
    buf = bytearray()
    assert read_response(idle, buf).status == 400
    half = server.connect()
    half.sendall(b"POST /finish HTTP/1.1\r\nContent-Le")  # an unfinished request too
    for _ in range(20):  # clients one after another while those two stay open
        assert server.raw(request()).text == BAD_FINISH_TEXT
    idle.sendall(request())
    assert read_response(idle, buf).status == 400
    half.close()
    idle.close()


@needs_host_cc
def test_chunked_bodies(server: Server) -> None:
    body = b'{"status": 1}'
    chunks = b"4;ext=1\r\n" + body[:4] + b"\r\n" + b"%x\r\n" % (len(body) - 4) + body[4:] + b"\r\n0\r\n\r\n"
    head = b"POST /finish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    want = "Payload error: Json deserialize error: invalid type: integer `1`, expected a string at line 1 column 12"
    s = server.connect()
    buf = bytearray()
    s.sendall(head + b"\r\n" + chunks)
    assert read_response(s, buf).text == want
    s.sendall(head + b"\r\n")  # the body in pieces
    for i in range(0, len(chunks), 3):
        s.sendall(chunks[i:i + 3])
        time.sleep(0.002)
    assert read_response(s, buf).text == want
    s.sendall(head + b"Content-Length: 3\r\n\r\n" + chunks)  # chunked wins over Content-Length
    assert read_response(s, buf).text == want
    s.sendall(head + b"\r\n" + b"zz\r\n")  # bad framing: 400 and the connection closes
    r = read_response(s, buf)
    assert (r.status, r.body) == (400, b"") and is_closed(s)
    s.close()


@needs_host_cc
def test_expect_100_continue(server: Server) -> None:
    s = server.connect()
    s.sendall(b"POST /finish HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    buf = bytearray()
    assert read_response(s, buf).status == 100
    s.sendall(b"{}")
    assert read_response(s, buf).text == BAD_FINISH_TEXT
    s.close()


@needs_host_cc
@pytest.mark.parametrize("raw,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"POST /finish HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}", 400),
    (b"POST  /finish HTTP/1.1\r\n\r\n", 400),
    (b"POST /finish HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"POST /finish HTTP/1.1\r\nName : v\r\n\r\n", 400),
    (b"POST /finish HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
    (b"POST /finish HTTP/1.1\r\n folded\r\n\r\n", 400),
    (b"POST /finish HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
    (b"POST /finish HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}", 400),
    (b"POST /finish HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 400),
    (b"POST /finish HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST /finish HTTP/1.0\r\n\r\n", 400),  # an HTTP/1.0 POST must say its length
    (b"POST /f\xc3\xa9 HTTP/1.1\r\n\r\n", 400),
    (b"POST /finish HTTP/1.1\r\nX: " + b"a" * 140000 + b"\r\n\r\n", 431),
    (b"POST /finish HTTP/1.1\r\n" + b"X: y\r\n" * 97 + b"\r\n", 431),
])
def test_malformed_requests(server: Server, raw: bytes, status: int) -> None:
    s = server.connect()
    try:
        s.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = read_response(s, bytearray())
    assert (r.status, r.body, r.headers.get("connection")) == (status, b"", "close")
    assert is_closed(s)
    s.close()
    assert server.raw(request()).text == BAD_FINISH_TEXT  # still serving


@needs_host_cc
def test_body_limits(server: Server) -> None:
    s = server.connect()  # a length over the limit is refused without reading the body
    s.sendall(b"POST /notice HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 1))
    r = read_response(s, bytearray())
    assert (r.status, r.text) == (400, f"Payload error: JSON payload ({LIMIT + 1} bytes) is larger "
                                       f"than allowed (limit: {LIMIT} bytes).")
    assert is_closed(s)
    s.close()
    s = server.connect()
    s.sendall(b"POST /notice HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    try:
        for _ in range(6):
            s.sendall(b"100000\r\n" + b"a" * 0x100000 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    r = read_response(s, bytearray())
    assert (r.status, r.text) == (400, f"Payload error: JSON payload has exceeded limit ({LIMIT} bytes).")
    s.close()
    payload = b"\x5a" * (LIMIT // 2 - 40)  # just under the limit: read (then too big for tx)
    body = b'{"payload":"0x' + payload.hex().encode() + b'"}'
    assert len(body) <= LIMIT
    r = server.post("/report", body)
    assert (r.status, r.text) == (400, "unable to insert notice, error details: 'rollup error: "
                                       "IOCTL_ROLLUP_WRITE_REPORT returned error -105'")
    payload = bytes(range(256)) * 4096  # 1 MiB
    r = server.post("/report", b'{"payload":"0x' + payload.hex().encode() + b'"}')
    assert r.status == 202 and server.yields()[-1] == (0, "automatic", 4, payload)


@needs_host_cc
@pytest.mark.parametrize("line,status", [
    (b"GET /finish", 404), (b"POST /finish/", 404), (b"POST /unknown", 404), (b"PUT /notice", 404),
    (b"POST /finish?x=1", 400), (b"POST /fin%69sh", 400), (b"POST http://127.0.0.1:5004/finish", 400),
    (b"POST /fin%2fish", 404),
])
def test_routes(server: Server, line: bytes, status: int) -> None:
    r = server.raw(line + b" HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
    assert r.status == status
    if status == 404:
        assert r.body == b""
    else:
        assert r.text == BAD_FINISH_TEXT


@needs_host_cc
def test_clients_that_vanish(server: Server) -> None:
    for data in (b"POST /fin", b"POST /finish HTTP/1.1\r\nContent-Length: 10\r\n\r\n{",
                 b"POST /finish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
        s = server.connect()
        s.sendall(data)
        s.close()
    s = server.connect()  # a client that sends and resets without reading
    s.sendall(request() * 50)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    assert server.raw(request()).text == BAD_FINISH_TEXT


# ------------------------------------------------------------------ failures ----------------

@needs_host_cc
def test_fatal_errors_have_codes(host_server: Path, tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "CMIO_FAKE_DIR": str(tmp_path)}

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([host_server, *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=10)

    p = run("--bogus")
    assert p.returncode == 90 and "rollups: error: unknown argument: --bogus" in p.stderr
    p = run("--address", "nowhere")
    assert p.returncode == 90 and "rollups: error: bad --address" in p.stderr
    p = run("--address", "127.0.0.1:0", CMIO_FAKE_DIR=str(tmp_path / "missing"))
    assert p.returncode == 91
    assert p.stderr.strip() == ("rollups: error: cannot open the fake cmio device (CMIO_FAKE_DIR): "
                                "No such file or directory")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        p = run("--address", f"127.0.0.1:{busy.getsockname()[1]}")
    assert p.returncode == 93
    assert p.stderr.strip() == "rollups: error: cannot bind the listening socket: Address already in use"
    p = run("--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: rollups")


def _table_from_source(text: str, codes: str) -> dict[int, str]:
    header = text.split("*/", 1)[0]
    return {int(m.group(1)): m.group(2).strip()
            for m in re.finditer(r"^ \*\s+(" + codes + r")  (.+)$", header, re.M)}


def test_exit_codes_documented_and_distinct() -> None:
    """The header table of rollups.c matches its enum; the codes are a decade of their own,
    apart from init's, the shim's and the host's 124/125."""
    text = (RDIR / "rollups.c").read_text()
    enum = {int(v) for v in re.findall(r"E_[A-Z_]+ = (\d+),", text)}
    assert enum == set(_table_from_source(text, r"9[0-9]"))
    guest = ROOT / "cmbuild/guest"
    others = {int(v) for v in re.findall(r"E_[A-Z_]+ = (\d+)", (guest / "init.c").read_text())}
    others |= {int(v) for v in re.findall(r"E_[A-Z]+ = (\d+)", (guest / "shim.c").read_text())}
    assert not enum & (others | {124, 125})
    assert all(90 <= c < 100 for c in enum)


# ------------------------------------------------------------------ the riscv64 build ------

@needs_riscv_cc
def test_riscv_build_is_reproducible_static_and_small(tmp_path: Path) -> None:
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    da = build.build_rollups(a)
    assert build.build_rollups(b, force=True) == da
    assert build.build_rollups(a, force=True) == da  # again, in another scratch directory
    data = a.object_path(da).read_bytes()
    assert _elf_facts(data) == {"machine": 243, "interp": False, "dynamic": False}
    assert b".note.gnu.build-id" not in data
    assert str(a.root).encode() not in data and str(ROOT).encode() not in data
    assert b"/dev/cmio" in data and b"CMIO_FAKE_DIR" not in data  # the real device, not the fake
    assert len(data) < 200_000


@needs_riscv_cc
def test_riscv_build_cached_by_key(tmp_path: Path) -> None:
    s = Store(tmp_path)
    d = build.build_rollups(s)
    before = sorted(p.name for p in s.keys.iterdir())
    assert build.build_rollups(s) == d
    assert sorted(p.name for p in s.keys.iterdir()) == before
