/*
 * A JSON reader that accepts, refuses and reports exactly like serde_json 1.0.125 deserializing
 * the reference server's request structs (see json.h). Each function below mirrors the
 * serde_json function of the same name; error positions follow its two rules: an error about
 * a byte already consumed is reported at the current index ("error"), one about a byte only
 * peeked at one past it ("peek_error"); errors raised by the struct visitor (missing or
 * duplicate field, invalid type or value) take the index where the reader stands when the
 * error reaches the deserializer.
 */
#include "json.h"

#include "hex.h"

struct jp {
    const u8 *s;
    size_t n, i;
    struct sb *err;
    bool positioned; /* err holds a message that already has its position */
    u8 *scratch;     /* decoded strings (total never exceeds n) */
    size_t scratch_len;
    u8 *frames;      /* ignore_value's stack of open '[' and '{' */
};

static struct sb scratch_mem, frames_mem;

/* ------------------------------------------------------------------ errors ------------- */

static void append_position(struct jp *p, size_t idx)
{
    size_t start_of_line = 0, line = 1;
    for (size_t k = 0; k < idx; k++)
        if (p->s[k] == '\n') {
            line++;
            start_of_line = k + 1;
        }
    sb_printf(p->err, " at line %zu column %zu", line, idx - start_of_line);
}

static bool fail_at(struct jp *p, size_t idx, const char *msg)
{
    sb_puts(p->err, msg);
    append_position(p, idx);
    p->positioned = true;
    return false;
}

/* serde_json's `error`: about a byte already consumed */
static bool error(struct jp *p, const char *msg) { return fail_at(p, p->i, msg); }

/* serde_json's `peek_error`: about the byte at the index */
static bool peek_error(struct jp *p, const char *msg) { return fail_at(p, p->i + 1 < p->n ? p->i + 1 : p->n, msg); }

/* A message without a position yet (serde's de::Error::custom); fix_position adds it. */
static struct sb *custom(struct jp *p)
{
    p->positioned = false;
    return p->err;
}

static bool fix_position(struct jp *p)
{
    if (!p->positioned) {
        append_position(p, p->i);
        p->positioned = true;
    }
    return false;
}

#define E_EOF_LIST "EOF while parsing a list"
#define E_EOF_OBJECT "EOF while parsing an object"
#define E_EOF_STRING "EOF while parsing a string"
#define E_EOF_VALUE "EOF while parsing a value"
#define E_COLON "expected `:`"
#define E_LIST_COMMA "expected `,` or `]`"
#define E_OBJECT_COMMA "expected `,` or `}`"
#define E_IDENT "expected ident"
#define E_VALUE "expected value"
#define E_ESCAPE "invalid escape"
#define E_NUMBER "invalid number"
#define E_RANGE "number out of range"
#define E_UNICODE "invalid unicode code point"
#define E_CONTROL "control character (\\u0000-\\u001F) found while parsing a string"
#define E_KEY "key must be a string"
#define E_SURROGATE "lone leading surrogate in hex escape"
#define E_TRAILING_COMMA "trailing comma"
#define E_TRAILING "trailing characters"
#define E_HEX_END "unexpected end of hex escape"

/* ------------------------------------------------------------------ reading ------------ */

static int peek(struct jp *p) { return p->i < p->n ? p->s[p->i] : -1; }
static int peek_or_null(struct jp *p) { return p->i < p->n ? p->s[p->i] : 0; }
static void eat(struct jp *p) { p->i++; }
static int next(struct jp *p) { return p->i < p->n ? p->s[p->i++] : -1; }

static int parse_whitespace(struct jp *p)
{
    for (;;) {
        int c = peek(p);
        if (c == ' ' || c == '\n' || c == '\t' || c == '\r')
            eat(p);
        else
            return c;
    }
}

static bool parse_ident(struct jp *p, const char *ident)
{
    for (; *ident; ident++) {
        int c = next(p);
        if (c < 0)
            return error(p, E_EOF_VALUE);
        if (c != (u8)*ident)
            return error(p, E_IDENT);
    }
    return true;
}

/* ------------------------------------------------------------------ strings ------------ */

static bool decode_hex_escape(struct jp *p, u32 *out)
{
    if (p->n - p->i < 4) {
        p->i = p->n;
        return error(p, E_EOF_STRING);
    }
    const u8 *h = p->s + p->i;
    p->i += 4;
    int a = hex_value(h[0]), b = hex_value(h[1]), c = hex_value(h[2]), d = hex_value(h[3]);
    if (a < 0 || b < 0 || c < 0 || d < 0)
        return error(p, E_ESCAPE);
    *out = (u32)(a << 12 | b << 8 | c << 4 | d);
    return true;
}

static void push_utf8(struct jp *p, u32 n)
{
    u8 *o = p->scratch + p->scratch_len;
    if (n < 0x80) {
        o[0] = (u8)n;
        p->scratch_len += 1;
    } else if (n < 0x800) {
        o[0] = (u8)(0xc0 | n >> 6);
        o[1] = (u8)(0x80 | (n & 0x3f));
        p->scratch_len += 2;
    } else if (n < 0x10000) {
        o[0] = (u8)(0xe0 | n >> 12);
        o[1] = (u8)(0x80 | ((n >> 6) & 0x3f));
        o[2] = (u8)(0x80 | (n & 0x3f));
        p->scratch_len += 3;
    } else {
        o[0] = (u8)(0xf0 | n >> 18);
        o[1] = (u8)(0x80 | ((n >> 12) & 0x3f));
        o[2] = (u8)(0x80 | ((n >> 6) & 0x3f));
        o[3] = (u8)(0x80 | (n & 0x3f));
        p->scratch_len += 4;
    }
}

