/*
 * A fake /dev/cmio for host tests (built instead of cmio.c; never part of the machine's
 * binary). It is driven through a directory named by CMIO_FAKE_DIR:
 *
 *   every yield writes  yield-NNNNN-<manual|automatic>-<reason>.bin
 *                       (NNNNN counts all yields from 0; the content is the tx buffer's first
 *                       `data` bytes: the output, report, exception payload, gio id, or the
 *                       32-byte outputs root of an rx-accepted)
 *   every manual yield then reads  response-KKKKK.bin
 *                       (KKKKK counts manual yields from 0): a first line with the reply reason
 *                       in decimal (0 advance, 1 inspect, or a gio response code), a newline,
 *                       then the bytes the emulator would put in rx (the data length is their
 *                       count; at most CMIO_FAKE_RX_LENGTH of them are copied). A missing file
 *                       makes the yield fail with ENOENT, as a failed ioctl would.
 *
 * CMIO_FAKE_TX_LENGTH and CMIO_FAKE_RX_LENGTH set the buffer sizes (default 2 MiB each, as
 * the machine's). A CMIO_FAKE_DIR that is not a directory fails like a missing /dev/cmio.
 */
#include "cmio.h"

static const char *dir;
static unsigned yield_seq, manual_seq;

static size_t env_size(const char *name, size_t dflt)
{
    const char *v = env_get(name);
    if (!v || !*v)
        return dflt;
    size_t n = 0;
    for (; *v >= '0' && *v <= '9'; v++)
        n = n * 10 + (size_t)(*v - '0');
    return n;
}

int cmio_open(struct cmio *c, const char **what, bool *setup_failed)
{
    *setup_failed = false;
    dir = env_get("CMIO_FAKE_DIR");
    if (!dir) {
        *what = "cannot open the fake cmio device: CMIO_FAKE_DIR is not set";
        return -ENOENT;
    }
    long fd = sys_openat(AT_FDCWD, dir, O_RDONLY | O_CLOEXEC | 0200000 /* O_DIRECTORY */, 0);
    if (fd < 0) {
        *what = "cannot open the fake cmio device (CMIO_FAKE_DIR)";
        return (int)fd;
    }
    c->fd = (int)fd;
    *setup_failed = true;
    c->tx_len = env_size("CMIO_FAKE_TX_LENGTH", 2u << 20);
    c->rx_len = env_size("CMIO_FAKE_RX_LENGTH", 2u << 20);
    c->tx = mem_alloc(c->tx_len);
    c->rx = mem_alloc(c->rx_len);
    if (!c->tx || !c->rx) {
        *what = "cannot map the fake cmio buffers";
        return -ENOMEM;
    }
    return 0;
}

static void name(struct sb *b, const char *fmt, unsigned n, const char *kind, unsigned reason)
{
    sb_reset(b);
    sb_printf(b, "%s/", dir);
    /* five digits, zero padded */
    char num[6];
    for (int k = 4; k >= 0; k--, n /= 10)
        num[k] = (char)('0' + n % 10);
    num[5] = 0;
    sb_printf(b, fmt, num, kind, reason);
}

static int write_file(const char *path, const char *tmp, const u8 *data, size_t n)
{
    long fd = sys_openat(AT_FDCWD, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return (int)fd;
    long rc = write_all((int)fd, data, n);
    sys_close((int)fd);
    if (rc < 0)
        return (int)rc;
    return (int)sys_renameat(AT_FDCWD, tmp, AT_FDCWD, path);
}

int cmio_yield(struct cmio *c, int cmd, u16 *reason, u32 *data)
{
    struct sb path = {0}, tmp = {0};
    int rc = 0;
    size_t n = *data < c->tx_len ? *data : c->tx_len;
    name(&path, "yield-%s-%s-%u.bin", yield_seq, cmd == YIELD_MANUAL ? "manual" : "automatic", *reason);
    sb_printf(&tmp, "%S.tmp", &path);
    if (path.failed || tmp.failed) {
        rc = -ENOMEM;
        goto out;
    }
    rc = write_file(path.p, tmp.p, c->tx, n);
    if (rc < 0)
        goto out;
    yield_seq++;
    if (cmd != YIELD_MANUAL)
        goto out;
    name(&path, "response-%s.bin", manual_seq++, "", 0);
    long fd = sys_openat(AT_FDCWD, path.p, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
        rc = (int)fd;
        goto out;
    }
    /* the whole file, then split off the first line */
    struct sb content = {0};
    for (;;) {
        if (!sb_reserve(&content, 65536)) {
            rc = -ENOMEM;
            break;
        }
        long r = sys_read((int)fd, content.p + content.len, 65536);
        if (r == -EINTR)
            continue;
        if (r < 0) {
            rc = (int)r;
            break;
        }
        if (r == 0)
            break;
        content.len += (size_t)r;
    }
    sys_close((int)fd);
    if (rc == 0) {
        size_t k = 0;
        u32 value = 0;
        while (k < content.len && content.p[k] >= '0' && content.p[k] <= '9')
            value = value * 10 + (u32)(content.p[k++] - '0');
        if (k == 0 || k >= content.len || content.p[k] != '\n') {
            rc = -EINVAL;
        } else {
            k++;
            size_t len = content.len - k;
            memcpy((u8 *)c->rx, content.p + k, len < c->rx_len ? len : c->rx_len);
            *reason = (u16)value;
            *data = (u32)len;
        }
    }
    sb_free(&content);
out:
    sb_free(&path);
    sb_free(&tmp);
    return rc;
}
