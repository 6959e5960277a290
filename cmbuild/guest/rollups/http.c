/* The HTTP/1.1 server (see http.h). */
#include "hex.h"
#include "http.h"

enum { BUF_MAX = MAX_HEAD + BODY_LIMIT + 65536, BUF_START = 65536, READ_CHUNK = 65536 };

/* A connection the server closes after its answer is first drained: the write side is shut
 * down and what the client still sends is read and dropped (until it closes, for at most
 * DRAIN_MS and DRAIN_BYTES). Closing with unread data would reset the connection, and a
 * reset can destroy the answer before the client reads it. */
enum { DRAIN_MS = 2000, DRAIN_BYTES = 8 << 20 };

enum chunk_state { C_SIZE, C_SIZE_LWS, C_EXTENSION, C_SIZE_LF, C_BODY, C_BODY_CR, C_BODY_LF, C_END_CR, C_END_LF, C_END };

struct conn {
    int fd;
    u8 *buf;
    size_t len, cap;
    bool eof;
    bool closing;  /* no more requests: answer sent, drain then close */
    bool broken;   /* the socket failed: close at once */
    bool draining;
    u64 drain_deadline;
    size_t drained;
    /* the request being read */
    size_t head_len;          /* 0: head not complete yet */
    bool continue_sent;
    /* chunked body: decoded bytes at buf[head_len .. head_len+body_len), undecoded wire bytes
     * from buf[wire ..) */
    size_t body_len, wire;
    enum chunk_state cstate;
    u64 csize;
};

static struct conn conns[MAX_CONNECTIONS];
static int nconns;
static bool verbose_;

/* ------------------------------------------------------------------ parsing ------------ */

static bool is_tchar(u8 c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '.': case '^': case '_': case '`': case '|': case '~':
        return true;
    default:
        return false;
    }
}

static bool is_value_byte(u8 c) { return c == '\t' || c == ' ' || (c >= 0x21 && c != 0x7f); }

enum head_status { HEAD_MORE, HEAD_OK, HEAD_BAD, HEAD_TOO_LARGE };

/* The path actix matches: the target's path without the query, percent-escapes decoded except
 * those of '/', '%' and '+'. */
static void set_path(struct request *r, const u8 *t, size_t n)
{
    r->path[0] = 0;
    if (n >= 1 && t[0] != '/') {
        /* absolute form: scheme://authority/path */
        size_t k = 0;
        while (k + 2 < n && !(t[k] == ':' && t[k + 1] == '/' && t[k + 2] == '/'))
            k++;
        if (k + 2 >= n) { /* "*" or an authority: matches no route */
            r->path[0] = '*';
            r->path[1] = 0;
            return;
        }
        k += 3;
        while (k < n && t[k] != '/' && t[k] != '?')
            k++;
        t += k;
        n -= k;
        if (n == 0 || t[0] == '?') {
            r->path[0] = '/';
            r->path[1] = 0;
            return;
        }
    }
    size_t o = 0;
    for (size_t k = 0; k < n && t[k] != '?' && t[k] != '#'; k++) {
        u8 c = t[k];
        if (c == '%' && k + 2 < n + 0 && hex_value(t[k + 1]) >= 0 && hex_value(t[k + 2]) >= 0) {
            u8 d = (u8)(hex_value(t[k + 1]) << 4 | hex_value(t[k + 2]));
            if (d != '/' && d != '%' && d != '+') {
                c = d;
                k += 2;
            }
        }
        if (o + 1 >= sizeof r->path) {
            r->path[0] = 0; /* too long for any route */
            return;
        }
        r->path[o++] = (char)c;
    }
    r->path[o] = 0;
}

static const u8 *trim(const u8 *v, size_t *n)
{
    while (*n && (v[0] == ' ' || v[0] == '\t'))
        v++, (*n)--;
    while (*n && (v[*n - 1] == ' ' || v[*n - 1] == '\t'))
        (*n)--;
    return v;
}

static bool header_is(const u8 *name, size_t n, const char *lower)
{
    return strlen(lower) == n && mem_eq_nocase(name, lower, n);
}

static bool all_visible_ascii(const u8 *v, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (v[k] >= 0x80)
            return false;
    return true;
}

