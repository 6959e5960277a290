/* EvmAdvance decoding and output encoding (see abi.h). */
#include "abi.h"

enum { WORD = 32 };

/* A 32-byte big-endian word as a u64: its top 24 bytes must be zero. */
static int word_u64(const u8 *w, u64 *v)
{
    for (int i = 0; i < WORD - 8; i++)
        if (w[i])
            return -EDOM;
    u64 x = 0;
    for (int i = WORD - 8; i < WORD; i++)
        x = x << 8 | w[i];
    *v = x;
    return 0;
}

static int word_address(const u8 *w, u8 out[20])
{
    for (int i = 0; i < WORD - 20; i++)
        if (w[i])
            return -EDOM;
    memcpy(out, w + WORD - 20, 20);
    return 0;
}

int abi_decode_advance(const u8 *data, size_t n, struct advance *out)
{
    static const u8 sel[4] = {SEL_EVM_ADVANCE};
    if (n < 4)
        return -ENOBUFS;
    if (memcmp(data, sel, 4) != 0)
        return -EBADMSG;
    const u8 *frame = data + 4; /* offsets count from here */
    size_t fn = n - 4;
    if (fn < 8 * WORD) /* the head: 8 words */
        return -ENOBUFS;
    const u8 *w = frame;
    u64 offset, length;
    int rc;
    if ((rc = word_u64(w + 0 * WORD, &out->chain_id)) ||
        (rc = word_address(w + 1 * WORD, out->app_contract)) ||
        (rc = word_address(w + 2 * WORD, out->msg_sender)) ||
        (rc = word_u64(w + 3 * WORD, &out->block_number)) ||
        (rc = word_u64(w + 4 * WORD, &out->block_timestamp)))
        return rc;
    memcpy(out->prev_randao, w + 5 * WORD, WORD);
    if ((rc = word_u64(w + 6 * WORD, &out->index)) || (rc = word_u64(w + 7 * WORD, &offset)))
        return rc;
    if (offset > fn || fn - offset < WORD)
        return -ENOBUFS;
    if ((rc = word_u64(frame + offset, &length)))
        return rc;
    if (length > fn - offset - WORD)
        return -ENOBUFS;
    out->payload = frame + offset + WORD;
    out->payload_len = (size_t)length;
    return 0;
}

static void put_word_u64(u8 *w, u64 v)
{
    memset(w, 0, WORD);
    for (int i = WORD - 1; i >= WORD - 8; i--, v >>= 8)
        w[i] = (u8)v;
}

static void put_word_address(u8 *w, const u8 a[20])
{
    memset(w, 0, WORD - 20);
    memcpy(w + WORD - 20, a, 20);
}

/* selector, `head_words` head words (already written by the caller after this returns the
 * pointer), then the bytes argument whose offset word is the last head word */
static long encode(u8 *out, size_t cap, const u8 sel[4], size_t head_words, const u8 *payload, size_t n,
                   u8 **head)
{
    size_t padded = (n + WORD - 1) / WORD * WORD;
    if (n > cap || padded > cap)
        return -ENOBUFS;
    size_t total = 4 + head_words * WORD + WORD + padded;
    if (total > cap)
        return -ENOBUFS;
    memcpy(out, sel, 4);
    u8 *h = out + 4;
    put_word_u64(h + (head_words - 1) * WORD, head_words * WORD); /* offset of the bytes */
    u8 *tail = h + head_words * WORD;
    put_word_u64(tail, n);
    memcpy(tail + WORD, payload, n);
    memset(tail + WORD + n, 0, padded - n);
    *head = h;
    return (long)total;
}

long abi_encode_notice(u8 *out, size_t cap, const u8 *payload, size_t n)
{
    static const u8 sel[4] = {SEL_NOTICE};
    u8 *h;
    return encode(out, cap, sel, 1, payload, n, &h);
}

long abi_encode_voucher(u8 *out, size_t cap, const u8 destination[20], const u8 value[32],
                        const u8 *payload, size_t n)
{
    static const u8 sel[4] = {SEL_VOUCHER};
    u8 *h;
    long len = encode(out, cap, sel, 3, payload, n, &h);
    if (len < 0)
        return len;
    put_word_address(h, destination);
    if (value)
        memcpy(h + WORD, value, WORD);
    else
        memset(h + WORD, 0, WORD);
    return len;
}

long abi_encode_delegate_call_voucher(u8 *out, size_t cap, const u8 destination[20],
                                      const u8 *payload, size_t n)
{
    static const u8 sel[4] = {SEL_DELEGATE_CALL_VOUCHER};
    u8 *h;
    long len = encode(out, cap, sel, 2, payload, n, &h);
    if (len < 0)
        return len;
    put_word_address(h, destination);
    return len;
}
