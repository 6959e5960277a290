/*
 * Program entry, Linux system calls, memory and strings (see sys.h for why there is no C
 * library). Two architectures: riscv64 (the machine) and x86_64 (host tests).
 */
#include "sys.h"

#include <asm/unistd.h>

/* ------------------------------------------------------------------ entry -------------- */

int main(int argc, char **argv);

static char **environ_;

__attribute__((used)) void start_c(long *sp)
{
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    environ_ = argv + argc + 1;
    sys_exit(main(argc, argv));
}

#if defined(__riscv) && __riscv_xlen == 64
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        ".option push\n"
        ".option norelax\n"
        "  lla gp, __global_pointer$\n"
        ".option pop\n"
        "  mv a0, sp\n"
        "  andi sp, sp, -16\n"
        "  call start_c\n"
        "1: j 1b\n");

static long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    register long a7 __asm__("a7") = n;
    register long a0 __asm__("a0") = a;
    register long a1 __asm__("a1") = b;
    register long a2 __asm__("a2") = c;
    register long a3 __asm__("a3") = d;
    register long a4 __asm__("a4") = e;
    register long a5 __asm__("a5") = f;
    __asm__ volatile("ecall"
                     : "+r"(a0)
                     : "r"(a7), "r"(a1), "r"(a2), "r"(a3), "r"(a4), "r"(a5)
                     : "memory");
    return a0;
}
#elif defined(__x86_64__)
__asm__(".text\n"
        ".global _start\n"
        "_start:\n"
        "  xor %rbp, %rbp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call start_c\n"
        "  hlt\n");

static long syscall6(long n, long a, long b, long c, long d, long e, long f)
{
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#else
#error "rollups: only riscv64 and x86_64 are supported"
#endif

#define SC(n, a, b, c, d, e, f) syscall6((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

long sys_read(int fd, void *buf, size_t n) { return SC(__NR_read, fd, buf, n, 0, 0, 0); }
long sys_write(int fd, const void *buf, size_t n) { return SC(__NR_write, fd, buf, n, 0, 0, 0); }
long sys_close(int fd) { return SC(__NR_close, fd, 0, 0, 0, 0, 0); }
long sys_openat(int dirfd, const char *path, int flags, int mode)
{
    return SC(__NR_openat, dirfd, path, flags, mode, 0, 0);
}
long sys_lseek(int fd, long offset, int whence) { return SC(__NR_lseek, fd, offset, whence, 0, 0, 0); }
long sys_ioctl(int fd, unsigned long request, void *arg) { return SC(__NR_ioctl, fd, request, arg, 0, 0, 0); }
void *sys_mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
{
    return (void *)SC(__NR_mmap, addr, length, prot, flags, fd, offset);
}
long sys_munmap(void *addr, size_t length) { return SC(__NR_munmap, addr, length, 0, 0, 0, 0); }
void *sys_mremap(void *old, size_t old_size, size_t new_size, int flags)
{
    return (void *)SC(__NR_mremap, old, old_size, new_size, flags, 0, 0);
}
long sys_madvise(void *addr, size_t length, int advice) { return SC(__NR_madvise, addr, length, advice, 0, 0, 0); }
long sys_socket(int domain, int type, int protocol) { return SC(__NR_socket, domain, type, protocol, 0, 0, 0); }
long sys_setsockopt(int fd, int level, int name, const void *value, u32 len)
{
    return SC(__NR_setsockopt, fd, level, name, value, len, 0);
}
long sys_bind(int fd, const void *addr, u32 len) { return SC(__NR_bind, fd, addr, len, 0, 0, 0); }
long sys_listen(int fd, int backlog) { return SC(__NR_listen, fd, backlog, 0, 0, 0, 0); }
long sys_accept4(int fd, void *addr, u32 *len, int flags) { return SC(__NR_accept4, fd, addr, len, flags, 0, 0); }
long sys_send(int fd, const void *buf, size_t n, int flags) { return SC(__NR_sendto, fd, buf, n, flags, 0, 0); }
long sys_ppoll(void *fds, unsigned long nfds, const void *timeout)
{
    return SC(__NR_ppoll, fds, nfds, timeout, 0, 8, 0);
}
long sys_shutdown(int fd, int how) { return SC(__NR_shutdown, fd, how, 0, 0, 0, 0); }

u64 now_ms(void)
{
    struct timespec_ t = {0, 0};
    SC(__NR_clock_gettime, 1 /* CLOCK_MONOTONIC */, &t, 0, 0, 0, 0);
    return (u64)t.sec * 1000 + (u64)t.nsec / 1000000;
}

long sys_renameat(int olddir, const char *old, int newdir, const char *new_)
{
#ifdef __NR_renameat
    return SC(__NR_renameat, olddir, old, newdir, new_, 0, 0);
#else
    return SC(__NR_renameat2, olddir, old, newdir, new_, 0, 0);
#endif
}
#define SA_RESETHAND_ 0x80000000ul
#define SA_RESTORER_ 0x04000000ul

#if defined(__x86_64__)
/* x86_64 signal frames return through a restorer that calls rt_sigreturn */
__asm__(".text\n"
        "sig_restorer:\n"
        "  mov $15, %rax\n"
        "  syscall\n");
void sig_restorer(void);

struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    u64 mask;
};
#else
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    u64 mask;
};
#endif