static bool parse_unicode_escape(struct jp *p)
{
    u32 n;
    if (!decode_hex_escape(p, &n))
        return false;
    if (n >= 0xdc00 && n <= 0xdfff)
        return error(p, E_SURROGATE);
    if (n < 0xd800 || n > 0xdbff) {
        push_utf8(p, n);
        return true;
    }
    u32 n1 = n;
    int c = peek(p);
    if (c < 0)
        return error(p, E_EOF_STRING);
    eat(p);
    if (c != '\\')
        return error(p, E_HEX_END);
    c = peek(p);
    if (c < 0)
        return error(p, E_EOF_STRING);
    eat(p);
    if (c != 'u')
        return error(p, E_HEX_END);
    u32 n2;
    if (!decode_hex_escape(p, &n2))
        return false;
    if (n2 < 0xdc00 || n2 > 0xdfff)
        return error(p, E_SURROGATE);
    push_utf8(p, (((n1 - 0xd800) << 10) | (n2 - 0xdc00)) + 0x10000);
    return true;
}

static bool parse_escape(struct jp *p)
{
    int c = next(p);
    if (c < 0)
        return error(p, E_EOF_STRING);
    u8 v;
    switch (c) {
    case '"': v = '"'; break;
    case '\\': v = '\\'; break;
    case '/': v = '/'; break;
    case 'b': v = '\b'; break;
    case 'f': v = '\f'; break;
    case 'n': v = '\n'; break;
    case 'r': v = '\r'; break;
    case 't': v = '\t'; break;
    case 'u': return parse_unicode_escape(p);
    default: return error(p, E_ESCAPE);
    }
    p->scratch[p->scratch_len++] = v;
    return true;
}

