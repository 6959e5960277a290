"""cmbuild.abi: Keccak-256 and the rollups ABI encodings, against independent references
(pycryptodome's Keccak, known selectors, hand-laid ABI words)."""

from __future__ import annotations

import os

import pytest
from Crypto.Hash import keccak as reference_keccak

from cmbuild.abi import (Metadata, decode_output, encode_advance, encode_output, keccak256,
                         selector)
from cmbuild.errors import CmbuildError


def _ref(data: bytes) -> bytes:
    return reference_keccak.new(digest_bits=256, data=data).digest()


@pytest.mark.parametrize("data, hexdigest", [
    (b"", "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"),
    (b"abc", "4e03657aea45a94fc7d47ba826c8d667c0d1e6e33a64a036ec44f58fa12d6c45"),
    (b"The quick brown fox jumps over the lazy dog",
     "4d741b6f1eb29cb2a9b9911c82f56fa8d73b04959d3d9d222895df6c0b28aa15"),
])
def test_keccak_vectors(data: bytes, hexdigest: str) -> None:
    assert keccak256(data).hex() == hexdigest


@pytest.mark.parametrize("size", [0, 1, 135, 136, 137, 271, 272, 1000, 5000])
def test_keccak_matches_an_independent_implementation(size: int) -> None:
    data = os.urandom(size)
    assert keccak256(data) == _ref(data)


def test_selectors() -> None:
    assert selector("transfer(address,uint256)").hex() == "a9059cbb"          # ERC-20, well known
    assert selector("EvmAdvance(uint256,address,address,uint256,uint256,uint256,uint256,bytes)").hex() == "415bf363"
    assert selector("Notice(bytes)").hex() == "c258d6e5"
    assert selector("Voucher(address,uint256,bytes)").hex() == "237a816f"
    assert selector("DelegateCallVoucher(address,bytes)").hex() == "10321e8b"


def test_encode_advance_lays_out_the_words() -> None:
    m = Metadata(chain_id=1, app_contract="0x" + "11" * 20, msg_sender="0x" + "22" * 20,
                 block_number=3, block_timestamp=4, prev_randao=5, input_index=6)
    data = encode_advance(m, b"hello")
    assert data[:4].hex() == "415bf363"
    words = [data[4 + 32 * i:4 + 32 * i + 32] for i in range((len(data) - 4) // 32)]
    assert [int.from_bytes(w, "big") for w in words[:8]] == [
        1, int("11" * 20, 16), int("22" * 20, 16), 3, 4, 5, 6, 256]
    assert int.from_bytes(words[8], "big") == 5 and words[9] == b"hello" + bytes(27)
    assert len(data) == 4 + 10 * 32


@pytest.mark.parametrize("kind, kw", [
    ("notice", {}),
    ("voucher", {"destination": "0x" + "01" * 20, "value": 10**18}),
    ("delegate_call_voucher", {"destination": "0x" + "ee" * 20}),
])
@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(64)), b"\xff" * 33])
def test_outputs_round_trip(kind: str, kw: dict, payload: bytes) -> None:
    out = decode_output(encode_output(kind, payload, **kw))
    assert out["type"] == kind and out["payload"] == "0x" + payload.hex()
    if "destination" in kw:
        assert out["destination"] == kw["destination"]
    if kind == "voucher":
        assert int(out["value"], 16) == 10**18


def test_bad_outputs_are_clear_errors() -> None:
    with pytest.raises(CmbuildError, match="unknown output selector 0xdeadbeef"):
        decode_output(bytes.fromhex("deadbeef") + bytes(64))
    with pytest.raises(CmbuildError, match="runs past the end"):
        decode_output(selector("Notice(bytes)") + (32).to_bytes(32, "big") + (99).to_bytes(32, "big"))
    with pytest.raises(CmbuildError, match="an address is 20 bytes"):
        encode_advance(Metadata(msg_sender="0x1234"), b"")