long sig_set(int sig, void (*handler)(int))
{
    struct kernel_sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.handler = handler ? handler : (void (*)(int))1; /* SIG_IGN */
    sa.flags = handler ? SA_RESETHAND_ : 0;
#if defined(__x86_64__)
    sa.flags |= SA_RESTORER_;
    sa.restorer = sig_restorer;
#endif
    return SC(__NR_rt_sigaction, sig, &sa, 0, 8, 0, 0);
}

void sys_exit(int code)
{
    for (;;)
        SC(__NR_exit_group, code, 0, 0, 0, 0, 0);
}

/* ------------------------------------------------------------------ memory and strings -- */

/* The compiler may turn these loops back into calls to themselves; -fno-tree-loop-distribute-
 * patterns (build flags) prevents that. */
void *memcpy(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    while (n && ((uintptr_t)d & 7)) {
        *d++ = *s++;
        n--;
    }
    if (((uintptr_t)s & 7) == 0) {
        for (; n >= 8; n -= 8, d += 8, s += 8)
            *(u64 *)(void *)d = *(const u64 *)(const void *)s;
    }
    while (n--)
        *d++ = *s++;
    return dst;
}

void *memmove(void *dst, const void *src, size_t n)
{
    u8 *d = dst;
    const u8 *s = src;
    if (d == s || n == 0)
        return dst;
    if (d < s || d >= s + n)
        return memcpy(dst, src, n);
    while (n--)
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    u8 *d = dst;
    while (n && ((uintptr_t)d & 7)) {
        *d++ = (u8)c;
        n--;
    }
    u64 w = (u8)c * 0x0101010101010101ull;
    for (; n >= 8; n -= 8, d += 8)
        *(u64 *)(void *)d = w;
    while (n--)
        *d++ = (u8)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

bool str_eq(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

bool mem_eq_nocase(const void *a, const char *b, size_t n)
{
    const u8 *x = a;
    for (size_t i = 0; i < n; i++) {
        u8 c = x[i];
        if (c >= 'A' && c <= 'Z')
            c = (u8)(c + 32);
        if (c != (u8)b[i])
            return false;
    }
    return true;
}

static size_t page_round(size_t n) { return (n + 4095) & ~(size_t)4095; }

void *mem_alloc(size_t n)
{
    if (n == 0)
        n = 1;
    void *p = sys_mmap(NULL, page_round(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return mmap_failed(p) ? NULL : p;
}

void mem_free(void *p, size_t n)
{
    if (p)
        sys_munmap(p, page_round(n ? n : 1));
}

void *mem_resize(void *p, size_t old_n, size_t new_n)
{
    if (!p)
        return mem_alloc(new_n);
    if (page_round(old_n ? old_n : 1) == page_round(new_n ? new_n : 1))
        return p;
    void *q = sys_mremap(p, page_round(old_n ? old_n : 1), page_round(new_n ? new_n : 1), MREMAP_MAYMOVE);
    return mmap_failed(q) ? NULL : q;
}

const char *errno_text(int err)
{
    switch (err) {
    case EPERM: return "Operation not permitted";
    case ENOENT: return "No such file or directory";
    case EINTR: return "Interrupted system call";
    case EIO: return "Input/output error";
    case ENXIO: return "No such device or address";
    case EBADF: return "Bad file descriptor";
    case EAGAIN: return "Resource temporarily unavailable";
    case ENOMEM: return "Cannot allocate memory";
    case EACCES: return "Permission denied";
    case EFAULT: return "Bad address";
    case EBUSY: return "Device or resource busy";
    case EEXIST: return "File exists";
    case ENODEV: return "No such device";
    case EINVAL: return "Invalid argument";
    case ENFILE: return "Too many open files in system";
    case EMFILE: return "Too many open files";
    case ENOTTY: return "Inappropriate ioctl for device";
    case ENOSPC: return "No space left on device";
    case EPIPE: return "Broken pipe";
    case EDOM: return "Numerical argument out of domain";
    case ERANGE: return "Numerical result out of range";
    case EPROTO: return "Protocol error";
    case EBADMSG: return "Bad message";
    case ENOTSOCK: return "Socket operation on non-socket";
    case EAFNOSUPPORT: return "Address family not supported by protocol";
    case EADDRINUSE: return "Address already in use";
    case EADDRNOTAVAIL: return "Cannot assign requested address";
    case ENETDOWN: return "Network is down";
    case ENETUNREACH: return "Network is unreachable";
    case ECONNABORTED: return "Software caused connection abort";
    case ECONNRESET: return "Connection reset by peer";
    case ENOBUFS: return "No buffer space available";
    case ETIMEDOUT: return "Connection timed out";
    case EHOSTUNREACH: return "No route to host";
    default: return "Unknown error";
    }
}

/* ------------------------------------------------------------------ environment -------- */

const char *env_get(const char *name)
{
    size_t n = strlen(name);
    for (char **e = environ_; e && *e; e++)
        if (memcmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

/* ------------------------------------------------------------------ string builder ----- */

void sb_reset(struct sb *b)
{
    b->len = 0;
    b->failed = false;
}

void sb_free(struct sb *b)
{
    mem_free(b->p, b->cap);
    b->p = NULL;
    b->len = b->cap = 0;
    b->failed = false;
}

bool sb_reserve(struct sb *b, size_t extra)
{
    if (b->failed)
        return false;
    if (b->len + extra + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = mem_resize(b->p, b->cap, cap);
    if (!p) {
        b->failed = true;
        return false;
    }
    b->p = p;
    b->cap = (cap + 4095) & ~(size_t)4095;
    return true;
}

void sb_put(struct sb *b, const void *data, size_t n)
{
    if (!sb_reserve(b, n))
        return;
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
}

void sb_puts(struct sb *b, const char *s) { sb_put(b, s, strlen(s)); }
void sb_putc(struct sb *b, char c) { sb_put(b, &c, 1); }

void sb_u64(struct sb *b, u64 v)
{
    char t[24];
    int i = 24;
    do {
        t[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    sb_put(b, t + i, (size_t)(24 - i));
}

void sb_i64(struct sb *b, i64 v)
{
    if (v < 0) {
        sb_putc(b, '-');
        sb_u64(b, (u64)0 - (u64)v);
    } else {
        sb_u64(b, (u64)v);
    }
}

static const char hexdigits[] = "0123456789abcdef";

void sb_hex(struct sb *b, const u8 *data, size_t n)
{
    if (!sb_reserve(b, 2 * n))
        return;
    char *o = b->p + b->len;
    for (size_t i = 0; i < n; i++) {
        o[2 * i] = hexdigits[data[i] >> 4];
        o[2 * i + 1] = hexdigits[data[i] & 15];
    }
    b->len += 2 * n;
    b->p[b->len] = 0;
}

void sb_hex_u64(struct sb *b, u64 v)
{
    char t[16];
    int i = 16;
    do {
        t[--i] = hexdigits[v & 15];
        v >>= 4;
    } while (v);
    sb_put(b, t + i, (size_t)(16 - i));
}

void sb_vprintf(struct sb *b, const char *fmt, va_list ap)
{
    for (const char *f = fmt; *f; f++) {
        if (*f != '%') {
            const char *s = f;
            while (f[1] && f[1] != '%')
                f++;
            sb_put(b, s, (size_t)(f - s + 1));
            continue;
        }
        f++;
        switch (*f) {
        case 's': sb_puts(b, va_arg(ap, const char *)); break;
        case 'S': {
            struct sb *o = va_arg(ap, struct sb *);
            sb_put(b, o->p, o->len);
            break;
        }
        case '.': /* %.*s */
            if (f[1] == '*' && f[2] == 's') {
                int n = va_arg(ap, int);
                const char *s = va_arg(ap, const char *);
                sb_put(b, s, (size_t)n);
                f += 2;
            }
            break;
        case 'd': sb_i64(b, va_arg(ap, int)); break;
        case 'u': sb_u64(b, va_arg(ap, unsigned)); break;
        case 'x': sb_hex_u64(b, va_arg(ap, unsigned)); break;
        case 'c': sb_putc(b, (char)va_arg(ap, int)); break;
        case 'z': /* %zu */
            if (f[1] == 'u') {
                sb_u64(b, va_arg(ap, size_t));
                f++;
            }
            break;
        case 'l':
            if (f[1] == 'u') {
                sb_u64(b, va_arg(ap, u64));
                f++;
            } else if (f[1] == 'd') {
                sb_i64(b, va_arg(ap, i64));
                f++;
            }
            break;
        case '%': sb_putc(b, '%'); break;
        default: /* unknown conversion: print it as it is */
            sb_putc(b, '%');
            if (*f)
                sb_putc(b, *f);
            else
                f--;
        }
    }
}

void sb_printf(struct sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(b, fmt, ap);
    va_end(ap);
}

long write_all(int fd, const void *data, size_t n)
{
    const u8 *p = data;
    while (n) {
        long w = sys_write(fd, p, n);
        if (w == -EINTR)
            continue;
        if (w < 0)
            return w;
        if (w == 0)
            return -EIO;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

void eprintf(const char *fmt, ...)
{
    struct sb b = {0};
    va_list ap;
    va_start(ap, fmt);
    sb_vprintf(&b, fmt, ap);
    va_end(ap);
    sb_putc(&b, '\n');
    if (b.failed) {
        static const char msg[] = "rollups: out of memory while printing a message\n";
        write_all(2, msg, sizeof msg - 1);
    } else {
        write_all(2, b.p, b.len);
    }
    sb_free(&b);
}
