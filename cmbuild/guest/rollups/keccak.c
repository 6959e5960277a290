/*
 * Keccak-f[1600] and the Keccak-256 sponge (see keccak.h). Written from the Keccak reference
 * description (FIPS 202 section 3 for the permutation; the original Keccak padding).
 */
#include "keccak.h"

enum { RATE = 136 };

static const u64 round_constants[24] = {
    0x0000000000000001ull, 0x0000000000008082ull, 0x800000000000808aull, 0x8000000080008000ull,
    0x000000000000808bull, 0x0000000080000001ull, 0x8000000080008081ull, 0x8000000000008009ull,
    0x000000000000008aull, 0x0000000000000088ull, 0x0000000080008009ull, 0x000000008000000aull,
    0x000000008000808bull, 0x800000000000008bull, 0x8000000000008089ull, 0x8000000000008003ull,
    0x8000000000008002ull, 0x8000000000000080ull, 0x000000000000800aull, 0x800000008000000aull,
    0x8000000080008081ull, 0x8000000000008080ull, 0x0000000080000001ull, 0x8000000080008008ull,
};

/* rho offsets and pi destinations, walked along the pi permutation starting from lane 1 */
static const u8 rho[24] = {1, 3, 6, 10, 15, 21, 28, 36, 45, 55, 2, 14,
                           27, 41, 56, 8, 25, 43, 62, 18, 39, 61, 20, 44};
static const u8 pi[24] = {10, 7, 11, 17, 18, 3, 5, 16, 8, 21, 24, 4,
                          15, 23, 19, 13, 12, 2, 20, 14, 22, 9, 6, 1};

static inline u64 rol(u64 x, unsigned s) { return (x << s) | (x >> (64 - s)); }

/* Unrolled and without divisions: this runs 63 times for each accepted input's root. */
static void keccak_f(u64 a[25])
{
    for (int round = 0; round < 24; round++) {
        u64 c0, c1, c2, c3, c4, d0, d1, d2, d3, d4, t;
        /* theta */
        c0 = a[0] ^ a[5] ^ a[10] ^ a[15] ^ a[20];
        c1 = a[1] ^ a[6] ^ a[11] ^ a[16] ^ a[21];
        c2 = a[2] ^ a[7] ^ a[12] ^ a[17] ^ a[22];
        c3 = a[3] ^ a[8] ^ a[13] ^ a[18] ^ a[23];
        c4 = a[4] ^ a[9] ^ a[14] ^ a[19] ^ a[24];
        d0 = c4 ^ rol(c1, 1);
        d1 = c0 ^ rol(c2, 1);
        d2 = c1 ^ rol(c3, 1);
        d3 = c2 ^ rol(c4, 1);
        d4 = c3 ^ rol(c0, 1);
        for (int y = 0; y < 25; y += 5) {
            a[y] ^= d0;
            a[y + 1] ^= d1;
            a[y + 2] ^= d2;
            a[y + 3] ^= d3;
            a[y + 4] ^= d4;
        }
        /* rho and pi */
        t = a[1];
        for (int i = 0; i < 24; i++) {
            int j = pi[i];
            u64 next = a[j];
            a[j] = rol(t, rho[i]);
            t = next;
        }
        /* chi */
        for (int y = 0; y < 25; y += 5) {
            c0 = a[y];
            c1 = a[y + 1];
            c2 = a[y + 2];
            c3 = a[y + 3];
            c4 = a[y + 4];
            a[y] = c0 ^ (~c1 & c2);
            a[y + 1] = c1 ^ (~c2 & c3);
            a[y + 2] = c2 ^ (~c3 & c4);
            a[y + 3] = c3 ^ (~c4 & c0);
            a[y + 4] = c4 ^ (~c0 & c1);
        }
        /* iota */
        a[0] ^= round_constants[round];
    }
}

void keccak_init(struct keccak *k) { memset(k, 0, sizeof *k); }

/* XOR one byte into the state at byte position i (lanes are little-endian) */
static inline void absorb_byte(struct keccak *k, size_t i, u8 b) { k->a[i / 8] ^= (u64)b << (8 * (i % 8)); }

void keccak_update(struct keccak *k, const void *data, size_t n)
{
    const u8 *p = data;
    while (n) {
        if (k->n % 8 == 0 && n >= 8) { /* a whole lane */
            u64 w = 0;
            for (int j = 7; j >= 0; j--)
                w = (w << 8) | p[j];
            k->a[k->n / 8] ^= w;
            k->n += 8;
            p += 8;
            n -= 8;
        } else {
            absorb_byte(k, k->n++, *p++);
            n--;
        }
        if (k->n == RATE) {
            keccak_f(k->a);
            k->n = 0;
        }
    }
}

void keccak_final(struct keccak *k, u8 out[KECCAK_LEN])
{
    absorb_byte(k, k->n, 0x01);
    absorb_byte(k, RATE - 1, 0x80);
    keccak_f(k->a);
    for (int i = 0; i < KECCAK_LEN; i++)
        out[i] = (u8)(k->a[i / 8] >> (8 * (i % 8)));
}

void keccak256(const void *data, size_t n, u8 out[KECCAK_LEN])
{
    struct keccak k;
    keccak_init(&k);
    keccak_update(&k, data, n);
    keccak_final(&k, out);
}

void keccak256_pair(const u8 a[KECCAK_LEN], const u8 b[KECCAK_LEN], u8 out[KECCAK_LEN])
{
    u8 both[2 * KECCAK_LEN];
    memcpy(both, a, KECCAK_LEN);
    memcpy(both + KECCAK_LEN, b, KECCAK_LEN);
    keccak256(both, sizeof both, out);
}