/* Parse the request head at the start of b[0..n). */
static enum head_status parse_head(const u8 *b, size_t n, struct request *r, size_t *head_len)
{
    memset(r, 0, sizeof *r);
    size_t i = 0;
    /* empty lines before the request line are skipped */
    for (;;) {
        if (i < n && b[i] == '\n') {
            i++;
        } else if (i + 1 < n && b[i] == '\r' && b[i + 1] == '\n') {
            i += 2;
        } else if (i + 1 == n && b[i] == '\r') {
            return HEAD_MORE;
        } else {
            break;
        }
    }
    /* method */
    size_t m = i;
    while (i < n && is_tchar(b[i]))
        i++;
    if (i == n)
        return HEAD_MORE;
    if (i == m || b[i] != ' ')
        return HEAD_BAD;
    r->method = b + m;
    r->method_len = i - m;
    i++;
    /* request target */
    size_t t = i;
    while (i < n && b[i] != ' ') {
        if (b[i] < 0x21 || b[i] == 0x7f)
            return HEAD_BAD;
        i++;
    }
    if (i == n)
        return HEAD_MORE;
    if (i == t)
        return HEAD_BAD;
    for (size_t k = t; k < i; k++)
        if (b[k] >= 0x80) /* the URI parser takes ASCII only */
            return HEAD_BAD;
    set_path(r, b + t, i - t);
    i++;
    /* version */
    static const char v[] = "HTTP/1.";
    for (size_t k = 0; k < 7; k++, i++) {
        if (i == n)
            return HEAD_MORE;
        if (b[i] != (u8)v[k])
            return HEAD_BAD;
    }
    if (i == n)
        return HEAD_MORE;
    if (b[i] != '0' && b[i] != '1')
        return HEAD_BAD;
    r->http11 = b[i] == '1';
    i++;
    if (i == n)
        return HEAD_MORE;
    if (b[i] == '\r') {
        if (++i == n)
            return HEAD_MORE;
        if (b[i] != '\n')
            return HEAD_BAD;
    } else if (b[i] != '\n') {
        return HEAD_BAD;
    }
    i++;
    /* header lines */
    int lines = 0, conn_type = 0; /* 1 keep-alive, 2 close, 3 upgrade */
    bool seen_te = false;
    for (;;) {
        if (i == n)
            return HEAD_MORE;
        if (b[i] == '\n') {
            i++;
            break;
        }
        if (b[i] == '\r') {
            if (i + 1 == n)
                return HEAD_MORE;
            if (b[i + 1] != '\n')
                return HEAD_BAD;
            i += 2;
            break;
        }
        if (++lines > MAX_HEADER_LINES)
            return HEAD_TOO_LARGE;
        size_t nm = i;
        while (i < n && is_tchar(b[i]))
            i++;
        if (i == n)
            return HEAD_MORE;
        if (i == nm || b[i] != ':')
            return HEAD_BAD;
        const u8 *name = b + nm;
        size_t name_len = i - nm;
        i++;
        size_t vs = i;
        while (i < n && b[i] != '\r' && b[i] != '\n') {
            if (!is_value_byte(b[i]))
                return HEAD_BAD;
            i++;
        }
        if (i == n)
            return HEAD_MORE;
        size_t ve = i;
        if (b[i] == '\r') {
            if (i + 1 == n)
                return HEAD_MORE;
            if (b[i + 1] != '\n')
                return HEAD_BAD;
            i++;
        }
        i++;
        size_t vn = ve - vs;
        const u8 *val = trim(b + vs, &vn);
        if (header_is(name, name_len, "content-length")) {
            if (r->has_length || !all_visible_ascii(val, vn) || vn == 0 || val[0] == '+')
                return HEAD_BAD;
            u64 x = 0;
            for (size_t k = 0; k < vn; k++) {
                if (val[k] < '0' || val[k] > '9' || x > (UINT64_MAX - 9) / 10)
                    return HEAD_BAD;
                x = x * 10 + (u64)(val[k] - '0');
            }
            r->has_length = true;
            r->length = x;
        } else if (header_is(name, name_len, "transfer-encoding")) {
            if (seen_te)
                return HEAD_BAD;
            if (r->http11) {
                seen_te = true;
                if (!all_visible_ascii(val, vn))
                    return HEAD_BAD;
                if (vn == 7 && mem_eq_nocase(val, "chunked", 7))
                    r->chunked = true;
                else if (!(vn == 8 && mem_eq_nocase(val, "identity", 8)))
                    return HEAD_BAD;
            }
        } else if (header_is(name, name_len, "connection")) {
            conn_type = 0;
            if (all_visible_ascii(val, vn)) {
                if (vn == 10 && mem_eq_nocase(val, "keep-alive", 10))
                    conn_type = 1;
                else if (vn == 5 && mem_eq_nocase(val, "close", 5))
                    conn_type = 2;
                else if (vn == 7 && mem_eq_nocase(val, "upgrade", 7))
                    conn_type = 3;
            }
        } else if (header_is(name, name_len, "expect")) {
            if (vn >= 4 && memcmp(val, "100-", 4) == 0)
                r->expect_continue = true;
        }
    }
    if (!r->http11 && r->method_len == 4 && memcmp(r->method, "POST", 4) == 0 && !r->has_length)
        return HEAD_BAD; /* an HTTP/1.0 POST must say its length */
    r->keep_alive = conn_type == 1 || (conn_type == 0 && r->http11);
    *head_len = i;
    return HEAD_OK;
}

