/*
 * cmbuild rollups: the Cartesi Rollup HTTP API for the runtime layer.
 *
 * Almost every Cartesi application talks to $ROLLUP_HTTP_SERVER_URL (http://127.0.0.1:5004):
 * it asks for the next input with POST /finish and emits outputs with /notice, /voucher,
 * /delegate-call-voucher, /report, /exception and /gio. This program serves that API the way
 * Cartesi's reference server does (rollup-http-server, machine-guest-tools, on top of libcmt):
 * the same routes, JSON shapes, status codes and error bodies (openapi-interfaces rollup.yaml
 * describes the API); and it talks to the machine through /dev/cmio the way libcmt does
 * (cmio.h), keeping the outputs Merkle tree (merkle.h) whose root cartesi-machine checks on
 * every accepted input.
 *
 * Usage: rollups [--address HOST:PORT] [--verbose]
 *   --address   where to listen (default 127.0.0.1:5004; HOST is an IPv4 address or localhost)
 *   --verbose   one line on stderr per request and per yield
 * Once it accepts connections it prints "rollups: listening on 127.0.0.1:5004" on stderr.
 * It runs until it is killed; it never exits on its own except for the failures below.
 *
 * The protocol (one request at a time; the machine is paused during each yield):
 *   POST /finish {"status": "accept"|"reject"}
 *       ends the current input and returns the next one (200):
 *         {"request_type": "advance_state", "data": {"metadata": {"chain_id": 1,
 *          "app_contract": "0x<40 hex>", "msg_sender": "0x<40 hex>", "block_number": 2,
 *          "block_timestamp": 3, "prev_randao": "0x<64 hex>", "input_index": 4},
 *          "payload": "0x..."}}
 *         {"request_type": "inspect_state", "data": {"payload": "0x..."}}
 *       accept: the outputs root goes to the tx buffer and the machine yields rx-accepted;
 *       reject: the tree goes back to where it was before the input and the machine yields
 *       rx-rejected (the emulator then reverts the whole machine anyway). The status of the
 *       first /finish (the machine's template point) and of a /finish after an inspect is
 *       taken as accept, as rollup.yaml says: it yields rx-accepted with the root of the tree
 *       as the last accepted input left it, and outputs emitted outside an advance never stay
 *       in the tree (the emulator does not count them either).
 *   POST /notice {"payload": "0x..."}                                  201 {"index": N}
 *   POST /voucher {"destination": "0x<40 hex>", "value": "0x<64 hex>" (optional, 0),
 *                  "payload": "0x..."}                                  201 {"index": N}
 *   POST /delegate-call-voucher {"destination": "0x<40 hex>", "payload": "0x..."}
 *                                                                       201 {"index": N}
 *   POST /report {"payload": "0x..."}                                   202, empty
 *   POST /exception {"payload": "0x..."}   yields tx-exception: the input ends there
 *   POST /gio {"domain": N >= 16, "id": "0x..."}
 *       yields manual with reason = domain; 202 {"code": C, "data": "0x...",
 *       "response": "0x...", "response_code": C} (the reference server sends response and
 *       response_code, rollup.yaml documents code and data: both are there)
 *   anything else                                                       404, empty
 * Errors are 400 with the reference's text (hex payloads are decoded from their third
 * character on, without checking the "0x", exactly as the reference does).
 *
 * Exit codes (every one printed first as "rollups: error: <what failed>: <errno text>"). They
 * are a decade of their own, apart from init's and the shim's 100-123 and the host's 124/125
 * (init reports any end of this server as its own code 111, quoting this status):
 *    90  the command line is wrong (unknown option, bad --address)
 *    91  /dev/cmio could not be opened (missing, or already open: one opener at a time)
 *    92  /dev/cmio could not be set up (IOCTL_CMIO_SETUP or mapping the tx/rx buffers failed)
 *    93  the listening socket could not be made (socket, bind or listen failed)
 *    94  serving failed (waiting for or accepting connections failed)
 *    95  internal error: a crash (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT)
 */
