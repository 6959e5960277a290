/*
 * The Solidity ABI encodings of the rollups protocol, as libcmt reads and writes them:
 *
 *   input (rx):  EvmAdvance(uint256 chainId, address appContract, address msgSender,
 *                           uint256 blockNumber, uint256 blockTimestamp, uint256 prevRandao,
 *                           uint256 index, bytes payload)
 *   outputs (tx): Notice(bytes payload)
 *                 Voucher(address destination, uint256 value, bytes payload)
 *                 DelegateCallVoucher(address destination, bytes payload)
 *
 * Each is the 4-byte function selector (the first 4 bytes of the keccak-256 of the signature),
 * then the head (one 32-byte word per argument; `bytes` is an offset, counted from the end of
 * the selector) and the tail (the length word, then the bytes padded with zeros to a multiple
 * of 32). libcmt reads the uint256 fields it keeps as 64-bit numbers (chain id, block number,
 * block timestamp, index) only when their top 24 bytes are zero, and addresses only when their
 * top 12 bytes are zero; anything else is a malformed input.
 */
#ifndef ROLLUPS_ABI_H
#define ROLLUPS_ABI_H

#include "sys.h"

/* The selectors, written as the 4 bytes in transmission order. */
#define SEL_EVM_ADVANCE 0x41, 0x5b, 0xf3, 0x63          /* EvmAdvance(uint256,address,address,uint256,uint256,uint256,uint256,bytes) */
#define SEL_NOTICE 0xc2, 0x58, 0xd6, 0xe5               /* Notice(bytes) */
#define SEL_VOUCHER 0x23, 0x7a, 0x81, 0x6f              /* Voucher(address,uint256,bytes) */
#define SEL_DELEGATE_CALL_VOUCHER 0x10, 0x32, 0x1e, 0x8b /* DelegateCallVoucher(address,bytes) */

struct advance {
    u64 chain_id;
    u8 app_contract[20];
    u8 msg_sender[20];
    u64 block_number;
    u64 block_timestamp;
    u8 prev_randao[32];
    u64 index;
    const u8 *payload; /* points into the decoded buffer */
    size_t payload_len;
};

/* Decode an EvmAdvance input; 0, or -EBADMSG (wrong selector) / -EDOM (a number or address out
 * of range) / -ENOBUFS (truncated, or the payload does not fit). libcmt, and so the reference
 * server, report every one of these as -ENOBUFS. */
int abi_decode_advance(const u8 *data, size_t n, struct advance *out);

/* Encode an output into out (capacity cap); return its length or -ENOBUFS when it does not fit.
 * value may be NULL for the voucher (zero). */
long abi_encode_notice(u8 *out, size_t cap, const u8 *payload, size_t n);
long abi_encode_voucher(u8 *out, size_t cap, const u8 destination[20], const u8 value[32],
                        const u8 *payload, size_t n);
long abi_encode_delegate_call_voucher(u8 *out, size_t cap, const u8 destination[20],
                                      const u8 *payload, size_t n);

#endif