/* ------------------------------------------------------------------ chunked bodies ----- */

enum dechunk_status { D_MORE, D_DONE, D_BAD, D_OVER };

/* Decode the wire bytes buf[wire..len) in place after the decoded body, then close the gap. */
static enum dechunk_status dechunk(struct conn *c)
{
    size_t out = c->head_len + c->body_len;
    size_t i = c->wire;
    enum dechunk_status st = D_MORE;
    while (i < c->len && st == D_MORE) {
        u8 ch = c->buf[i];
        switch (c->cstate) {
        case C_SIZE: {
            int h = hex_value(ch);
            i++;
            if (h >= 0) {
                if (c->csize > UINT64_MAX / 16) {
                    st = D_BAD;
                    break;
                }
                c->csize = c->csize * 16 + (u64)h;
            } else if (ch == '\t' || ch == ' ') {
                c->cstate = C_SIZE_LWS;
            } else if (ch == ';') {
                c->cstate = C_EXTENSION;
            } else if (ch == '\r') {
                c->cstate = C_SIZE_LF;
            } else {
                st = D_BAD;
            }
            break;
        }
        case C_SIZE_LWS:
            i++;
            if (ch == ';')
                c->cstate = C_EXTENSION;
            else if (ch == '\r')
                c->cstate = C_SIZE_LF;
            else if (ch != '\t' && ch != ' ')
                st = D_BAD;
            break;
        case C_EXTENSION:
            i++;
            if (ch == '\r')
                c->cstate = C_SIZE_LF;
            else if (ch <= 0x08 || (ch >= 0x0a && ch <= 0x1f) || ch == 0x7f)
                st = D_BAD;
            break;
        case C_SIZE_LF:
            i++;
            if (ch != '\n')
                st = D_BAD;
            else
                c->cstate = c->csize ? C_BODY : C_END_CR;
            break;
        case C_BODY: {
            size_t avail = c->len - i;
            size_t take = c->csize < avail ? (size_t)c->csize : avail;
            if (c->body_len + take > BODY_LIMIT) {
                st = D_OVER;
                break;
            }
            memmove(c->buf + out, c->buf + i, take);
            out += take;
            c->body_len += take;
            i += take;
            c->csize -= take;
            if (!c->csize)
                c->cstate = C_BODY_CR;
            break;
        }
        case C_BODY_CR:
            i++;
            if (ch != '\r')
                st = D_BAD;
            else
                c->cstate = C_BODY_LF;
            break;
        case C_BODY_LF:
            i++;
            if (ch != '\n')
                st = D_BAD;
            else
                c->cstate = C_SIZE;
            break;
        case C_END_CR:
            i++;
            if (ch != '\r')
                st = D_BAD;
            else
                c->cstate = C_END_LF;
            break;
        case C_END_LF:
            i++;
            if (ch != '\n') {
                st = D_BAD;
            } else {
                c->cstate = C_END;
                st = D_DONE;
            }
            break;
        case C_END:
            st = D_DONE;
            break;
        }
    }
    if (st == D_MORE || st == D_DONE) {
        /* move what follows (the rest of the wire, or pipelined requests) next to the body */
        memmove(c->buf + out, c->buf + i, c->len - i);
        c->len = out + (c->len - i);
        c->wire = out;
    }
    return st;
}