#include "abi.h"
#include "cmio.h"
#include "hex.h"
#include "http.h"
#include "json.h"
#include "merkle.h"
#include "sys.h"

enum {
    E_USAGE = 90,
    E_CMIO_OPEN = 91,
    E_CMIO_SETUP = 92,
    E_LISTEN = 93,
    E_SERVE = 94,
    E_INTERNAL = 95,
};

static bool verbose;
static struct cmio io;
static struct merkle tree;      /* with the outputs of the current input */
static struct merkle committed; /* as the last accepted input left it */
static u64 root_count = UINT64_MAX;
static u8 root_hash[KECCAK_LEN]; /* root of `committed` when it had root_count leaves */
enum current { CUR_NONE, CUR_ADVANCE, CUR_INSPECT };
static enum current current = CUR_NONE;

static void __attribute__((noreturn)) fatal(int code, const char *what, int err)
{
    if (err)
        eprintf("rollups: error: %s: %s", what, errno_text(err));
    else
        eprintf("rollups: error: %s", what);
    sys_exit(code);
}

static void crashed(int sig)
{
    static char msg[] = "rollups: error: crashed with signal 00\n";
    msg[sizeof msg - 4] = (char)('0' + sig / 10 % 10);
    msg[sizeof msg - 3] = (char)('0' + sig % 10);
    sys_write(2, msg, sizeof msg - 1);
    sys_exit(E_INTERNAL);
}

/* ------------------------------------------------------------------ request bodies ----- */

static const struct jfield f_status[] = {{"status", J_STRING}};
static const struct jfield f_payload[] = {{"payload", J_STRING}};
static const struct jfield f_voucher[] = {{"destination", J_STRING}, {"value", J_OPT_STRING}, {"payload", J_STRING}};
static const struct jfield f_dcv[] = {{"destination", J_STRING}, {"payload", J_STRING}};
static const struct jfield f_gio[] = {{"domain", J_U16}, {"id", J_STRING}};

static const struct jschema s_finish = {"FinishRequest", 1, f_status};
static const struct jschema s_notice = {"Notice", 1, f_payload};
static const struct jschema s_report = {"Report", 1, f_payload};
static const struct jschema s_exception = {"Exception", 1, f_payload};
static const struct jschema s_voucher = {"Voucher", 3, f_voucher};
static const struct jschema s_dcv = {"DelegateCallVoucher", 2, f_dcv};
static const struct jschema s_gio = {"GIORequest", 2, f_gio};

static void text(struct response *resp, int status, const char *content_type)
{
    resp->status = status;
    resp->content_type = content_type;
}

/* actix-web-validator's answer to a body it cannot read: 400, no Content-Type */
static bool read_body(const struct request *r, const struct jschema *s, struct jvalue *v, struct response *resp)
{
    if (r->overflow == OVERFLOW_KNOWN_LENGTH) {
        text(resp, 400, NULL);
        sb_printf(&resp->body, "Payload error: JSON payload (%lu bytes) is larger than allowed (limit: %d bytes).",
                  r->length, (int)BODY_LIMIT);
        return false;
    }
    if (r->overflow == OVERFLOW_STREAM) {
        text(resp, 400, NULL);
        sb_printf(&resp->body, "Payload error: JSON payload has exceeded limit (%d bytes).", (int)BODY_LIMIT);
        return false;
    }
    struct sb err = {0};
    if (json_parse(s, r->body, r->body_len, v, &err)) {
        sb_free(&err);
        return true;
    }
    text(resp, 400, NULL);
    sb_printf(&resp->body, "Payload error: Json deserialize error: %S", &err);
    sb_free(&err);
    return false;
}

/* The validator crate's regex check `0x[0-9a-fA-F]{1,N}$`, unanchored at the start as the
 * reference's regexes are: the string ends with "0x" and 1 to N hex digits. */