/* Strict UTF-8 as Rust's str::from_utf8 checks it. */
static bool valid_utf8(const u8 *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        u8 c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        u32 min, cp;
        if (c >= 0xc2 && c <= 0xdf) {
            len = 2, min = 0x80, cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            len = 3, min = 0x800, cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4, min = 0x10000, cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

static bool is_escape(u8 c) { return c == '"' || c == '\\' || c < 0x20; }

/* After the opening quote: the string, decoded into scratch. */
static bool parse_str(struct jp *p, const u8 **out, size_t *out_len)
{
    size_t begin = p->scratch_len;
    size_t start = p->i;
    for (;;) {
        while (p->i < p->n && !is_escape(p->s[p->i]))
            p->i++;
        if (p->i == p->n)
            return error(p, E_EOF_STRING);
        u8 c = p->s[p->i];
        memcpy(p->scratch + p->scratch_len, p->s + start, p->i - start);
        p->scratch_len += p->i - start;
        if (c == '"') {
            p->i++;
            if (!valid_utf8(p->scratch + begin, p->scratch_len - begin))
                return error(p, E_UNICODE);
            *out = p->scratch + begin;
            *out_len = p->scratch_len - begin;
            return true;
        }
        if (c == '\\') {
            p->i++;
            if (!parse_escape(p))
                return false;
            start = p->i;
            continue;
        }
        p->i++;
        return error(p, E_CONTROL);
    }
}

static bool ignore_escape(struct jp *p)
{
    int c = next(p);
    if (c < 0)
        return error(p, E_EOF_STRING);
    switch (c) {
    case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
        return true;
    case 'u': {
        u32 v;
        return decode_hex_escape(p, &v);
    }
    default:
        return error(p, E_ESCAPE);
    }
}

static bool ignore_str(struct jp *p)
{
    for (;;) {
        while (p->i < p->n && !is_escape(p->s[p->i]))
            p->i++;
        if (p->i == p->n)
            return error(p, E_EOF_STRING);
        u8 c = p->s[p->i];
        if (c == '"') {
            p->i++;
            return true;
        }
        if (c == '\\') {
            p->i++;
            if (!ignore_escape(p))
                return false;
            continue;
        }
        return error(p, E_CONTROL); /* here serde_json does not step over the character */
    }
}

/* ------------------------------------------------------------------ numbers ------------ */

enum numkind { N_U64, N_I64, N_F64 };

struct number {
    enum numkind kind;
    u64 u;
    i64 i;
    double f;
};

static const double POW10[309] = {
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30,
    1e31, 1e32, 1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39, 1e40, 1e41, 1e42, 1e43, 1e44, 1e45,
    1e46, 1e47, 1e48, 1e49, 1e50, 1e51, 1e52, 1e53, 1e54, 1e55, 1e56, 1e57, 1e58, 1e59, 1e60,
    1e61, 1e62, 1e63, 1e64, 1e65, 1e66, 1e67, 1e68, 1e69, 1e70, 1e71, 1e72, 1e73, 1e74, 1e75,
    1e76, 1e77, 1e78, 1e79, 1e80, 1e81, 1e82, 1e83, 1e84, 1e85, 1e86, 1e87, 1e88, 1e89, 1e90,
    1e91, 1e92, 1e93, 1e94, 1e95, 1e96, 1e97, 1e98, 1e99, 1e100, 1e101, 1e102, 1e103, 1e104,
    1e105, 1e106, 1e107, 1e108, 1e109, 1e110, 1e111, 1e112, 1e113, 1e114, 1e115, 1e116, 1e117,
    1e118, 1e119, 1e120, 1e121, 1e122, 1e123, 1e124, 1e125, 1e126, 1e127, 1e128, 1e129, 1e130,
    1e131, 1e132, 1e133, 1e134, 1e135, 1e136, 1e137, 1e138, 1e139, 1e140, 1e141, 1e142, 1e143,
    1e144, 1e145, 1e146, 1e147, 1e148, 1e149, 1e150, 1e151, 1e152, 1e153, 1e154, 1e155, 1e156,
    1e157, 1e158, 1e159, 1e160, 1e161, 1e162, 1e163, 1e164, 1e165, 1e166, 1e167, 1e168, 1e169,
    1e170, 1e171, 1e172, 1e173, 1e174, 1e175, 1e176, 1e177, 1e178, 1e179, 1e180, 1e181, 1e182,
    1e183, 1e184, 1e185, 1e186, 1e187, 1e188, 1e189, 1e190, 1e191, 1e192, 1e193, 1e194, 1e195,
    1e196, 1e197, 1e198, 1e199, 1e200, 1e201, 1e202, 1e203, 1e204, 1e205, 1e206, 1e207, 1e208,
    1e209, 1e210, 1e211, 1e212, 1e213, 1e214, 1e215, 1e216, 1e217, 1e218, 1e219, 1e220, 1e221,
    1e222, 1e223, 1e224, 1e225, 1e226, 1e227, 1e228, 1e229, 1e230, 1e231, 1e232, 1e233, 1e234,
    1e235, 1e236, 1e237, 1e238, 1e239, 1e240, 1e241, 1e242, 1e243, 1e244, 1e245, 1e246, 1e247,
    1e248, 1e249, 1e250, 1e251, 1e252, 1e253, 1e254, 1e255, 1e256, 1e257, 1e258, 1e259, 1e260,
    1e261, 1e262, 1e263, 1e264, 1e265, 1e266, 1e267, 1e268, 1e269, 1e270, 1e271, 1e272, 1e273,
    1e274, 1e275, 1e276, 1e277, 1e278, 1e279, 1e280, 1e281, 1e282, 1e283, 1e284, 1e285, 1e286,
    1e287, 1e288, 1e289, 1e290, 1e291, 1e292, 1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299,
    1e300, 1e301, 1e302, 1e303, 1e304, 1e305, 1e306, 1e307, 1e308,
};

static bool is_inf(double f) { return f - f != 0.0 && f == f; }

/* a * 10 + b would exceed c */
static bool overflow_u64(u64 a, u64 b) { return a >= UINT64_MAX / 10 && (a > UINT64_MAX / 10 || b > UINT64_MAX % 10); }
static bool overflow_i32(int32_t a, int32_t b) { return a >= INT32_MAX / 10 && (a > INT32_MAX / 10 || b > INT32_MAX % 10); }

static bool f64_from_parts(struct jp *p, bool positive, u64 significand, int32_t exponent, double *out)
{
    double f = (double)significand;
    for (;;) {
        u32 a = exponent < 0 ? (u32)0 - (u32)exponent : (u32)exponent; /* wrapping_abs as usize */
        if (a < 309) {
            double pow = POW10[a];
            if (exponent >= 0) {
                f *= pow;
                if (is_inf(f))
                    return error(p, E_RANGE);
            } else {
                f /= pow;
            }
            break;
        }
        if (f == 0.0)
            break;
        if (exponent >= 0)
            return error(p, E_RANGE);
        f /= 1e308;
        exponent += 308;
    }
    *out = positive ? f : -f;
    return true;
}

static bool parse_exponent_overflow(struct jp *p, bool positive, bool zero_significand, bool positive_exp,
                                    double *out)
{
    if (!zero_significand && positive_exp)
        return error(p, E_RANGE);
    while (peek_or_null(p) >= '0' && peek_or_null(p) <= '9')
        eat(p);
    *out = positive ? 0.0 : -0.0;
    return true;
}

static bool parse_exponent(struct jp *p, bool positive, u64 significand, int32_t starting_exp, double *out)
{
    eat(p);
    bool positive_exp = true;
    int c = peek_or_null(p);
    if (c == '+') {
        eat(p);
    } else if (c == '-') {
        eat(p);
        positive_exp = false;
    }
    c = next(p);
    if (c < 0)
        return error(p, E_EOF_VALUE);
    if (c < '0' || c > '9')
        return error(p, E_NUMBER);
    int32_t exp = c - '0';
    while ((c = peek_or_null(p)) >= '0' && c <= '9') {
        eat(p);
        int32_t digit = c - '0';
        if (overflow_i32(exp, digit))
            return parse_exponent_overflow(p, positive, significand == 0, positive_exp, out);
        exp = exp * 10 + digit;
    }
    int64_t fe = positive_exp ? (int64_t)starting_exp + exp : (int64_t)starting_exp - exp;
    if (fe > INT32_MAX)
        fe = INT32_MAX;
    if (fe < INT32_MIN)
        fe = INT32_MIN;
    return f64_from_parts(p, positive, significand, (int32_t)fe, out);
}

static bool parse_decimal_overflow(struct jp *p, bool positive, u64 significand, int32_t exponent, double *out)
{
    int c;
    while ((c = peek_or_null(p)) >= '0' && c <= '9')
        eat(p);
    c = peek_or_null(p);
    if (c == 'e' || c == 'E')
        return parse_exponent(p, positive, significand, exponent, out);
    return f64_from_parts(p, positive, significand, exponent, out);
}

static bool parse_decimal(struct jp *p, bool positive, u64 significand, int32_t exponent_before, double *out)
{
    eat(p);
    int32_t exponent_after = 0;
    int c;
    while ((c = peek_or_null(p)) >= '0' && c <= '9') {
        u64 digit = (u64)(c - '0');
        if (overflow_u64(significand, digit))
            return parse_decimal_overflow(p, positive, significand, exponent_before + exponent_after, out);
        eat(p);
        significand = significand * 10 + digit;
        exponent_after -= 1;
    }
    if (exponent_after == 0) {
        if (peek(p) >= 0)
            return peek_error(p, E_NUMBER);
        return peek_error(p, E_EOF_VALUE);
    }
    int32_t exponent = exponent_before + exponent_after;
    c = peek_or_null(p);
    if (c == 'e' || c == 'E')
        return parse_exponent(p, positive, significand, exponent, out);
    return f64_from_parts(p, positive, significand, exponent, out);
}

static bool parse_long_integer(struct jp *p, bool positive, u64 significand, double *out)
{
    int32_t exponent = 0;
    for (;;) {
        int c = peek_or_null(p);
        if (c >= '0' && c <= '9') {
            eat(p);
            exponent += 1;
        } else if (c == '.') {
            return parse_decimal(p, positive, significand, exponent, out);
        } else if (c == 'e' || c == 'E') {
            return parse_exponent(p, positive, significand, exponent, out);
        } else {
            return f64_from_parts(p, positive, significand, exponent, out);
        }
    }
}

static bool parse_number(struct jp *p, bool positive, u64 significand, struct number *out)
{
    int c = peek_or_null(p);
    if (c == '.') {
        out->kind = N_F64;
        return parse_decimal(p, positive, significand, 0, &out->f);
    }
    if (c == 'e' || c == 'E') {
        out->kind = N_F64;
        return parse_exponent(p, positive, significand, 0, &out->f);
    }
    if (positive) {
        out->kind = N_U64;
        out->u = significand;
        return true;
    }
    i64 neg = (i64)((u64)0 - significand);
    if (neg >= 0) { /* -0, or below i64::MIN */
        out->kind = N_F64;
        out->f = -(double)significand;
    } else {
        out->kind = N_I64;
        out->i = neg;
    }
    return true;
}

static bool parse_integer(struct jp *p, bool positive, struct number *out)
{
    int c = next(p);
    if (c < 0)
        return error(p, E_EOF_VALUE);
    if (c == '0') {
        int d = peek_or_null(p);
        if (d >= '0' && d <= '9')
            return peek_error(p, E_NUMBER);
        return parse_number(p, positive, 0, out);
    }
    if (c >= '1' && c <= '9') {
        u64 significand = (u64)(c - '0');
        for (;;) {
            int d = peek_or_null(p);
            if (d >= '0' && d <= '9') {
                u64 digit = (u64)(d - '0');
                if (overflow_u64(significand, digit)) {
                    out->kind = N_F64;
                    return parse_long_integer(p, positive, significand, &out->f);
                }
                eat(p);
                significand = significand * 10 + digit;
            } else {
                return parse_number(p, positive, significand, out);
            }
        }
    }
    return error(p, E_NUMBER);
}

/* serde's Unexpected, as serde_json displays it */
static void unexpected_number(struct sb *b, const struct number *num)
{
    switch (num->kind) {
    case N_U64: sb_printf(b, "integer `%lu`", num->u); break;
    case N_I64: sb_printf(b, "integer `%ld`", num->i); break;
    case N_F64:
        sb_puts(b, "floating point `");
        format_f64(b, num->f);
        sb_putc(b, '`');
        break;
    }
}

/* serde_json's peek_invalid_type: the value at the index has the wrong type */
static bool peek_invalid_type(struct jp *p, const char *expected)
{
    int c = peek_or_null(p);
    struct sb *m;
    switch (c) {
    case 'n':
        eat(p);
        if (!parse_ident(p, "ull"))
            return false;
        m = custom(p);
        sb_printf(m, "invalid type: null, expected %s", expected);
        break;
    case 't':
    case 'f':
        eat(p);
        if (!parse_ident(p, c == 't' ? "rue" : "alse"))
            return false;
        m = custom(p);
        sb_printf(m, "invalid type: boolean `%s`, expected %s", c == 't' ? "true" : "false", expected);
        break;
    case '-':
    case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': case '8': case '9': {
        struct number num;
        if (c == '-')
            eat(p);
        if (!parse_integer(p, c != '-', &num))
            return false;
        m = custom(p);
        sb_puts(m, "invalid type: ");
        unexpected_number(m, &num);
        sb_printf(m, ", expected %s", expected);
        break;
    }
    case '"': {
        eat(p);
        const u8 *s;
        size_t n;
        if (!parse_str(p, &s, &n))
            return false;
        m = custom(p);
        sb_puts(m, "invalid type: string ");
        rust_debug_str(m, s, n);
        sb_printf(m, ", expected %s", expected);
        break;
    }
    case '[':
        sb_printf(custom(p), "invalid type: sequence, expected %s", expected);
        break;
    case '{':
        sb_printf(custom(p), "invalid type: map, expected %s", expected);
        break;
    default:
        return peek_error(p, E_VALUE);
    }
    return fix_position(p);
}

/* ------------------------------------------------------------------ ignored values ----- */

static bool ignore_integer(struct jp *p)
{
    int c = next(p);
    if (c == '0') {
        int d = peek_or_null(p);
        if (d >= '0' && d <= '9')
            return peek_error(p, E_NUMBER);
    } else if (c >= '1' && c <= '9') {
        while ((c = peek_or_null(p)) >= '0' && c <= '9')
            eat(p);
    } else {
        return error(p, E_NUMBER);
    }
    c = peek_or_null(p);
    if (c == '.') {
        eat(p);
        bool digit = false;
        while ((c = peek_or_null(p)) >= '0' && c <= '9') {
            eat(p);
            digit = true;
        }
        if (!digit)
            return peek_error(p, E_NUMBER);
        c = peek_or_null(p);
    }
    if (c == 'e' || c == 'E') {
        eat(p);
        c = peek_or_null(p);
        if (c == '+' || c == '-')
            eat(p);
        c = next(p);
        if (c < '0' || c > '9')
            return error(p, E_NUMBER);
        while ((c = peek_or_null(p)) >= '0' && c <= '9')
            eat(p);
    }
    return true;
}

/* serde_json's ignore_value: any JSON value, without recursion */
static bool ignore_value(struct jp *p)
{
    size_t depth = 0;   /* frames on the stack */
    int enclosing = 0;  /* the innermost open frame, not on the stack */
    for (;;) {
        int c = parse_whitespace(p);
        if (c < 0)
            return peek_error(p, E_EOF_VALUE);
        int frame = 0;
        switch (c) {
        case 'n': eat(p); if (!parse_ident(p, "ull")) return false; break;
        case 't': eat(p); if (!parse_ident(p, "rue")) return false; break;
        case 'f': eat(p); if (!parse_ident(p, "alse")) return false; break;
        case '-': eat(p); if (!ignore_integer(p)) return false; break;
        case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': case '8': case '9':
            if (!ignore_integer(p))
                return false;
            break;
        case '"': eat(p); if (!ignore_str(p)) return false; break;
        case '[':
        case '{':
            if (enclosing)
                p->frames[depth++] = (u8)enclosing;
            enclosing = 0;
            eat(p);
            frame = c;
            break;
        default:
            return peek_error(p, E_VALUE);
        }
        bool accept_comma;
        if (frame) {
            accept_comma = false;
        } else if (enclosing) {
            frame = enclosing;
            enclosing = 0;
            accept_comma = true;
        } else if (depth) {
            frame = p->frames[--depth];
            accept_comma = true;
        } else {
            return true;
        }
        for (;;) {
            c = parse_whitespace(p);
            if (c == ',' && accept_comma) {
                eat(p);
                break;
            }
            if ((c == ']' && frame == '[') || (c == '}' && frame == '{')) {
                eat(p);
                if (!depth)
                    return true;
                frame = p->frames[--depth];
                accept_comma = true;
                continue;
            }
            if (c >= 0) {
                if (accept_comma)
                    return peek_error(p, frame == '[' ? E_LIST_COMMA : E_OBJECT_COMMA);
                break;
            }
            return peek_error(p, frame == '[' ? E_EOF_LIST : E_EOF_OBJECT);
        }
        if (frame == '{') {
            c = parse_whitespace(p);
            if (c == '"')
                eat(p);
            else if (c >= 0)
                return peek_error(p, E_KEY);
            else
                return peek_error(p, E_EOF_OBJECT);
            if (!ignore_str(p))
                return false;
            c = parse_whitespace(p);
            if (c == ':')
                eat(p);
            else if (c >= 0)
                return peek_error(p, E_COLON);
            else
                return peek_error(p, E_EOF_OBJECT);
        }
        enclosing = frame;
    }
}

/* ------------------------------------------------------------------ typed values ------- */

static bool deserialize_string(struct jp *p, struct jvalue *v)
{
    int c = parse_whitespace(p);
    if (c < 0)
        return peek_error(p, E_EOF_VALUE);
    if (c != '"')
        return peek_invalid_type(p, "a string");
    eat(p);
    if (!parse_str(p, &v->s, &v->len))
        return false;
    v->present = true;
    return true;
}

static bool deserialize_option_string(struct jp *p, struct jvalue *v)
{
    if (parse_whitespace(p) == 'n') {
        eat(p);
        if (!parse_ident(p, "ull"))
            return false;
        v->present = false;
        return true;
    }
    return deserialize_string(p, v);
}

static bool deserialize_u16(struct jp *p, struct jvalue *v)
{
    int c = parse_whitespace(p);
    if (c < 0)
        return peek_error(p, E_EOF_VALUE);
    struct number num;
    if (c == '-') {
        eat(p);
        if (!parse_integer(p, false, &num))
            return false;
    } else if (c >= '0' && c <= '9') {
        if (!parse_integer(p, true, &num))
            return false;
    } else {
        return peek_invalid_type(p, "u16");
    }
    if (num.kind == N_U64 && num.u <= 0xffff) {
        v->u = (u16)num.u;
        v->present = true;
        return true;
    }
    struct sb *m = custom(p);
    if (num.kind == N_F64) {
        sb_puts(m, "invalid type: ");
    } else {
        sb_puts(m, "invalid value: ");
    }
    unexpected_number(m, &num);
    sb_puts(m, ", expected u16");
    return fix_position(p);
}

static bool deserialize_field(struct jp *p, enum jtype t, struct jvalue *v)
{
    switch (t) {
    case J_STRING: return deserialize_string(p, v);
    case J_OPT_STRING: return deserialize_option_string(p, v);
    case J_U16: return deserialize_u16(p, v);
    }
    return false;
}

/* ------------------------------------------------------------------ structs ------------ */

static bool parse_object_colon(struct jp *p)
{
    int c = parse_whitespace(p);
    if (c == ':') {
        eat(p);
        return true;
    }
    if (c >= 0)
        return peek_error(p, E_COLON);
    return peek_error(p, E_EOF_OBJECT);
}

/* serde_derive's visit_map */
static bool visit_map(struct jp *p, const struct jschema *s, struct jvalue *out)
{
    bool seen[8] = {0};
    bool first = true;
    for (;;) {
        int c = parse_whitespace(p);
        if (c == '}')
            break;
        if (c == ',' && !first) {
            eat(p);
            c = parse_whitespace(p);
        } else if (c >= 0) {
            if (!first)
                return peek_error(p, E_OBJECT_COMMA);
            first = false;
        } else {
            return peek_error(p, E_EOF_OBJECT);
        }
        if (c == '}')
            return peek_error(p, E_TRAILING_COMMA);
        if (c < 0)
            return peek_error(p, E_EOF_VALUE);
        if (c != '"')
            return peek_error(p, E_KEY);
        eat(p);
        const u8 *key;
        size_t klen;
        if (!parse_str(p, &key, &klen))
            return false;
        size_t f = s->nfields;
        for (size_t k = 0; k < s->nfields; k++)
            if (strlen(s->fields[k].name) == klen && memcmp(s->fields[k].name, key, klen) == 0)
                f = k;
        if (f == s->nfields) {
            if (!parse_object_colon(p) || !ignore_value(p))
                return false;
            continue;
        }
        if (seen[f]) {
            sb_printf(custom(p), "duplicate field `%s`", s->fields[f].name);
            return false;
        }
        if (!parse_object_colon(p) || !deserialize_field(p, s->fields[f].type, &out[f]))
            return false;
        seen[f] = true;
    }
    for (size_t k = 0; k < s->nfields; k++) {
        if (seen[k])
            continue;
        if (s->fields[k].type == J_OPT_STRING) {
            out[k].present = false;
            continue;
        }
        sb_printf(custom(p), "missing field `%s`", s->fields[k].name);
        return false;
    }
    return true;
}

/* serde_derive's visit_seq */
static bool visit_seq(struct jp *p, const struct jschema *s, struct jvalue *out)
{
    bool first = true;
    for (size_t k = 0; k < s->nfields; k++) {
        int c = parse_whitespace(p);
        if (c == ']') {
            sb_printf(custom(p), "invalid length %zu, expected struct %s with %zu element%s", k, s->name,
                      s->nfields, s->nfields == 1 ? "" : "s");
            return false;
        }
        if (c == ',' && !first) {
            eat(p);
            c = parse_whitespace(p);
        } else if (c >= 0) {
            if (!first)
                return peek_error(p, E_LIST_COMMA);
            first = false;
        } else {
            return peek_error(p, E_EOF_LIST);
        }
        if (c == ']')
            return peek_error(p, E_TRAILING_COMMA);
        if (c < 0)
            return peek_error(p, E_EOF_VALUE);
        if (!deserialize_field(p, s->fields[k].type, &out[k]))
            return false;
    }
    return true;
}

/* end_seq / end_map consume what they can even when the visitor already failed: serde_json
 * evaluates them before it looks at the visitor's result, which moves the position of an
 * error that has none yet. */
static bool end_seq(struct jp *p)
{
    int c = parse_whitespace(p);
    if (c == ']') {
        eat(p);
        return true;
    }
    if (c == ',') {
        eat(p);
        if (parse_whitespace(p) == ']')
            return peek_error(p, E_TRAILING_COMMA);
        return peek_error(p, E_TRAILING);
    }
    if (c >= 0)
        return peek_error(p, E_TRAILING);
    return peek_error(p, E_EOF_LIST);
}

static bool end_map(struct jp *p)
{
    int c = parse_whitespace(p);
    if (c == '}') {
        eat(p);
        return true;
    }
    if (c == ',')
        return peek_error(p, E_TRAILING_COMMA);
    if (c >= 0)
        return peek_error(p, E_TRAILING);
    return peek_error(p, E_EOF_OBJECT);
}

static bool deserialize_struct(struct jp *p, const struct jschema *s, struct jvalue *out)
{
    int c = parse_whitespace(p);
    if (c < 0)
        return peek_error(p, E_EOF_VALUE);
    if (c != '[' && c != '{') {
        char expected[80] = "struct ";
        size_t n = strlen(s->name);
        if (n > sizeof expected - 8)
            n = sizeof expected - 8;
        memcpy(expected + 7, s->name, n);
        expected[7 + n] = 0;
        return peek_invalid_type(p, expected);
    }
    eat(p);
    size_t mark = p->err->len;
    bool ok = c == '[' ? visit_seq(p, s, out) : visit_map(p, s, out);
    /* the end is always evaluated; its error only counts when the visitor succeeded */
    struct sb *saved = p->err;
    struct sb scratch_err = {0};
    bool positioned = p->positioned;
    p->err = &scratch_err;
    bool end_ok = c == '[' ? end_seq(p) : end_map(p);
    p->err = saved;
    if (!ok) {
        p->positioned = positioned;
        sb_free(&scratch_err);
        return fix_position(p);
    }
    if (!end_ok) {
        p->err->len = mark;
        sb_put(p->err, scratch_err.p, scratch_err.len);
        p->positioned = true;
        sb_free(&scratch_err);
        return false;
    }
    sb_free(&scratch_err);
    return true;
}

void json_release(void)
{
    if (scratch_mem.cap > (1u << 20))
        sb_free(&scratch_mem);
    if (frames_mem.cap > (1u << 20))
        sb_free(&frames_mem);
}

bool json_parse(const struct jschema *schema, const u8 *in, size_t n, struct jvalue *out, struct sb *err)
{
    sb_reset(&scratch_mem);
    sb_reset(&frames_mem);
    if (!sb_reserve(&scratch_mem, n + 8) || !sb_reserve(&frames_mem, n + 8)) {
        sb_puts(err, "out of memory");
        return false;
    }
    struct jp p = {in, n, 0, err, true, (u8 *)scratch_mem.p, 0, (u8 *)frames_mem.p};
    memset(out, 0, schema->nfields * sizeof *out);
    if (!deserialize_struct(&p, schema, out))
        return false;
    int c = parse_whitespace(&p);
    if (c >= 0)
        return peek_error(&p, E_TRAILING);
    return true;
}

/* ------------------------------------------------------------------ f64 to text -------- */

/*
 * Shortest decimal that reads back as the same double, placed as ryu places it. Done with
 * exact big-integer arithmetic (the value and the two ends of its rounding interval scaled to
 * integers), which is slow but only ever runs for an error message.
 */

enum { BIG_LIMBS = 90 }; /* 32-bit limbs: 2880 bits, more than 4 * 2^1074 * 5^1076 needs */

struct big {
    u32 d[BIG_LIMBS];
    int n; /* limbs in use */
};

static void big_set(struct big *b, u64 v)
{
    b->d[0] = (u32)v;
    b->d[1] = (u32)(v >> 32);
    b->n = b->d[1] ? 2 : (b->d[0] ? 1 : 0);
}

static void big_mul_small(struct big *b, u32 m)
{
    u64 carry = 0;
    for (int k = 0; k < b->n; k++) {
        u64 t = (u64)b->d[k] * m + carry;
        b->d[k] = (u32)t;
        carry = t >> 32;
    }
    if (carry && b->n < BIG_LIMBS)
        b->d[b->n++] = (u32)carry;
}

static void big_shl(struct big *b, int s)
{
    while (s >= 32) {
        if (b->n && b->n < BIG_LIMBS) {
            memmove(b->d + 1, b->d, (size_t)b->n * 4);
            b->d[0] = 0;
            b->n++;
        }
        s -= 32;
    }
    if (s)
        big_mul_small(b, (u32)1 << s);
}

/* decimal digits of b, most significant first, into out; returns the count */
static int big_to_decimal(struct big *b, char *out)
{
    char rev[900];
    int nd = 0;
    struct big t = *b;
    while (t.n) {
        u64 rem = 0;
        for (int k = t.n - 1; k >= 0; k--) {
            u64 cur = rem << 32 | t.d[k];
            t.d[k] = (u32)(cur / 1000000000u);
            rem = cur % 1000000000u;
        }
        while (t.n && !t.d[t.n - 1])
            t.n--;
        for (int k = 0; k < 9; k++) {
            rev[nd++] = (char)('0' + rem % 10);
            rem /= 10;
        }
    }
    while (nd > 1 && rev[nd - 1] == '0')
        nd--;
    if (nd == 0)
        rev[nd++] = '0';
    for (int k = 0; k < nd; k++)
        out[k] = rev[nd - 1 - k];
    return nd;
}

/* compare digit strings a (na digits) and b (nb digits) as integers */
static int dec_cmp(const char *a, int na, const char *b, int nb)
{
    if (na != nb)
        return na < nb ? -1 : 1;
    int c = memcmp(a, b, (size_t)na);
    return c < 0 ? -1 : c > 0;
}

void format_f64(struct sb *b, double v)
{
    union {
        double f;
        u64 u;
    } bits = {v};
    bool sign = bits.u >> 63;
    u64 mant = bits.u & ((1ull << 52) - 1);
    int ieee_exp = (int)((bits.u >> 52) & 0x7ff);
    if (sign)
        sb_putc(b, '-');
    if (ieee_exp == 0 && mant == 0) {
        sb_puts(b, "0.0");
        return;
    }
    if (ieee_exp == 0x7ff) { /* never produced by the parser */
        sb_puts(b, mant ? "NaN" : "inf");
        return;
    }
    u64 m2;
    int e2;
    if (ieee_exp == 0) {
        m2 = mant;
        e2 = 1 - 1075;
    } else {
        m2 = mant | (1ull << 52);
        e2 = ieee_exp - 1075;
    }
    bool even = (m2 & 1) == 0;
    bool mm_shift = mant != 0 || ieee_exp <= 1;
    /* value, low and high end of the rounding interval, all times 2^(e2-2) */
    u64 mv = 4 * m2, mp = 4 * m2 + 2, mm = 4 * m2 - 1 - (mm_shift ? 1 : 0);
    int e = e2 - 2;
    struct big V, L, H;
    big_set(&V, mv);
    big_set(&L, mm);
    big_set(&H, mp);
    int scale = 0; /* the integers are the values times 10^scale */
    if (e >= 0) {
        big_shl(&V, e);
        big_shl(&L, e);
        big_shl(&H, e);
    } else {
        /* x * 2^e = x * 5^-e / 10^-e */
        for (int k = 0; k < -e; k++) {
            big_mul_small(&V, 5);
            big_mul_small(&L, 5);
            big_mul_small(&H, 5);
        }
        scale = -e;
    }
    static char vd[900], ld[900], hd[900], cd[2][900], chosen[900];
    int nv = big_to_decimal(&V, vd), nl = big_to_decimal(&L, ld), nh = big_to_decimal(&H, hd);
    /* The fewest significant digits first: for each count, the two candidates around the value
     * (cut, and cut plus one unit); an end of the interval counts when the mantissa is even. */
    int chosen_len = 0, chosen_t = 0;
    for (int keep = 1; keep <= nv && !chosen_len; keep++) {
        int t = nv - keep;
        bool inside[2];
        int len[2];
        for (int up = 0; up <= 1; up++) {
            char *c = cd[up];
            int nc = keep;
            memcpy(c, vd, (size_t)keep);
            if (up) {
                int k = nc - 1;
                while (k >= 0 && c[k] == '9')
                    c[k--] = '0';
                if (k < 0) {
                    memmove(c + 1, c, (size_t)nc);
                    c[0] = '1';
                    nc++;
                } else {
                    c[k]++;
                }
            }
            len[up] = nc;
            /* compare c * 10^t with the ends: pad with zeros virtually */
            char full[900];
            memcpy(full, c, (size_t)nc);
            memset(full + nc, '0', (size_t)t);
            int lo = dec_cmp(full, nc + t, ld, nl), hi = dec_cmp(full, nc + t, hd, nh);
            inside[up] = (lo > 0 || (lo == 0 && even)) && (hi < 0 || (hi == 0 && even));
        }
        if (!inside[0] && !inside[1])
            continue;
        int pick = inside[0] ? 0 : 1;
        if (inside[0] && inside[1] && t > 0) {
            /* the nearer one: compare the cut-off digits with one half; a tie goes to even */
            int half = vd[keep] > '5' ? 1 : vd[keep] < '5' ? -1 : 0;
            for (int k = keep + 1; half == 0 && k < nv; k++)
                if (vd[k] != '0')
                    half = 1;
            pick = half > 0 || (half == 0 && ((vd[keep - 1] - '0') & 1)) ? 1 : 0;
        }
        chosen_len = len[pick];
        chosen_t = t;
        memcpy(chosen, cd[pick], (size_t)chosen_len);
    }
    /* the chosen digits (trailing zeros dropped) and their decimal exponent */
    const char *digits = chosen;
    int nd = chosen_len;
    int exp10 = chosen_t - scale; /* value = digits * 10^exp10 */
    while (nd > 1 && digits[nd - 1] == '0') {
        nd--;
        exp10++;
    }
    int length = nd, k = exp10, kk = length + k;
    if (k >= 0 && kk <= 16) {
        sb_put(b, digits, (size_t)length);
        for (int z = length; z < kk; z++)
            sb_putc(b, '0');
        sb_puts(b, ".0");
    } else if (kk > 0 && kk <= 16) {
        sb_put(b, digits, (size_t)kk);
        sb_putc(b, '.');
        sb_put(b, digits + kk, (size_t)(length - kk));
    } else if (kk > -5 && kk <= 0) {
        sb_puts(b, "0.");
        for (int z = 0; z < -kk; z++)
            sb_putc(b, '0');
        sb_put(b, digits, (size_t)length);
    } else {
        sb_putc(b, digits[0]);
        if (length > 1) {
            sb_putc(b, '.');
            sb_put(b, digits + 1, (size_t)(length - 1));
        }
        sb_putc(b, 'e');
        sb_i64(b, kk - 1);
    }
}
