/*
 * The outputs Merkle tree, kept as libcmt keeps it (machine-guest-tools, libcmt/src/merkle.c):
 * a tree of height 63 whose leaves are the keccak-256 of each output (notice, voucher,
 * delegate-call voucher, as they were written to the tx buffer), appended left to right; the
 * state is the hash of each complete subtree on the left edge (one per set bit of the leaf
 * count). An absent leaf is 32 zero bytes, an absent subtree of height h is the pristine hash
 * P(h): P(0) = 0^32, P(h+1) = keccak(P(h) || P(h)). The root is what cartesi-machine's
 * --cmio-advance-state recomputes from the outputs and compares with the tx buffer on accept.
 */
#ifndef ROLLUPS_MERKLE_H
#define ROLLUPS_MERKLE_H

#include "keccak.h"

enum { MERKLE_HEIGHT = 63 };

struct merkle {
    u64 leaf_count;
    u8 state[MERKLE_HEIGHT][KECCAK_LEN];
};

void merkle_init(struct merkle *m);
/* Append a leaf (a hash); -ENOBUFS when the tree is full (2^63 leaves). */
int merkle_push_hash(struct merkle *m, const u8 leaf[KECCAK_LEN]);
/* Append keccak256(data) as a leaf. */
int merkle_push_data(struct merkle *m, const void *data, size_t n);
void merkle_root(const struct merkle *m, u8 root[KECCAK_LEN]);

#endif
