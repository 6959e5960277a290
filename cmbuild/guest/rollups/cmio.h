/*
 * The machine's cmio device, /dev/cmio (Cartesi's Linux driver, include/uapi/linux/cartesi/
 * cmio.h), used exactly as libcmt uses it:
 *
 *   open("/dev/cmio", O_RDWR)         one opener at a time: a second open fails with EBUSY
 *   ioctl(IOCTL_CMIO_SETUP, &setup)   the tx and rx buffers: physical address and length
 *                                     (0x60800000 and 0x60000000, 2 MiB each on 0.21)
 *   mmap(address, length, ..., MAP_SHARED, fd, 0)
 *                                     each buffer at its own address (the driver refuses any
 *                                     other): tx read-write, rx read-only
 *   ioctl(IOCTL_CMIO_YIELD, &word)    the packed yield word, replaced by the emulator's reply:
 *                                     bits 56-63 device (2, yield), 48-55 command (0 automatic,
 *                                     1 manual), 32-47 reason, 0-31 data (a length)
 *
 * The host tests build cmio-fake.c instead of cmio.c: the same interface over files.
 */
#ifndef ROLLUPS_CMIO_H
#define ROLLUPS_CMIO_H

#include "sys.h"

enum {
    YIELD_AUTOMATIC = 0,
    YIELD_MANUAL = 1,
    /* automatic reasons */
    REASON_PROGRESS = 1,
    REASON_TX_OUTPUT = 2,
    REASON_TX_REPORT = 4,
    /* manual reasons */
    REASON_RX_ACCEPTED = 1,
    REASON_RX_REJECTED = 2,
    REASON_TX_EXCEPTION = 4,
    /* reply reasons to rx-accepted / rx-rejected */
    REQUEST_ADVANCE = 0,
    REQUEST_INSPECT = 1,
};

struct cmio {
    int fd;
    u8 *tx;
    size_t tx_len;
    const u8 *rx;
    size_t rx_len;
};

/* Open and map the device. On failure return -errno and set *what to the step that failed
 * (e.g. "cannot open /dev/cmio"); *setup_failed tells an open failure from a later one. */
int cmio_open(struct cmio *c, const char **what, bool *setup_failed);

/* Yield with the tx buffer holding `*data` bytes. For manual yields the emulator's reply
 * replaces *reason and *data (the request type or response code, and the length of what it
 * put in rx). Returns 0 or -errno. */
int cmio_yield(struct cmio *c, int cmd, u16 *reason, u32 *data);

#endif