static bool regex_hex_suffix(const u8 *s, size_t n, size_t max_digits)
{
    for (size_t k = 0; k + 2 < n; k++) {
        if (s[k] != '0' || s[k + 1] != 'x')
            continue;
        size_t digits = n - k - 2;
        if (digits < 1 || digits > max_digits)
            continue;
        bool ok = true;
        for (size_t j = k + 2; j < n && ok; j++) {
            u8 c = s[j];
            ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
        }
        if (ok)
            return true;
    }
    return false;
}

static void regex_error(struct sb *b, const char *field, const struct jvalue *v)
{
    sb_printf(b, "\n\t%s: Validation error: regex [{\"value\": String(", field);
    rust_debug_str(b, v->s, v->len);
    sb_puts(b, ")}]");
}

/* ------------------------------------------------------------------ hex payloads ------- */

static struct sb decoded;       /* the bytes of the last decoded hex string */
static struct sb payload_bytes; /* a voucher's payload while its other fields are decoded */

/* The reference decodes `text[2..]` of each hex field, whatever its first two characters are.
 * Where that slice would panic in Rust (shorter than 2 bytes, or byte 2 inside a UTF-8
 * character: the reference's worker dies and the connection drops) this reports a decoding
 * error instead. On failure *err says why as the hex crate would. */
static bool decode_0x(const struct jvalue *v, struct hex_error *err)
{
    sb_reset(&decoded);
    if (v->len < 2 || (v->len > 2 && (v->s[2] & 0xc0) == 0x80)) {
        err->status = HEX_INVALID_CHAR;
        err->index = 0;
        err->c = v->len > 2 ? v->s[2] : 0;
        return false;
    }
    size_t n = v->len - 2;
    if (!sb_reserve(&decoded, n / 2 + 1)) {
        err->status = HEX_INVALID_LENGTH;
        return false;
    }
    if (hex_decode(v->s + 2, n, (u8 *)decoded.p, err) != HEX_OK)
        return false;
    decoded.len = n / 2;
    return true;
}

static void out_of_memory(struct response *resp)
{
    sb_reset(&resp->body);
    text(resp, 500, "text/plain");
    sb_puts(&resp->body, "rollups: out of memory");
}

/* ------------------------------------------------------------------ outputs ------------ */

static void yielded(int cmd, u16 reason, u32 data)
{
    if (verbose)
        eprintf("rollups: yield %s reason %u, %u bytes", cmd == YIELD_MANUAL ? "manual" : "automatic",
                (unsigned)reason, (unsigned)data);
}

/* Yield an output already in tx, append it to the tree; its index, or -errno. */
static long emit_output(size_t len)
{
    u16 reason = REASON_TX_OUTPUT;
    u32 data = (u32)len;
    yielded(YIELD_AUTOMATIC, reason, data);
    int rc = cmio_yield(&io, YIELD_AUTOMATIC, &reason, &data);
    if (rc)
        return rc;
    u64 index = tree.leaf_count;
    rc = merkle_push_data(&tree, io.tx, len);
    if (rc)
        return rc;
    return (long)index;
}

static void index_response(struct response *resp, long index)
{
    text(resp, 201, "application/json");
    sb_printf(&resp->body, "{\"index\":%lu}", (u64)index);
}

static void handle_notice(const struct request *r, struct response *resp)
{
    struct jvalue v[1];
    struct hex_error he;
    if (!read_body(r, &s_notice, v, resp))
        return;
    text(resp, 400, "text/plain");
    if (!decode_0x(&v[0], &he)) {
        sb_puts(&resp->body, "unable to insert notice, error details: 'rollup error: Error decoding notice payload, "
                             "payload must be in Ethereum hex binary format'");
        return;
    }
    long len = abi_encode_notice(io.tx, io.tx_len, (const u8 *)decoded.p, decoded.len);
    long index = len < 0 ? len : emit_output((size_t)len);
    if (index < 0) {
        sb_printf(&resp->body, "unable to insert notice, error details: 'rollup error: IOCTL_ROLLUP_WRITE_NOTICE "
                               "returned error %ld'", (i64)index);
        return;
    }
    index_response(resp, index);
}