/* ------------------------------------------------------------------ responses ---------- */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    default: return "Unknown";
    }
}

static void send_all(struct conn *c, const void *data, size_t n)
{
    const u8 *p = data;
    while (n && !c->broken) {
        long w = sys_send(c->fd, p, n, MSG_NOSIGNAL);
        if (w == -EINTR)
            continue;
        if (w <= 0) {
            c->closing = c->broken = true; /* the client went away; drop the connection */
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static struct sb out;

static void respond(struct conn *c, bool http11, int status, const char *content_type, const struct sb *body,
                    bool close, bool ka10)
{
    sb_reset(&out);
    sb_printf(&out, "HTTP/1.%c %d %s\r\ncontent-length: %zu\r\n", http11 ? '1' : '0', status,
              reason_phrase(status), body ? body->len : (size_t)0);
    if (content_type)
        sb_printf(&out, "content-type: %s\r\n", content_type);
    if (close)
        sb_puts(&out, "connection: close\r\n");
    else if (ka10)
        sb_puts(&out, "connection: keep-alive\r\n");
    sb_puts(&out, "\r\n");
    if (body)
        sb_put(&out, body->p, body->len);
    if (out.failed) {
        static const char oom[] = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        send_all(c, oom, sizeof oom - 1);
        c->closing = true;
        return;
    }
    send_all(c, out.p, out.len);
    if (close)
        c->closing = true;
}

static void respond_bare(struct conn *c, int status)
{
    if (verbose_)
        eprintf("rollups: malformed request -> %d", status);
    respond(c, true, status, NULL, NULL, true, false);
}

/* ------------------------------------------------------------------ connections -------- */

static void conn_close(int k)
{
    struct conn *c = &conns[k];
    sys_close(c->fd);
    mem_free(c->buf, c->cap);
    conns[k] = conns[--nconns];
}

static void conn_start_drain(struct conn *c)
{
    sys_shutdown(c->fd, SHUT_WR);
    mem_free(c->buf, c->cap);
    c->buf = NULL;
    c->cap = c->len = 0;
    c->draining = true;
    c->drain_deadline = now_ms() + DRAIN_MS;
    c->drained = 0;
}

static bool conn_make_room(struct conn *c)
{
    if (c->cap - c->len >= READ_CHUNK || c->cap == BUF_MAX)
        return c->cap > c->len;
    size_t cap = c->cap * 2;
    while (cap - c->len < READ_CHUNK)
        cap *= 2;
    if (cap > BUF_MAX)
        cap = BUF_MAX;
    u8 *p = mem_resize(c->buf, c->cap, cap);
    if (!p)
        return false;
    c->buf = p;
    c->cap = cap;
    return true;
}

/* After a big request, give the memory back. */
static void conn_shrink(struct conn *c)
{
    if (c->cap <= BUF_START || c->len > BUF_START / 2)
        return;
    u8 *p = mem_resize(c->buf, c->cap, BUF_START);
    if (p) {
        c->buf = p;
        c->cap = BUF_START;
    }
}

static struct response resp;

static void dispatch(struct conn *c, struct request *r, http_handler handler, size_t consumed, bool force_close)
{
    sb_reset(&resp.body);
    resp.status = 500;
    resp.content_type = NULL;
    handler(r, &resp);
    bool close = force_close || !r->keep_alive;
    if (verbose_)
        eprintf("rollups: %.*s %s -> %d", (int)r->method_len, (const char *)r->method, r->path, resp.status);
    respond(c, r->http11, resp.status, resp.content_type, &resp.body, close, !r->http11 && r->keep_alive);
    if (out.cap > (1u << 20)) /* give back the memory of a big answer */
        sb_free(&out);
    if (resp.body.cap > (1u << 20))
        sb_free(&resp.body);
    /* drop the request, keep what follows */
    memmove(c->buf, c->buf + consumed, c->len - consumed);
    c->len -= consumed;
    c->head_len = 0;
    conn_shrink(c);
}

/* Handle every complete request in the connection's buffer. */
static void conn_process(struct conn *c, http_handler handler)
{
    while (!c->closing) {
        struct request r;
        size_t head_len = 0;
        enum head_status hs = parse_head(c->buf, c->head_len ? c->head_len : c->len, &r, &head_len);
        if (hs == HEAD_MORE) {
            if (c->len >= MAX_HEAD)
                respond_bare(c, 431);
            else if (c->eof)
                c->closing = true;
            return;
        }
        if (hs == HEAD_BAD || hs == HEAD_TOO_LARGE) {
            respond_bare(c, hs == HEAD_BAD ? 400 : 431);
            return;
        }
        /* a head over the limit that arrived whole in one read is as much too large as one
           still arriving (which the HEAD_MORE branch above refuses) */
        if (!c->head_len && head_len > MAX_HEAD) {
            respond_bare(c, 431);
            return;
        }
        if (!c->head_len) {
            c->head_len = head_len;
            c->continue_sent = false;
            c->body_len = 0;
            c->wire = head_len;
            c->cstate = C_SIZE;
            c->csize = 0;
        }
        if (r.has_length && r.length > BODY_LIMIT) {
            r.overflow = OVERFLOW_KNOWN_LENGTH;
            dispatch(c, &r, handler, c->len, true);
            return;
        }
        size_t consumed;
        if (r.chunked) {
            enum dechunk_status ds = dechunk(c);
            if (ds == D_BAD) {
                respond_bare(c, 400);
                return;
            }
            if (ds == D_OVER) {
                r.overflow = OVERFLOW_STREAM;
                dispatch(c, &r, handler, c->len, true);
                return;
            }
            if (ds == D_MORE) {
                if (c->eof) {
                    c->closing = true;
                } else if (r.expect_continue && r.http11 && !c->continue_sent) {
                    send_all(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                    c->continue_sent = true;
                }
                return;
            }
            r.body = c->buf + c->head_len;
            r.body_len = c->body_len;
            consumed = c->wire;
        } else {
            u64 len = r.has_length ? r.length : 0;
            if (c->len - c->head_len < len) {
                if (c->eof) {
                    c->closing = true;
                } else if (r.expect_continue && r.http11 && !c->continue_sent) {
                    send_all(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                    c->continue_sent = true;
                }
                return;
            }
            r.body = c->buf + c->head_len;
            r.body_len = (size_t)len;
            consumed = c->head_len + (size_t)len;
        }
        dispatch(c, &r, handler, consumed, false);
    }
}

/* ------------------------------------------------------------------ listening ---------- */

bool http_parse_address(const char *s, struct sockaddr_in *sa)
{
    memset(sa, 0, sizeof *sa);
    sa->family = AF_INET;
    const char *colon = NULL;
    for (const char *p = s; *p; p++)
        if (*p == ':')
            colon = p;
    if (!colon)
        return false;
    size_t hn = (size_t)(colon - s);
    u32 addr = 0;
    if (hn == 9 && memcmp(s, "localhost", 9) == 0) {
        addr = 0x7f000001;
    } else {
        const char *p = s;
        for (int part = 0; part < 4; part++) {
            u32 v = 0;
            int digits = 0;
            while (p < colon && *p >= '0' && *p <= '9' && digits < 4) {
                v = v * 10 + (u32)(*p++ - '0');
                digits++;
            }
            if (!digits || v > 255)
                return false;
            addr = addr << 8 | v;
            if (part < 3) {
                if (p >= colon || *p != '.')
                    return false;
                p++;
            }
        }
        if (p != colon)
            return false;
    }
    u32 port = 0;
    const char *p = colon + 1;
    if (!*p)
        return false;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        port = port * 10 + (u32)(*p - '0');
        if (port > 65535)
            return false;
    }
    sa->port = (u16)((port >> 8) | ((port & 0xff) << 8));
    sa->addr = (addr >> 24) | ((addr >> 8) & 0xff00) | ((addr << 8) & 0xff0000) | (addr << 24);
    return true;
}

int http_listen(const struct sockaddr_in *sa, const char **what)
{
    long fd = sys_socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *what = "cannot create the listening socket";
        return (int)fd;
    }
    int one = 1;
    sys_setsockopt((int)fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    long rc = sys_bind((int)fd, sa, sizeof *sa);
    if (rc < 0) {
        *what = "cannot bind the listening socket";
        sys_close((int)fd);
        return (int)rc;
    }
    rc = sys_listen((int)fd, 128);
    if (rc < 0) {
        *what = "cannot listen on the socket";
        sys_close((int)fd);
        return (int)rc;
    }
    return (int)fd;
}

int http_serve(int listen_fd, http_handler handler, bool verbose, const char **what)
{
    verbose_ = verbose;
    static struct pollfd fds[MAX_CONNECTIONS + 1];
    static u8 discard[65536];
    for (;;) {
        int n = 0;
        int listen_slot = -1;
        bool any_draining = false;
        u64 next_deadline = UINT64_MAX;
        listen_slot = n;
        fds[n++] = (struct pollfd){listen_fd, POLLIN, 0};
        int first_conn = n;
        for (int k = 0; k < nconns; k++) {
            fds[n++] = (struct pollfd){conns[k].fd, POLLIN, 0};
            if (conns[k].draining) {
                any_draining = true;
                if (conns[k].drain_deadline < next_deadline)
                    next_deadline = conns[k].drain_deadline;
            }
        }
        if (nconns >= MAX_CONNECTIONS && !any_draining)
            fds[listen_slot].events = 0; /* full: new clients wait in the backlog */
        struct timespec_ timeout, *tp = NULL;
        if (any_draining) {
            u64 now = now_ms();
            u64 wait = next_deadline > now ? next_deadline - now : 0;
            timeout.sec = (long)(wait / 1000);
            timeout.nsec = (long)(wait % 1000) * 1000000;
            tp = &timeout;
        }
        long rc = sys_ppoll(fds, (unsigned long)n, tp);
        if (rc == -EINTR)
            continue;
        if (rc < 0) {
            *what = "waiting for connections (ppoll) failed";
            return (int)rc;
        }
        u64 now = any_draining ? now_ms() : 0;
        /* connections first, in reverse so that closing one (which moves the last into its
         * slot) does not skip another */
        for (int k = nconns - 1; k >= 0; k--) {
            short ev = fds[first_conn + k].revents;
            struct conn *c = &conns[k];
            if (c->draining) {
                bool done = now >= c->drain_deadline;
                if (ev) {
                    long r = sys_read(c->fd, discard, sizeof discard);
                    if (r > 0)
                        c->drained += (size_t)r;
                    if (r == 0 || (r < 0 && r != -EINTR && r != -EAGAIN) || c->drained > DRAIN_BYTES)
                        done = true;
                }
                if (done)
                    conn_close(k);
                continue;
            }
            if (!ev)
                continue;
            if (ev & (POLLIN | POLLHUP | POLLERR)) {
                if (conn_make_room(c)) {
                    long r = sys_read(c->fd, c->buf + c->len, c->cap - c->len);
                    if (r > 0)
                        c->len += (size_t)r;
                    else if (r == 0)
                        c->eof = true;
                    else if (r != -EINTR && r != -EAGAIN)
                        c->closing = c->broken = true;
                } else {
                    c->closing = true;
                }
                if (!c->closing)
                    conn_process(c, handler);
                if (c->eof)
                    c->closing = true; /* nothing more can come; complete requests are answered */
            }
            if (ev & POLLNVAL)
                c->closing = c->broken = true;
            if (c->broken || (c->closing && c->eof))
                conn_close(k);
            else if (c->closing)
                conn_start_drain(c);
        }
        if (fds[listen_slot].revents & POLLIN) {
            if (nconns >= MAX_CONNECTIONS) { /* make room: the oldest draining connection goes */
                for (int k = 0; k < nconns; k++)
                    if (conns[k].draining) {
                        conn_close(k);
                        break;
                    }
            }
            if (nconns >= MAX_CONNECTIONS)
                continue;
            long fd = sys_accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                int one = 1;
                sys_setsockopt((int)fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                u8 *buf = mem_alloc(BUF_START);
                if (!buf) {
                    sys_close((int)fd);
                } else {
                    conns[nconns++] = (struct conn){.fd = (int)fd, .buf = buf, .cap = BUF_START};
                }
            } else if (fd == -EMFILE || fd == -ENFILE || fd == -ENOBUFS || fd == -ENOMEM) {
                /* out of resources: drop the oldest connection to make room */
                if (nconns)
                    conn_close(0);
            } else if (fd != -EINTR && fd != -EAGAIN && fd != -ECONNABORTED && fd != -EPROTO &&
                       fd != -EPERM && fd != -ENETDOWN && fd != -EHOSTUNREACH && fd != -ENETUNREACH &&
                       fd != -ETIMEDOUT) {
                *what = "accepting a connection failed";
                return (int)fd;
            }
        }
    }
}
