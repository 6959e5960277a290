/*
 * The little of a C library that the rollups server needs, written for Linux system calls
 * directly (riscv64 in the machine, x86_64 for the host tests).
 *
 * Why no C library: a static glibc program is at least 420 KB before it does anything, and the
 * runtime layer has a budget of 200 KB for this server. Everything here is plain system calls,
 * a few string and memory functions, and a string builder.
 *
 * Functions return a non-negative value or -errno (the raw system call convention); there is
 * no global errno.
 */
#ifndef ROLLUPS_SYS_H
#define ROLLUPS_SYS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t i64;

/* errno values (the same on every Linux architecture this runs on) */
enum {
    EPERM = 1, ENOENT = 2, EINTR = 4, EIO = 5, ENXIO = 6, EBADF = 9, EAGAIN = 11,
    ENOMEM = 12, EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17, ENODEV = 19,
    EINVAL = 22, ENFILE = 23, EMFILE = 24, ENOTTY = 25, ENOSPC = 28, EPIPE = 32,
    EDOM = 33, ERANGE = 34, EBADMSG = 74, ENOTSOCK = 88, EPROTO = 71,
    EAFNOSUPPORT = 97, EADDRINUSE = 98, EADDRNOTAVAIL = 99, ENETDOWN = 100,
    ENETUNREACH = 101, ECONNABORTED = 103, ECONNRESET = 104, ENOBUFS = 105,
    ETIMEDOUT = 110, EHOSTUNREACH = 113,
};

/* ------------------------------------------------------------------ system calls ---- */

long sys_read(int fd, void *buf, size_t n);
long sys_write(int fd, const void *buf, size_t n);
long sys_close(int fd);
long sys_openat(int dirfd, const char *path, int flags, int mode);
long sys_lseek(int fd, long offset, int whence);
long sys_ioctl(int fd, unsigned long request, void *arg);
void *sys_mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
long sys_munmap(void *addr, size_t length);
void *sys_mremap(void *old, size_t old_size, size_t new_size, int flags);
long sys_madvise(void *addr, size_t length, int advice);
long sys_socket(int domain, int type, int protocol);
long sys_setsockopt(int fd, int level, int name, const void *value, u32 len);
long sys_bind(int fd, const void *addr, u32 len);
long sys_listen(int fd, int backlog);
long sys_accept4(int fd, void *addr, u32 *len, int flags);
long sys_send(int fd, const void *buf, size_t n, int flags);
long sys_ppoll(void *fds, unsigned long nfds, const void *timeout);
long sys_renameat(int olddir, const char *old, int newdir, const char *new_);
long sys_shutdown(int fd, int how);
/* milliseconds of CLOCK_MONOTONIC */
u64 now_ms(void);
void sys_exit(int code) __attribute__((noreturn));

/* Set the disposition of a signal: handler, or NULL to ignore it. The handler runs once (the
 * disposition goes back to the default first). */
long sig_set(int sig, void (*handler)(int));
enum { SIGILL = 4, SIGABRT = 6, SIGBUS = 7, SIGFPE = 8, SIGSEGV = 11, SIGPIPE = 13 };

/* true when a value returned by sys_mmap/sys_mremap is an error */
static inline bool mmap_failed(void *p) { return (unsigned long)p > (unsigned long)-4096; }
static inline int mmap_errno(void *p) { return -(int)(long)p; }

enum {
    O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0100, O_TRUNC = 01000,
    O_CLOEXEC = 02000000,
    AT_FDCWD = -100,
    SEEK_SET = 0, SEEK_END = 2,
    PROT_READ = 1, PROT_WRITE = 2,
    MAP_SHARED = 1, MAP_PRIVATE = 2, MAP_ANONYMOUS = 0x20,
    MREMAP_MAYMOVE = 1,
    MADV_DONTNEED = 4,
    AF_INET = 2, SOCK_STREAM = 1, SOCK_CLOEXEC = 02000000,
    SOL_SOCKET = 1, SO_REUSEADDR = 2,
    IPPROTO_TCP = 6, TCP_NODELAY = 1,
    MSG_NOSIGNAL = 0x4000,
    SHUT_WR = 1,
    POLLIN = 1, POLLOUT = 4, POLLERR = 8, POLLHUP = 16, POLLNVAL = 32,
};

struct pollfd {
    int fd;
    short events;
    short revents;
};

struct timespec_ {
    long sec;
    long nsec;
};

struct sockaddr_in {
    u16 family;
    u16 port;      /* network byte order */
    u32 addr;      /* network byte order */
    u8 zero[8];
};

/* ------------------------------------------------------------------ memory and strings -- */

void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
bool str_eq(const char *a, const char *b);
bool mem_eq_nocase(const void *a, const char *b, size_t n); /* b lowercase, n bytes */

/* Anonymous memory from the kernel, zero-filled, in whole pages; NULL when there is none. */
void *mem_alloc(size_t n);
void mem_free(void *p, size_t n);
/* Grow (or shrink) a mem_alloc block, keeping its contents; NULL when there is no memory. */
void *mem_resize(void *p, size_t old_n, size_t new_n);

/* The text of an errno value, as the C library says it ("No such file or directory"). */
const char *errno_text(int err);

/* ------------------------------------------------------------------ environment -------- */

const char *env_get(const char *name);

/* ------------------------------------------------------------------ string builder ----- */

/* A growable byte string. After a failed allocation it is marked `failed` and stops growing;
 * the caller checks `failed` once at the end. */
struct sb {
    char *p;
    size_t len, cap;
    bool failed;
};

void sb_reset(struct sb *b);                 /* empty it, keep its memory */
void sb_free(struct sb *b);
bool sb_reserve(struct sb *b, size_t extra);
void sb_put(struct sb *b, const void *data, size_t n);
void sb_puts(struct sb *b, const char *s);
void sb_putc(struct sb *b, char c);
void sb_u64(struct sb *b, u64 v);
void sb_i64(struct sb *b, i64 v);
void sb_hex(struct sb *b, const u8 *data, size_t n);   /* lowercase, no prefix */
void sb_hex_u64(struct sb *b, u64 v);                  /* lowercase, no leading zeros */
/* printf-like: %s (C string), %S (struct sb *), %.*s (length, pointer), %d (int), %u (unsigned),
 * %lu (u64), %ld (i64), %zu (size_t), %x (unsigned, hex), %c, %% */
void sb_printf(struct sb *b, const char *fmt, ...);
void sb_vprintf(struct sb *b, const char *fmt, va_list ap);

/* Write all of it (retrying short writes and EINTR); returns 0 or -errno. */
long write_all(int fd, const void *data, size_t n);
/* One line on stderr: printf-like as sb_printf, a newline is added. */
void eprintf(const char *fmt, ...);

#endif