static bool check_destination(const struct jvalue *dest, struct response *resp)
{
    if (dest->len != 42 || dest->s[0] != '0' || dest->s[1] != 'x') {
        text(resp, 400, "text/plain");
        sb_puts(&resp->body, "address not valid");
        return false;
    }
    return true;
}

static void voucher_hex_error(struct response *resp, const struct hex_error *he)
{
    text(resp, 400, "text/plain");
    sb_puts(&resp->body, "unable to insert voucher, error details: '");
    hex_error_text(&resp->body, he);
    sb_putc(&resp->body, '\'');
}

static void voucher_payload_error(struct response *resp)
{
    text(resp, 400, "text/plain");
    sb_puts(&resp->body, "unable to insert voucher, error details: 'rollup error: Error decoding voucher payload, "
                         "it must be in Ethereum hex binary format'");
}

/* a hex number of up to 32 bytes, right-aligned in a 32-byte big-endian word (libcmt's
 * cmt_abi_encode_uint_nn) */
static bool u256_from(const struct jvalue *v, u8 out[32], struct hex_error *he)
{
    if (!decode_0x(v, he))
        return false;
    if (decoded.len > 32) {
        he->status = HEX_INVALID_LENGTH;
        return false;
    }
    memset(out, 0, 32);
    memcpy(out + 32 - decoded.len, decoded.p, decoded.len);
    return true;
}

static void handle_voucher(const struct request *r, struct response *resp, bool delegate)
{
    struct jvalue v[3];
    struct hex_error he;
    const struct jvalue *dest = &v[0], *value = delegate ? NULL : &v[1], *payload = delegate ? &v[1] : &v[2];
    if (!read_body(r, delegate ? &s_dcv : &s_voucher, v, resp))
        return;
    bool bad_dest = !regex_hex_suffix(dest->s, dest->len, 42);
    bool bad_value = value && value->present && !regex_hex_suffix(value->s, value->len, 64);
    if (bad_dest || bad_value) {
        text(resp, 400, NULL);
        sb_puts(&resp->body, "Validation errors in fields:");
        if (bad_dest)
            regex_error(&resp->body, "destination", dest);
        if (bad_value)
            regex_error(&resp->body, "value", value);
        return;
    }
    if (!check_destination(dest, resp))
        return;
    /* the reference's order: payload, value, destination */
    if (!decode_0x(payload, &he)) {
        voucher_payload_error(resp);
        return;
    }
    sb_reset(&payload_bytes);
    sb_put(&payload_bytes, decoded.p, decoded.len);
    if (payload_bytes.failed) {
        out_of_memory(resp);
        return;
    }
    u8 value_word[32], dest_word[32];
    if (value) {
        static const u8 zero_hex[] = "0x0000000000000000000000000000000000000000000000000000000000000000";
        struct jvalue zero = {true, zero_hex, 66, 0};
        if (!u256_from(value->present ? value : &zero, value_word, &he)) {
            voucher_hex_error(resp, &he);
            return;
        }
    }
    if (!u256_from(dest, dest_word, &he)) {
        voucher_hex_error(resp, &he);
        return;
    }
    long len = delegate ? abi_encode_delegate_call_voucher(io.tx, io.tx_len, dest_word + 12, (const u8 *)payload_bytes.p,
                                                           payload_bytes.len)
                        : abi_encode_voucher(io.tx, io.tx_len, dest_word + 12, value_word, (const u8 *)payload_bytes.p,
                                             payload_bytes.len);
    long index = len < 0 ? len : emit_output((size_t)len);
    if (index < 0) {
        text(resp, 400, "text/plain");
        sb_printf(&resp->body, "unable to insert voucher, error details: 'rollup error: IOCTL_ROLLUP_WRITE_OUTPUT "
                               "returned error %ld'", (i64)index);
        return;
    }
    index_response(resp, index);
}

