/*
 * A small HTTP/1.1 server for one program: one request at a time, several connections open at
 * once (keep-alive clients that hold a connection do not block others), pipelining, request
 * bodies by Content-Length or chunked, Expect: 100-continue. What it refuses, and how, follows
 * the reference server's HTTP stack (actix-web 4 / actix-http 3):
 *
 *   request head over 128 KiB, or over 96 header lines      431, no body, connection closed
 *   malformed request line or header, bad Content-Length,
 *   two Content-Length headers, unknown Transfer-Encoding,
 *   HTTP/1.0 POST without Content-Length, bad chunk framing  400, no body, connection closed
 *   Transfer-Encoding: chunked with Content-Length           chunked wins
 *
 * A body over BODY_LIMIT is not read: the handler is told (request.overflow) and answers, and the
 * connection is closed after the answer.
 */
#ifndef ROLLUPS_HTTP_H
#define ROLLUPS_HTTP_H

#include "sys.h"

enum {
    MAX_HEAD = 131072,
    MAX_HEADER_LINES = 96,
    BODY_LIMIT = 5 << 20, /* the reference's JsonConfig limit: 5 MiB */
    MAX_CONNECTIONS = 64,
};

enum overflow { OVERFLOW_NONE, OVERFLOW_KNOWN_LENGTH, OVERFLOW_STREAM };

struct request {
    bool http11;
    const u8 *method;
    size_t method_len;
    char path[256];     /* percent-decoded as actix matches it, without the query; "" when longer */
    bool keep_alive;
    bool expect_continue;
    bool chunked;
    bool has_length;
    u64 length;         /* the Content-Length header */
    enum overflow overflow;
    const u8 *body;
    size_t body_len;
};

struct response {
    int status;
    const char *content_type; /* NULL: no Content-Type header */
    struct sb body;
};

typedef void (*http_handler)(const struct request *req, struct response *resp);

/* Parse "HOST:PORT" (IPv4 dotted quad or "localhost") into a socket address; false if bad. */
bool http_parse_address(const char *s, struct sockaddr_in *sa);
/* Make the listening socket; -errno on failure with *what naming the call. */
int http_listen(const struct sockaddr_in *sa, const char **what);
/* Serve forever. Returns only on a fatal error: -errno, with *what naming the call. */
int http_serve(int listen_fd, http_handler handler, bool verbose, const char **what);

#endif
