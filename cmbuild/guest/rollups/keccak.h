/*
 * Keccak-256 as Ethereum uses it: the original Keccak padding (0x01 ... 0x80), rate 136 bytes,
 * 32-byte digest. It is NOT SHA3-256, which pads with 0x06.
 */
#ifndef ROLLUPS_KECCAK_H
#define ROLLUPS_KECCAK_H

#include "sys.h"

enum { KECCAK_LEN = 32 };

struct keccak {
    u64 a[25];
    size_t n; /* bytes absorbed into the current block */
};

void keccak_init(struct keccak *k);
void keccak_update(struct keccak *k, const void *data, size_t n);
void keccak_final(struct keccak *k, u8 out[KECCAK_LEN]);
void keccak256(const void *data, size_t n, u8 out[KECCAK_LEN]);
/* keccak256(a || b) of two 32-byte words (the Merkle tree's node hash) */
void keccak256_pair(const u8 a[KECCAK_LEN], const u8 b[KECCAK_LEN], u8 out[KECCAK_LEN]);

#endif