static void handle_report(const struct request *r, struct response *resp)
{
    struct jvalue v[1];
    struct hex_error he;
    if (!read_body(r, &s_report, v, resp))
        return;
    text(resp, 400, "text/plain");
    if (!decode_0x(&v[0], &he)) {
        sb_puts(&resp->body, "unable to insert notice, error details: 'rollup error: Error decoding report payload, "
                             "payload must be in Ethereum hex binary format'");
        return;
    }
    int rc = -ENOBUFS;
    if (decoded.len <= io.tx_len) {
        memcpy(io.tx, decoded.p, decoded.len);
        u16 reason = REASON_TX_REPORT;
        u32 data = (u32)decoded.len;
        yielded(YIELD_AUTOMATIC, reason, data);
        rc = cmio_yield(&io, YIELD_AUTOMATIC, &reason, &data);
    }
    if (rc) {
        sb_printf(&resp->body, "unable to insert notice, error details: 'rollup error: IOCTL_ROLLUP_WRITE_REPORT "
                               "returned error %d'", rc);
        return;
    }
    text(resp, 202, NULL);
}

static void handle_exception(const struct request *r, struct response *resp)
{
    struct jvalue v[1];
    struct hex_error he;
    if (!read_body(r, &s_exception, v, resp))
        return;
    text(resp, 400, "text/plain");
    if (!decode_0x(&v[0], &he)) {
        sb_puts(&resp->body, "unable to throw exception, error details: 'rollup error: Error decoding report payload, "
                             "payload must be in Ethereum hex binary format'");
        return;
    }
    int rc = -ENOBUFS;
    if (decoded.len <= io.tx_len) {
        memcpy(io.tx, decoded.p, decoded.len);
        u16 reason = REASON_TX_EXCEPTION;
        u32 data = (u32)decoded.len;
        yielded(YIELD_MANUAL, reason, data);
        rc = cmio_yield(&io, YIELD_MANUAL, &reason, &data);
    }
    if (rc) {
        sb_printf(&resp->body, "unable to throw exception, error details: 'rollup error: "
                               "IOCTL_ROLLUP_THROW_EXCEPTION returned error %d'", rc);
        return;
    }
    text(resp, 202, NULL);
}

static void handle_gio(const struct request *r, struct response *resp)
{
    struct jvalue v[2];
    struct hex_error he;
    if (!read_body(r, &s_gio, v, resp))
        return;
    if (v[0].u < 0x10) { /* below 0x10 are the rollups' own manual yield reasons */
        text(resp, 400, NULL);
        sb_printf(&resp->body, "Validation errors in fields:\n\tdomain: Validation error: range "
                               "[{\"min\": Number(16), \"value\": Number(%u)}]", (unsigned)v[0].u);
        return;
    }
    text(resp, 400, "text/plain");
    if (!decode_0x(&v[1], &he)) {
        sb_puts(&resp->body, "unable to process gio request, error details: 'rollup error: Error decoding gio request "
                             "payload, payload must be in Ethereum hex binary format'");
        return;
    }
    int rc = -ENOBUFS;
    u16 reason = v[0].u;
    u32 data = (u32)decoded.len;
    if (decoded.len <= io.tx_len) {
        memcpy(io.tx, decoded.p, decoded.len);
        yielded(YIELD_MANUAL, reason, data);
        rc = cmio_yield(&io, YIELD_MANUAL, &reason, &data);
        if (!rc && data > io.rx_len)
            rc = -ENOBUFS;
    }
    if (rc) {
        sb_printf(&resp->body, "unable to process gio request, error details: 'rollup error: GIO request returned "
                               "error %d'", rc);
        return;
    }
    text(resp, 202, NULL);
    struct sb *b = &resp->body;
    sb_printf(b, "{\"code\":%u,\"data\":\"0x", (unsigned)reason);
    sb_hex(b, io.rx, data);
    sb_printf(b, "\",\"response\":\"0x");
    sb_hex(b, io.rx, data);
    sb_printf(b, "\",\"response_code\":%u}", (unsigned)reason);
}

