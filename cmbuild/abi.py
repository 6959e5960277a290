"""Keccak-256 and the few Solidity ABI encodings of Cartesi's rollups protocol, host side.

The machine receives an advance-state input as the ABI call
``EvmAdvance(uint256 chainId, address appContract, address msgSender, uint256 blockNumber,
uint256 blockTimestamp, uint256 prevRandao, uint256 index, bytes payload)`` and emits outputs as
``Notice(bytes)``, ``Voucher(address,uint256,bytes)`` and ``DelegateCallVoucher(address,bytes)``
(the selectors are the first 4 bytes of the Keccak-256 of each signature). This module encodes
inputs for ``cartesi-machine --cmio-advance-state`` and decodes the outputs it writes.

Keccak-256 is the original Keccak (padding 0x01), not NIST's SHA3-256 (padding 0x06), so
:mod:`hashlib` cannot be used; this is a plain implementation of Keccak-f[1600].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import CmbuildError

# ----- Keccak-256 ----------------------------------------------------------------------------
_RC = [0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
       0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
       0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
       0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
       0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
       0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008]
_ROT = [[0, 36, 3, 41, 18], [1, 44, 10, 45, 2], [62, 6, 43, 15, 61], [28, 55, 25, 21, 56],
        [27, 20, 39, 8, 14]]
_M = (1 << 64) - 1


def _rol(v: int, n: int) -> int:
    return ((v << n) | (v >> (64 - n))) & _M if n else v


def _keccak_f(a: list[list[int]]) -> None:
    for rc in _RC:
        c = [a[x][0] ^ a[x][1] ^ a[x][2] ^ a[x][3] ^ a[x][4] for x in range(5)]
        d = [c[(x - 1) % 5] ^ _rol(c[(x + 1) % 5], 1) for x in range(5)]
        for x in range(5):
            for y in range(5):
                a[x][y] ^= d[x]
        b = [[0] * 5 for _ in range(5)]
        for x in range(5):
            for y in range(5):
                b[y][(2 * x + 3 * y) % 5] = _rol(a[x][y], _ROT[x][y])
        for x in range(5):
            for y in range(5):
                a[x][y] = b[x][y] ^ ((~b[(x + 1) % 5][y]) & b[(x + 2) % 5][y])
        a[0][0] ^= rc


def keccak256(data: bytes) -> bytes:
    rate = 136
    msg = bytearray(data)
    msg.append(0x01)
    while len(msg) % rate:
        msg.append(0)
    msg[-1] |= 0x80
    a = [[0] * 5 for _ in range(5)]
    for off in range(0, len(msg), rate):
        block = msg[off:off + rate]
        for i in range(rate // 8):
            a[i % 5][i // 5] ^= int.from_bytes(block[8 * i:8 * i + 8], "little")
        _keccak_f(a)
    out = b"".join(a[i % 5][i // 5].to_bytes(8, "little") for i in range(4))
    return out


def selector(signature: str) -> bytes:
    return keccak256(signature.encode())[:4]


# ----- ABI -----------------------------------------------------------------------------------
EVM_ADVANCE = "EvmAdvance(uint256,address,address,uint256,uint256,uint256,uint256,bytes)"
NOTICE = "Notice(bytes)"
VOUCHER = "Voucher(address,uint256,bytes)"
DELEGATE_CALL_VOUCHER = "DelegateCallVoucher(address,bytes)"


def _word(n: int) -> bytes:
    if not 0 <= n < 1 << 256:
        raise CmbuildError(f"{n} does not fit a uint256")
    return n.to_bytes(32, "big")


def _address(a: str | bytes) -> bytes:
    raw = a if isinstance(a, bytes) else parse_hex(a, "address")
    if len(raw) != 20:
        raise CmbuildError(f"an address is 20 bytes, got {len(raw)}: {a!r}")
    return bytes(12) + raw


def _bytes_tail(data: bytes) -> bytes:
    return _word(len(data)) + data + bytes(-len(data) % 32)


def parse_hex(text: str, what: str = "value") -> bytes:
    t = text[2:] if text[:2] in ("0x", "0X") else text
    try:
        return bytes.fromhex(t)
    except ValueError:
        raise CmbuildError(f"{what} is not hex: {text!r}") from None


@dataclass
class Metadata:
    """An advance input's metadata, as the InputBox would give it."""

    chain_id: int = 31337
    app_contract: str = "0x" + "ab" * 20
    msg_sender: str = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266"  # a local test chain's first account
    block_number: int = 0
    block_timestamp: int = 0
    prev_randao: int = 0
    input_index: int = 0


def encode_advance(m: Metadata, payload: bytes) -> bytes:
    """The rx buffer of an advance: ``EvmAdvance(...)`` ABI-encoded, selector first."""
    head = (_word(m.chain_id) + _address(m.app_contract) + _address(m.msg_sender)
            + _word(m.block_number) + _word(m.block_timestamp) + _word(m.prev_randao)
            + _word(m.input_index) + _word(8 * 32))
    return selector(EVM_ADVANCE) + head + _bytes_tail(payload)


def _read_bytes(body: bytes, offset_word: int, what: str) -> bytes:
    if offset_word + 32 > len(body):
        raise CmbuildError(f"{what}: truncated ABI data")
    length = int.from_bytes(body[offset_word:offset_word + 32], "big")
    start = offset_word + 32
    if start + length > len(body):
        raise CmbuildError(f"{what}: the bytes field runs past the end")
    return body[start:start + length]


def decode_output(data: bytes) -> dict[str, Any]:
    """An output as the machine emitted it: ``{"type": "notice", "payload": "0x.."}``,
    ``{"type": "voucher", "destination", "value", "payload"}`` or
    ``{"type": "delegate_call_voucher", "destination", "payload"}``."""
    sel, body = data[:4], data[4:]

    def word(i: int) -> int:
        if 32 * i + 32 > len(body):
            raise CmbuildError("truncated ABI data in an output")
        return int.from_bytes(body[32 * i:32 * i + 32], "big")

    def addr(i: int) -> str:
        return "0x" + body[32 * i + 12:32 * i + 32].hex()

    if sel == selector(NOTICE):
        return {"type": "notice", "payload": "0x" + _read_bytes(body, word(0), "notice").hex()}
    if sel == selector(VOUCHER):
        return {"type": "voucher", "destination": addr(0), "value": "0x" + f"{word(1):064x}",
                "payload": "0x" + _read_bytes(body, word(2), "voucher").hex()}
    if sel == selector(DELEGATE_CALL_VOUCHER):
        return {"type": "delegate_call_voucher", "destination": addr(0),
                "payload": "0x" + _read_bytes(body, word(1), "delegate call voucher").hex()}
    raise CmbuildError(f"unknown output selector 0x{sel.hex()}")


def encode_output(kind: str, payload: bytes, destination: str | None = None, value: int = 0) -> bytes:
    """The ABI encoding of an output (for tests and for checking what a machine emitted)."""
    if kind == "notice":
        return selector(NOTICE) + _word(32) + _bytes_tail(payload)
    if kind == "voucher":
        return selector(VOUCHER) + _address(destination or "") + _word(value) + _word(96) + _bytes_tail(payload)
    if kind == "delegate_call_voucher":
        return selector(DELEGATE_CALL_VOUCHER) + _address(destination or "") + _word(64) + _bytes_tail(payload)
    raise CmbuildError(f"unknown output kind {kind!r}")
