/* The outputs Merkle tree (see merkle.h). */
#include "merkle.h"

static u8 pristine[MERKLE_HEIGHT][KECCAK_LEN];
static bool pristine_ready;

static void make_pristine(void)
{
    if (pristine_ready)
        return;
    memset(pristine[0], 0, KECCAK_LEN);
    for (int h = 1; h < MERKLE_HEIGHT; h++)
        keccak256_pair(pristine[h - 1], pristine[h - 1], pristine[h]);
    pristine_ready = true;
}

void merkle_init(struct merkle *m)
{
    make_pristine();
    memset(m, 0, sizeof *m);
}

int merkle_push_hash(struct merkle *m, const u8 leaf[KECCAK_LEN])
{
    if (m->leaf_count == (u64)1 << MERKLE_HEIGHT)
        return -ENOBUFS;
    u8 right[KECCAK_LEN];
    memcpy(right, leaf, KECCAK_LEN);
    /* Carry up like a binary counter: each complete subtree of height h on the left joins the
     * new right part; the first free level keeps it. */
    for (int h = 0; h < MERKLE_HEIGHT; h++) {
        if (m->leaf_count & ((u64)1 << h)) {
            keccak256_pair(m->state[h], right, right);
        } else {
            memcpy(m->state[h], right, KECCAK_LEN);
            break;
        }
    }
    m->leaf_count++;
    return 0;
}

int merkle_push_data(struct merkle *m, const void *data, size_t n)
{
    u8 h[KECCAK_LEN];
    keccak256(data, n, h);
    return merkle_push_hash(m, h);
}

void merkle_root(const struct merkle *m, u8 root[KECCAK_LEN])
{
    make_pristine();
    u8 r[KECCAK_LEN];
    memset(r, 0, KECCAK_LEN);
    for (int h = 0; h < MERKLE_HEIGHT; h++) {
        if (m->leaf_count & ((u64)1 << h))
            keccak256_pair(m->state[h], r, r);
        else
            keccak256_pair(r, pristine[h], r);
    }
    memcpy(root, r, KECCAK_LEN);
}