/* ------------------------------------------------------------------ finish ------------- */

static void address_json(struct sb *b, const char *name, const u8 *a, size_t n)
{
    sb_printf(b, "\"%s\":\"0x", name);
    sb_hex(b, a, n);
    sb_putc(b, '"');
}

static void handle_finish(const struct request *r, struct response *resp)
{
    struct jvalue v[1];
    if (!read_body(r, &s_finish, v, resp))
        return;
    bool accept = v[0].len == 6 && memcmp(v[0].s, "accept", 6) == 0;
    bool reject = v[0].len == 6 && memcmp(v[0].s, "reject", 6) == 0;
    text(resp, 400, "text/plain");
    if (!accept && !reject) {
        sb_puts(&resp->body, "status must be 'accept' or 'reject'");
        return;
    }
    u16 reason;
    u32 data;
    int rc;
    if (current == CUR_ADVANCE && reject) {
        tree = committed;
        reason = REASON_RX_REJECTED;
        data = 0;
    } else {
        if (current == CUR_ADVANCE)
            committed = tree;
        else
            tree = committed;
        if (root_count != committed.leaf_count) {
            merkle_root(&committed, root_hash);
            root_count = committed.leaf_count;
        }
        memcpy(io.tx, root_hash, KECCAK_LEN);
        reason = REASON_RX_ACCEPTED;
        data = KECCAK_LEN;
    }
    yielded(YIELD_MANUAL, reason, data);
    rc = cmio_yield(&io, YIELD_MANUAL, &reason, &data);
    if (rc) {
        sb_printf(&resp->body, "error performing initial finish request: `rollup error: IOCTL_ROLLUP_FINISH returned "
                               "error %d`", rc);
        return;
    }
    if (verbose)
        eprintf("rollups: next request: type %u, %u bytes", (unsigned)reason, (unsigned)data);
    struct sb *b = &resp->body;
    if (reason == REQUEST_ADVANCE) {
        current = CUR_ADVANCE;
        struct advance a;
        rc = data <= io.rx_len ? abi_decode_advance(io.rx, data, &a) : -ENOBUFS;
        if (rc) {
            sb_puts(b, "error performing handle_rollup_requests: `rollup error: IOCTL_ROLLUP_READ_ADVANCE_STATE "
                       "returned error -105`");
            return;
        }
        text(resp, 200, "application/json");
        sb_printf(b, "{\"request_type\":\"advance_state\",\"data\":{\"metadata\":{\"chain_id\":%lu,", a.chain_id);
        address_json(b, "app_contract", a.app_contract, 20);
        sb_putc(b, ',');
        address_json(b, "msg_sender", a.msg_sender, 20);
        sb_printf(b, ",\"block_number\":%lu,\"block_timestamp\":%lu,", a.block_number, a.block_timestamp);
        address_json(b, "prev_randao", a.prev_randao, 32);
        sb_printf(b, ",\"input_index\":%lu},\"payload\":\"0x", a.index);
        sb_hex(b, a.payload, a.payload_len);
        sb_puts(b, "\"}}");
    } else if (reason == REQUEST_INSPECT) {
        current = CUR_INSPECT;
        if (data > io.rx_len) {
            sb_puts(b, "error performing handle_rollup_requests: `rollup error: IOCTL_ROLLUP_READ_INSPECT_STATE "
                       "returned error -105`");
            return;
        }
        text(resp, 200, "application/json");
        sb_puts(b, "{\"request_type\":\"inspect_state\",\"data\":{\"payload\":\"0x");
        sb_hex(b, io.rx, data);
        sb_puts(b, "\"}}");
    } else {
        current = CUR_NONE;
        sb_puts(b, "error performing handle_rollup_requests: `request type unsupported`");
    }
}

