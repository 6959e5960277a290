/* /dev/cmio, as libcmt's io.c drives it (see cmio.h). */
#include "cmio.h"

struct cmio_buffer {
    u64 data;
    u64 length;
};

struct cmio_setup {
    struct cmio_buffer tx, rx;
};

/* _IOR(0xd3, 0, struct cmio_setup) and _IOWR(0xd3, 1, __u64), generic ioctl encoding:
 * direction << 30 | size << 16 | type << 8 | number */
#define IOCTL_CMIO_SETUP ((2ul << 30) | ((unsigned long)sizeof(struct cmio_setup) << 16) | (0xd3ul << 8) | 0)
#define IOCTL_CMIO_YIELD ((3ul << 30) | (8ul << 16) | (0xd3ul << 8) | 1)

_Static_assert(IOCTL_CMIO_SETUP == 0x8020d300ul, "IOCTL_CMIO_SETUP");
_Static_assert(IOCTL_CMIO_YIELD == 0xc008d301ul, "IOCTL_CMIO_YIELD");

enum { HTIF_DEVICE_YIELD = 2 };

int cmio_open(struct cmio *c, const char **what, bool *setup_failed)
{
    *setup_failed = false;
    long fd = sys_openat(AT_FDCWD, "/dev/cmio", O_RDWR | O_CLOEXEC, 0);
    if (fd < 0) {
        *what = "cannot open /dev/cmio";
        return (int)fd;
    }
    *setup_failed = true;
    struct cmio_setup setup;
    memset(&setup, 0, sizeof setup);
    long rc = sys_ioctl((int)fd, IOCTL_CMIO_SETUP, &setup);
    if (rc < 0) {
        *what = "IOCTL_CMIO_SETUP on /dev/cmio failed";
        sys_close((int)fd);
        return (int)rc;
    }
    void *tx = sys_mmap((void *)(uintptr_t)setup.tx.data, setup.tx.length, PROT_READ | PROT_WRITE, MAP_SHARED,
                        (int)fd, 0);
    if (mmap_failed(tx)) {
        *what = "cannot map the cmio tx buffer";
        sys_close((int)fd);
        return mmap_errno(tx);
    }
    void *rx = sys_mmap((void *)(uintptr_t)setup.rx.data, setup.rx.length, PROT_READ, MAP_SHARED, (int)fd, 0);
    if (mmap_failed(rx)) {
        *what = "cannot map the cmio rx buffer";
        sys_munmap(tx, setup.tx.length);
        sys_close((int)fd);
        return mmap_errno(rx);
    }
    c->fd = (int)fd;
    c->tx = tx;
    c->tx_len = setup.tx.length;
    c->rx = rx;
    c->rx_len = setup.rx.length;
    return 0;
}

int cmio_yield(struct cmio *c, int cmd, u16 *reason, u32 *data)
{
    u64 word = (u64)HTIF_DEVICE_YIELD << 56 | (u64)(u8)cmd << 48 | (u64)*reason << 32 | *data;
    long rc = sys_ioctl(c->fd, IOCTL_CMIO_YIELD, &word);
    if (rc < 0)
        return (int)rc;
    *reason = (u16)(word >> 32);
    *data = (u32)word;
    return 0;
}
