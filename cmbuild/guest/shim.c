/*
 * cmbuild boot shim: /init of the small initramfs used with Debian's kernel under QEMU.
 *
 * Debian builds virtio_mmio, virtio_blk, squashfs, overlay and ext4 as modules, so the kernel
 * alone cannot mount the runtime layer. This shim (static C, like init.c, for the same reasons:
 * no shell, no libc in the initramfs, every failure a clear message and a distinct code):
 *   1. mounts devtmpfs, proc and sysfs;
 *   2. loads the modules listed, in order, in /lib/modules/load.order (init_module; already
 *      loaded or built in is fine), and removes each file to give its memory back;
 *   3. waits (at most 10 s) for the virtio-blk device whose serial is "root";
 *   4. mounts it (squashfs, read-only) on /newroot, moves /dev there, unmounts proc and sysfs;
 *   5. makes /newroot the root (MS_MOVE + chroot) and execs /sbin/init (cmbuild's init.c).
 *
 * Failure codes (printed as "cmbuild: error: ..." then "cmbuild: exit-code N", then power-off):
 *   120  devtmpfs, proc or sysfs could not be mounted, or load.order is unreadable
 *   121  a module could not be loaded
 *   122  no virtio-blk drive with serial "root" appeared within 10 s
 *   123  the root drive could not be mounted, moved to / or /sbin/init could not be executed
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum { E_SETUP = 120, E_MODULE = 121, E_NOROOT = 122, E_SWITCH = 123 };

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    if (write(STDOUT_FILENO, buf, n) < 0) {
        /* nothing to do */
    }
}

static void __attribute__((noreturn)) fail(int code, const char *what, int err)
{
    if (err)
        say("cmbuild: error: boot shim: %s: %s", what, strerror(err));
    else
        say("cmbuild: error: boot shim: %s", what);
    say("cmbuild: exit-code %d", code);
    tcdrain(STDOUT_FILENO);
    sync();
    reboot(RB_POWER_OFF);
    _exit(code);
}

static void console(void)
{
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return;
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

static int read_all(const char *path, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return -1;
    }
    size_t size = st.st_size, got = 0;
    char *buf = malloc(size + 1);
    if (!buf) {
        close(fd);
        errno = ENOMEM;
        return -1;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;
            free(buf);
            close(fd);
            errno = e;
            return -1;
        }
        got += r;
    }
    close(fd);
    buf[got] = 0;
    *out = buf;
    *len = got;
    return 0;
}

static void load_modules(void)
{
    char *list;
    size_t len;
    if (read_all("/lib/modules/load.order", &list, &len) < 0)
        fail(E_SETUP, "read /lib/modules/load.order", errno);
    char *save = NULL;
    for (char *name = strtok_r(list, "\n", &save); name; name = strtok_r(NULL, "\n", &save)) {
        char path[256], *image;
        size_t size;
        snprintf(path, sizeof path, "/lib/modules/%s", name);
        if (read_all(path, &image, &size) < 0) {
            char what[300];
            snprintf(what, sizeof what, "read %s", path);
            fail(E_MODULE, what, errno);
        }
        if (syscall(SYS_init_module, image, (unsigned long)size, "") < 0 && errno != EEXIST) {
            char what[300];
            snprintf(what, sizeof what, "load module %s", name);
            fail(E_MODULE, what, errno);
        }
        free(image);
        unlink(path);
    }
    free(list);
}

static int find_root(char *dev, size_t devsz)
{
    DIR *d = opendir("/sys/block");
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, "vd", 2) != 0)
            continue;
        char path[300], serial[64];
        snprintf(path, sizeof path, "/sys/block/%s/serial", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, serial, sizeof serial - 1);
        close(fd);
        if (n <= 0)
            continue;
        serial[n] = 0;
        while (n > 0 && (serial[n - 1] == '\n' || serial[n - 1] == ' ' || serial[n - 1] == 0))
            serial[--n] = 0;
        if (strcmp(serial, "root") == 0) {
            snprintf(dev, devsz, "/dev/%.32s", e->d_name);
            found = 0;
            break;
        }
    }
    closedir(d);
    return found;
}

int main(void)
{
    mkdir("/dev", 0755);
    if (mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755") < 0 && errno != EBUSY)
        fail(E_SETUP, "mount devtmpfs on /dev", errno);
    console();
    mkdir("/proc", 0755);
    mkdir("/sys", 0755);
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        fail(E_SETUP, "mount proc", errno);
    if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        fail(E_SETUP, "mount sysfs", errno);

    load_modules();

    char dev[64];
    int found = -1;
    for (int i = 0; i < 200 && (found = find_root(dev, sizeof dev)) < 0; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (found < 0)
        fail(E_NOROOT, "no virtio-blk drive with serial root (the runtime layer)", ENODEV);
    /* devtmpfs creates the node when the disk appears; give it a moment if needed */
    for (int i = 0; i < 100 && access(dev, F_OK) < 0; i++) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }

    mkdir("/newroot", 0755);
    if (mount(dev, "/newroot", "squashfs", MS_RDONLY, NULL) < 0)
        fail(E_SWITCH, "mount the root drive (squashfs) on /newroot", errno);
    if (mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) < 0)
        fail(E_SWITCH, "move /dev to /newroot/dev", errno);
    umount2("/proc", MNT_DETACH);
    umount2("/sys", MNT_DETACH);
    if (chdir("/newroot") < 0)
        fail(E_SWITCH, "chdir /newroot", errno);
    if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
        fail(E_SWITCH, "move /newroot to /", errno);
    if (chroot(".") < 0)
        fail(E_SWITCH, "chroot", errno);
    if (chdir("/") < 0)
        fail(E_SWITCH, "chdir /", errno);
    char *argv[] = {"/sbin/init", NULL};
    execv("/sbin/init", argv);
    fail(E_SWITCH, "exec /sbin/init", errno);
}