/* ------------------------------------------------------------------ routing ------------ */

static void handle(const struct request *r, struct response *resp)
{
    bool post = r->method_len == 4 && memcmp(r->method, "POST", 4) == 0;
    const char *p = r->path;
    if (!post) {
        text(resp, 404, NULL);
    } else if (str_eq(p, "/finish")) {
        handle_finish(r, resp);
    } else if (str_eq(p, "/notice")) {
        handle_notice(r, resp);
    } else if (str_eq(p, "/voucher")) {
        handle_voucher(r, resp, false);
    } else if (str_eq(p, "/delegate-call-voucher")) {
        handle_voucher(r, resp, true);
    } else if (str_eq(p, "/report")) {
        handle_report(r, resp);
    } else if (str_eq(p, "/exception")) {
        handle_exception(r, resp);
    } else if (str_eq(p, "/gio")) {
        handle_gio(r, resp);
    } else {
        text(resp, 404, NULL);
    }
    if (resp->body.failed)
        out_of_memory(resp);
    /* give back the memory of a big request */
    if (decoded.cap > (1u << 20))
        sb_free(&decoded);
    if (payload_bytes.cap > (1u << 20))
        sb_free(&payload_bytes);
    json_release();
}

/* ------------------------------------------------------------------ main --------------- */

static void usage(int fd)
{
    static const char text_[] = "usage: rollups [--address HOST:PORT] [--verbose]\n"
                                "Serves the Cartesi Rollup HTTP API over /dev/cmio (default address 127.0.0.1:5004).\n";
    sys_write(fd, text_, sizeof text_ - 1);
}

int main(int argc, char **argv)
{
    const char *address = "127.0.0.1:5004";
    for (int k = 1; k < argc; k++) {
        const char *a = argv[k];
        if (str_eq(a, "--address") && k + 1 < argc) {
            address = argv[++k];
        } else if (memcmp(a, "--address=", 10) == 0) {
            address = a + 10;
        } else if (str_eq(a, "--verbose")) {
            verbose = true;
        } else if (str_eq(a, "--help") || str_eq(a, "-h")) {
            usage(1);
            return 0;
        } else {
            usage(2);
            eprintf("rollups: error: unknown argument: %s", a);
            return E_USAGE;
        }
    }
    /* 0, 1 and 2 must be open, or the socket could take fd 2 and messages would go to a client */
    for (;;) {
        long fd = sys_openat(AT_FDCWD, "/dev/null", O_RDWR, 0);
        if (fd < 0 || fd > 2) {
            if (fd > 2)
                sys_close((int)fd);
            break;
        }
    }
    struct sockaddr_in sa;
    if (!http_parse_address(address, &sa)) {
        eprintf("rollups: error: bad --address (expected IPv4-ADDRESS:PORT or localhost:PORT): %s", address);
        return E_USAGE;
    }

    sig_set(SIGPIPE, NULL);
    sig_set(SIGSEGV, crashed);
    sig_set(SIGBUS, crashed);
    sig_set(SIGILL, crashed);
    sig_set(SIGFPE, crashed);
    sig_set(SIGABRT, crashed);

    const char *what = "";
    bool setup_failed;
    int rc = cmio_open(&io, &what, &setup_failed);
    if (rc)
        fatal(setup_failed ? E_CMIO_SETUP : E_CMIO_OPEN, what, -rc);
    merkle_init(&tree);
    committed = tree;

    int fd = http_listen(&sa, &what);
    if (fd < 0)
        fatal(E_LISTEN, what, -fd);
    u32 ip = sa.addr;
    unsigned port = (unsigned)((sa.port >> 8) | ((sa.port & 0xff) << 8));
    eprintf("rollups: listening on %u.%u.%u.%u:%u", ip & 0xff, (ip >> 8) & 0xff, (ip >> 16) & 0xff, ip >> 24, port);

    rc = http_serve(fd, handle, verbose, &what);
    fatal(E_SERVE, what, -rc);
}
