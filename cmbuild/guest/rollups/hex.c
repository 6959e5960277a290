/* Hex decoding with the hex crate's errors, and Rust's Debug quoting (see hex.h). */
#include "hex.h"

int hex_value(u8 c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

enum hex_status hex_decode(const u8 *s, size_t n, u8 *out, struct hex_error *err)
{
    err->status = HEX_OK;
    if (n % 2) {
        err->status = HEX_ODD_LENGTH;
        return err->status;
    }
    for (size_t i = 0; i < n; i += 2) {
        int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
        if (hi < 0 || lo < 0) {
            err->status = HEX_INVALID_CHAR;
            err->index = hi < 0 ? i : i + 1;
            err->c = hi < 0 ? s[i] : s[i + 1];
            return err->status;
        }
        out[i / 2] = (u8)(hi << 4 | lo);
    }
    return HEX_OK;
}

void hex_error_text(struct sb *b, const struct hex_error *err)
{
    switch (err->status) {
    case HEX_ODD_LENGTH: sb_puts(b, "Odd number of digits"); break;
    case HEX_INVALID_LENGTH: sb_puts(b, "Invalid string length"); break;
    case HEX_INVALID_CHAR:
        sb_puts(b, "Invalid character ");
        rust_debug_char(b, err->c);
        sb_printf(b, " at position %zu", err->index);
        break;
    default: break;
    }
}

static void put_utf8(struct sb *b, u32 c)
{
    u8 t[4];
    size_t n;
    if (c < 0x80) {
        t[0] = (u8)c;
        n = 1;
    } else if (c < 0x800) {
        t[0] = (u8)(0xc0 | c >> 6);
        t[1] = (u8)(0x80 | (c & 0x3f));
        n = 2;
    } else if (c < 0x10000) {
        t[0] = (u8)(0xe0 | c >> 12);
        t[1] = (u8)(0x80 | ((c >> 6) & 0x3f));
        t[2] = (u8)(0x80 | (c & 0x3f));
        n = 3;
    } else {
        t[0] = (u8)(0xf0 | c >> 18);
        t[1] = (u8)(0x80 | ((c >> 12) & 0x3f));
        t[2] = (u8)(0x80 | ((c >> 6) & 0x3f));
        t[3] = (u8)(0x80 | (c & 0x3f));
        n = 4;
    }
    sb_put(b, t, n);
}

/* Rust escapes a char in Debug output when it is not printable or extends a grapheme. This
 * covers the controls (C0, DEL, C1), the separators other than the space, the common format
 * characters, combining marks U+0300-U+036F, surrogates, private use and noncharacters; Rust's
 * full tables (unassigned code points, rarer marks) are not reproduced. */
static bool rust_escapes(u32 c)
{
    if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad)
        return true;
    if (c >= 0x300 && c <= 0x36f)
        return true;
    if ((c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd || c == 0x70f || c == 0x1680 || c == 0x180e)
        return true;
    if ((c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) || (c >= 0x205f && c <= 0x206f))
        return true;
    if (c == 0x3000 || (c >= 0xd800 && c <= 0xf8ff) || (c >= 0xfdd0 && c <= 0xfdef) || c == 0xfeff)
        return true;
    if ((c >= 0xfff9 && c <= 0xfffb) || (c & 0xfffe) == 0xfffe || c >= 0x323b0) /* 0x323b0: unassigned on */
        return true;
    return false;
}

static void debug_codepoint(struct sb *b, u32 c, char quote)
{
    switch (c) {
    case '\t': sb_puts(b, "\\t"); return;
    case '\r': sb_puts(b, "\\r"); return;
    case '\n': sb_puts(b, "\\n"); return;
    case '\\': sb_puts(b, "\\\\"); return;
    case '\0': sb_puts(b, "\\0"); return;
    default: break;
    }
    if (c == (u32)quote) {
        sb_putc(b, '\\');
        sb_putc(b, quote);
        return;
    }
    if (rust_escapes(c)) {
        sb_puts(b, "\\u{");
        sb_hex_u64(b, c);
        sb_putc(b, '}');
        return;
    }
    put_utf8(b, c);
}

void rust_debug_char(struct sb *b, u32 c)
{
    sb_putc(b, '\'');
    debug_codepoint(b, c, '\'');
    sb_putc(b, '\'');
}

void rust_debug_str(struct sb *b, const u8 *s, size_t n)
{
    sb_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        u32 c = s[i];
        size_t len = 1;
        if (c >= 0xf0 && i + 3 < n) {
            c = (u32)(s[i] & 7) << 18 | (u32)(s[i + 1] & 0x3f) << 12 | (u32)(s[i + 2] & 0x3f) << 6 |
                (s[i + 3] & 0x3f);
            len = 4;
        } else if (c >= 0xe0 && i + 2 < n) {
            c = (u32)(s[i] & 0xf) << 12 | (u32)(s[i + 1] & 0x3f) << 6 | (s[i + 2] & 0x3f);
            len = 3;
        } else if (c >= 0xc0 && i + 1 < n) {
            c = (u32)(s[i] & 0x1f) << 6 | (s[i + 1] & 0x3f);
            len = 2;
        }
        debug_codepoint(b, c, '"');
        i += len;
    }
    sb_putc(b, '"');
}
