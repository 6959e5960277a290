/*
 * cmbuild init: PID 1 of the runtime layer.
 *
 * It runs inside the machine (Cartesi or QEMU), finds the drives by their labels, prepares an
 * OCI bundle at /run/bundle with a writable root, runs the container with crun, and ends the
 * machine with the container's exit code.
 *
 * Why C and not a shell script:
 *   - PID 1 must reap every orphan and must never die: a shell does not reap reliably and a
 *     script error (set -e, a missing applet) kills init, which panics the kernel, so the machine
 *     would hang or crash instead of reporting a clear error code.
 *   - Ending a Cartesi machine with a non-zero code needs reboot(LINUX_REBOOT_CMD_RESTART2, "<N>"),
 *     a raw system call with an argument that busybox's reboot applet cannot pass.
 *   - Every failure gets its own documented exit code and an errno text (strerror), which is far
 *     easier to keep exact in C than in sh.
 *   - A static binary has no run-time dependencies (no /bin/sh, no libc in the layer), starts in
 *     a few thousand instructions (every cycle costs in the Cartesi emulator) and is reproducible:
 *     riscv64-linux-gnu-gcc -static -Os -s, no build id, no file paths (cmbuild/guest/build.py).
 *
 * Kernel command line (read from /proc/cmdline):
 *   cmbuild.machine=cartesi|qemu   which machine this is (set by each backend); when absent it is
 *                                  guessed (a device-tree alias "root" means cartesi)
 *   cmbuild.debug=1                verbose messages; on a failure, a busybox shell on the console
 *                                  before the machine ends
 *   cmbuild.overlay=0              do not use overlayfs even when the kernel has it (to test, under
 *                                  QEMU, the fallbacks a Cartesi kernel without overlayfs takes)
 *   cmbuild.rollups=1              a rollups app: bring up the loopback interface, start the
 *                                  built-in rollups server (/usr/sbin/rollups, on 127.0.0.1:5004),
 *                                  wait until it accepts connections, then start the container;
 *                                  the server is supervised: if it ends, so does the machine (111)
 *   cmbuild.direct=1 -- CMD ARGS   benchmarks only: prepare the bundle exactly as for crun, then
 *                                  run CMD ARGS chrooted in /run/bundle/rootfs directly, without
 *                                  crun (the kernel passes the words after "--" to init)
 *
 * Drives are found BY LABEL, never by order:
 *   cartesi: /proc/device-tree/aliases/<label> holds "/pmem@<start>"; the block device is the
 *            pmemN found under /sys/devices/platform/<start>.pmem/
 *   qemu:    a virtio-blk device whose /sys/block/vdX/serial is the label
 * File systems are recognised by their superblock magic: squashfs ("hsqs" at 0) is mounted
 * read-only, ext2/3/4 (0xEF53 at 1080) read-write (read-only when the device is read-only).
 *
 * Layout made here:
 *   /run/app                 the app drive: the image's root file system
 *   /run/bundle/config.json  the OCI runtime config, read raw from the config drive (label
 *                            "config": the JSON padded with spaces to whole 4 KiB blocks)
 *   /run/bundle/rootfs       the writable container root, one of (said on the console):
 *                              overlayfs  lower /run/app, upper+work on tmpfs /run/overlay
 *                              ext2       the app drive itself, mounted read-write
 *                              read-only  /run/app with tmpfs on its /tmp and /run
 *   /run/drives/<label>      every other labelled drive (not root, not app)
 *   /run/crun                crun's state directory
 *
 * Services (a drive labelled "services", mounted at /run/drives/services: services.txt lists
 * "<name> <drive label> <ready port> <timeout ms> <stop ms>" a line, in start order, and <name>/
 * config.json is each one's runtime config): before the app, each is started in order with
 *   crun ... run --bundle /run/svc/<name> svc-<name>
 * over a writable root made like the app's from its image's drive (/run/app for label app,
 * else /run/drives/<label>), its output prefixed "[<name>] " on the console; init waits until
 * it accepts connections on 127.0.0.1:<ready port> (when not 0). A service that ends before
 * the app ends the machine (112). When the app ends: SIGTERM to each service's process (the
 * last started first; its pid from crun's pid file), SIGKILL after its stop timeout.
 *
 * With `init --reap CMD ARGS` (a service with init = true) it is instead the container's PID 1:
 * it runs CMD, forwards signals to it, reaps orphans and exits with CMD's code.
 *
 * Then: /usr/bin/crun --cgroup-manager=disabled --root=/run/crun run --bundle /run/bundle cmbuild
 *
 * How the machine ends (the container's exit code N; killed by signal S: N = 128+S):
 *   every machine: the console's last line is "cmbuild: exit-code N"
 *   cartesi:       reboot(LINUX_REBOOT_CMD_RESTART2, "N") (the emulator halts with payload N);
 *                  N = 0 powers off (also a halt with 0)
 *   qemu:          sync, then reboot(RB_POWER_OFF) (QEMU exits)
 *
 * Exit codes of init's own failures (before the container starts), each printed first as
 * "cmbuild: error: <what failed>: <errno text>" (keep in sync with docs/guest.md):
 *   100  internal error (should not happen)
 *   101  a pseudo file system (proc, sysfs, devtmpfs, tmpfs on /run or /tmp) could not be mounted
 *   102  the kernel command line is unreadable or names an unknown machine
 *   103  the app drive (label "app") was not found
 *   104  the app drive could not be mounted (unknown file system or mount error)
 *   105  the config drive (label config) is missing or unreadable
 *   106  the writable container root could not be prepared (overlay, bind, tmpfs mounts)
 *   107  an extra drive could not be mounted at /run/drives/<label>
 *   108  crun could not be started (fork or exec)
 *   109  waiting for crun failed
 *   110  crun could not create the container (its own error is on the console above): the
 *        container's process never ran. Told apart from the container's own exit code by crun's
 *        pid file, which crun writes only once the container is set up.
 *   111  the rollups server (cmbuild.rollups=1) could not be started, did not accept
 *        connections in time, or ended while the container ran
 *   112  a service (the services drive) could not be started, was not ready on its
 *        ready_port within its ready_timeout, or ended before the app did
 * The boot shim (shim.c, QEMU only) uses 120-123. A container may itself exit with any of these
 * numbers; the "cmbuild: error:" line on the console tells them apart.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum {
    E_INTERNAL = 100,
    E_PSEUDOFS = 101,
    E_CMDLINE = 102,
    E_APP_MISSING = 103,
    E_APP_MOUNT = 104,
    E_BUNDLE = 105,
    E_WRITABLE = 106,
    E_DRIVE_MOUNT = 107,
    E_EXEC = 108,
    E_WAIT = 109,
    E_CRUN = 110,
    E_ROLLUPS = 111,
    E_SERVICE = 112,
};

enum machine { M_UNKNOWN, M_CARTESI, M_QEMU };
enum fstype { FS_UNKNOWN, FS_SQUASHFS, FS_EXT };

static enum machine machine = M_UNKNOWN;
static int debug = 0;
static int no_overlay = 0; /* cmbuild.overlay=0: behave as if the kernel had no overlayfs */
static int direct = 0;     /* cmbuild.direct=1: run init's arguments without crun (benchmarks) */
static int rollups = 0;    /* cmbuild.rollups=1: start the built-in rollups server first */
static pid_t rollups_pid = -1;

/* The services ([services.<name>]): read from the services drive, started before the app. */
#define MAX_SERVICES 16
#define SERVICES_DIR "/run/drives/services"
struct service {
    char name[16];
    char label[24];
    int port;         /* ready when it accepts connections on 127.0.0.1:port; 0: when started */
    long timeout_ms;  /* for ready_port */
    long stop_ms;     /* after the app: SIGTERM, then SIGKILL after this long */
    pid_t crun;       /* its crun run, while it runs */
    pid_t prefixer;   /* the child that prefixes its console lines */
};
static struct service services[MAX_SERVICES];
static int n_services = 0;
static enum fstype app_fs = FS_UNKNOWN; /* the app drive's file system (a service may share it) */

static void drain(struct service *sv);
static void crun_kill(const struct service *sv, const char *sig);

#define CRUN "/usr/bin/crun"
#define BUSYBOX "/bin/busybox"
#define CONTAINER_ID "cmbuild"
#define CRUN_PID_FILE "/run/crun.pid"

/* ---------------------------------------------------------------- console and ending ----- */

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = sizeof buf - 2;
    buf[n++] = '\n';
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        p += w;
        n -= w;
    }
}

#define dbg(...) do { if (debug) say(__VA_ARGS__); } while (0)

static void debug_shell(void)
{
    say("cmbuild: debug: starting a shell on the console; exit it to end the machine");
    pid_t pid = fork();
    if (pid == 0) {
        char *argv[] = {"sh", NULL};
        execv(BUSYBOX, (char *[]){BUSYBOX, "sh", NULL});
        execv("/bin/sh", argv);
        _exit(127);
    }
    if (pid > 0) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
    }
}

/* End the machine with exit code `code`. Never returns. */
static void __attribute__((noreturn)) finish(int code)
{
    say("cmbuild: exit-code %d", code);
    tcdrain(STDOUT_FILENO); /* the serial console must show the line before power-off */
    sync();
    if (machine == M_CARTESI && code != 0) {
        char arg[16];
        snprintf(arg, sizeof arg, "%d", code);
        syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                LINUX_REBOOT_CMD_RESTART2, arg);
    }
    reboot(RB_POWER_OFF);
    reboot(RB_HALT_SYSTEM);
    /* Nothing left: exiting PID 1 panics the kernel; with panic=-1 the machine ends. */
    _exit(code);
}

static void __attribute__((noreturn)) fail(int code, const char *what, int err)
{
    if (err)
        say("cmbuild: error: %s: %s", what, strerror(err));
    else
        say("cmbuild: error: %s", what);
    if (debug)
        debug_shell();
    finish(code);
}

static void __attribute__((noreturn, format(printf, 3, 4)))
failf(int code, int err, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    fail(code, what, err);
}

/* ------------------------------------------------------------------------- helpers ------- */

static int read_text(const char *path, char *buf, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    size_t len = 0;
    while (len < size - 1) {
        ssize_t r = read(fd, buf + len, size - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        if (r == 0)
            break;
        len += r;
    }
    close(fd);
    buf[len] = 0;
    return (int)len;
}

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (isspace((unsigned char)s[n - 1]) || s[n - 1] == 0))
        s[--n] = 0;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[512];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, mode) < 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(tmp, mode) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int is_mountpoint(const char *path)
{
    struct stat a, b;
    char parent[512];
    if (stat(path, &a) < 0)
        return 0;
    snprintf(parent, sizeof parent, "%s/..", path);
    if (stat(parent, &b) < 0)
        return 0;
    return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static void mount_pseudo(const char *type, const char *target, unsigned long flags,
                         const char *data)
{
    if (is_mountpoint(target)) {
        dbg("cmbuild: %s already mounted", target);
        return;
    }
    if (mkdir_p(target, 0755) < 0)
        failf(E_PSEUDOFS, errno, "mkdir %s", target);
    if (mount(type, target, type, flags, data) < 0)
        failf(E_PSEUDOFS, errno, "mount %s on %s", type, target);
}

static void setup_console(void)
{
    int fd = open("/dev/console", O_RDWR | O_NOCTTY);
    if (fd < 0)
        return; /* keep whatever the kernel gave us */
    for (int i = 0; i < 3; i++)
        if (fd != i)
            dup2(fd, i);
    if (fd > 2)
        close(fd);
}

/* ------------------------------------------------------------------ command line ------- */

static void read_cmdline(void)
{
    char buf[4096];
    if (read_text("/proc/cmdline", buf, sizeof buf) < 0)
        fail(E_CMDLINE, "read /proc/cmdline", errno);
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t\n", &save); tok; tok = strtok_r(NULL, " \t\n", &save)) {
        if (strncmp(tok, "cmbuild.machine=", 16) == 0) {
            const char *v = tok + 16;
            if (strcmp(v, "cartesi") == 0)
                machine = M_CARTESI;
            else if (strcmp(v, "qemu") == 0)
                machine = M_QEMU;
            else
                failf(E_CMDLINE, 0, "unknown machine in kernel command line: %s", tok);
        } else if (strcmp(tok, "cmbuild.debug=1") == 0) {
            debug = 1;
        } else if (strcmp(tok, "cmbuild.overlay=0") == 0) {
            no_overlay = 1;
        } else if (strcmp(tok, "cmbuild.direct=1") == 0) {
            direct = 1;
        } else if (strcmp(tok, "cmbuild.rollups=1") == 0) {
            rollups = 1;
        }
    }
    if (machine == M_UNKNOWN) {
        machine = access("/proc/device-tree/aliases/root", F_OK) == 0 ? M_CARTESI : M_QEMU;
        say("cmbuild: no cmbuild.machine= on the kernel command line; guessing %s",
            machine == M_CARTESI ? "cartesi" : "qemu");
    }
}

/* -------------------------------------------------------------------- drives ------------ */

/* Find, below dir (depth-limited, not following links), a directory named "block" and return
   the name of its first pmem entry. */
static int find_pmem_block(const char *dir, int depth, char *out, size_t outsz)
{
    if (depth > 8)
        return -1;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while (found < 0 && (e = readdir(d))) {
        if (e->d_type != DT_DIR || e->d_name[0] == '.')
            continue;
        char sub[512];
        if (snprintf(sub, sizeof sub, "%s/%s", dir, e->d_name) >= (int)sizeof sub)
            continue;
        if (strcmp(e->d_name, "block") == 0) {
            DIR *b = opendir(sub);
            struct dirent *be;
            while (b && (be = readdir(b))) {
                if (strncmp(be->d_name, "pmem", 4) == 0) {
                    snprintf(out, outsz, "%s", be->d_name);
                    found = 0;
                    break;
                }
            }
            if (b)
                closedir(b);
        } else {
            found = find_pmem_block(sub, depth + 1, out, outsz);
        }
    }
    closedir(d);
    return found;
}

/* The block device name (pmem0, vdb, ...) of the drive labelled `label`, or -1. */
static int find_drive_cartesi(const char *label, char *out, size_t outsz)
{
    char path[512], node[256];
    snprintf(path, sizeof path, "/proc/device-tree/aliases/%s", label);
    if (read_text(path, node, sizeof node) < 0)
        return -1;
    trim(node);
    const char *at = strchr(node, '@');
    if (strncmp(node, "/pmem@", 6) != 0 || !at || !at[1])
        return -1;
    snprintf(path, sizeof path, "/sys/devices/platform/%s.pmem", at + 1);
    return find_pmem_block(path, 0, out, outsz);
}

/* The label of a QEMU drive: the serial of virtio-blk device `dev` (vdX). -1: not one. */
static int virtio_serial(const char *dev, char *serial, size_t n)
{
    if (strncmp(dev, "vd", 2) != 0)
        return -1;
    char path[512];
    snprintf(path, sizeof path, "/sys/block/%s/serial", dev);
    if (read_text(path, serial, n) < 0)
        return -1;
    trim(serial);
    return 0;
}

static int find_drive_qemu(const char *label, char *out, size_t outsz)
{
    DIR *d = opendir("/sys/block");
    if (!d)
        return -1;
    struct dirent *e;
    int found = -1;
    while ((e = readdir(d))) {
        char serial[64];
        if (virtio_serial(e->d_name, serial, sizeof serial) < 0)
            continue;
        if (strcmp(serial, label) == 0) {
            snprintf(out, outsz, "%s", e->d_name);
            found = 0;
            break;
        }
    }
    closedir(d);
    return found;
}

static int find_drive(const char *label, char *out, size_t outsz)
{
    return machine == M_CARTESI ? find_drive_cartesi(label, out, outsz)
                                : find_drive_qemu(label, out, outsz);
}

static enum fstype probe_fs(const char *dev)
{
    unsigned char sb[1084];
    int fd = open(dev, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return FS_UNKNOWN;
    ssize_t n = pread(fd, sb, sizeof sb, 0);
    close(fd);
    if (n >= 4 && memcmp(sb, "hsqs", 4) == 0)
        return FS_SQUASHFS;
    if (n >= 1082 && sb[1080] == 0x53 && sb[1081] == 0xEF)
        return FS_EXT;
    return FS_UNKNOWN;
}

static const char *fs_name(enum fstype t)
{
    return t == FS_SQUASHFS ? "squashfs" : t == FS_EXT ? "ext2" : "unknown";
}

/* Mount /dev/<name> at target by its superblock. Returns 0, or -1 with errno set (EINVAL when
   the file system is unknown). *type receives the kind, *rw whether it is writable. */
static int mount_drive(const char *name, const char *target, enum fstype *type, int *rw)
{
    char dev[128];
    snprintf(dev, sizeof dev, "/dev/%s", name);
    *type = probe_fs(dev);
    *rw = 0;
    if (mkdir_p(target, 0755) < 0)
        return -1;
    if (*type == FS_SQUASHFS)
        return mount(dev, target, "squashfs", MS_RDONLY, NULL);
    if (*type == FS_EXT) {
        static const char *types[] = {"ext2", "ext4", "ext3"};
        int err = ENODEV;
        for (int ro = 0; ro < 2; ro++) {
            for (unsigned i = 0; i < sizeof types / sizeof *types; i++) {
                if (mount(dev, target, types[i], ro ? MS_RDONLY : 0, NULL) == 0) {
                    *rw = !ro;
                    return 0;
                }
                if (errno != ENODEV && errno != EINVAL)
                    err = errno;
                if (errno == EROFS || errno == EACCES)
                    break; /* a read-only device: try read-only */
            }
        }
        errno = err;
        return -1;
    }
    errno = EINVAL;
    return -1;
}

/* --------------------------------------------------------------------- bundle ----------- */

static int copy_file(const char *src, const char *dst)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        int e = errno;
        close(in);
        errno = e;
        return -1;
    }
    char buf[65536];
    ssize_t r;
    int rc = 0;
    while ((r = read(in, buf, sizeof buf)) != 0) {
        if (r < 0) {
            if (errno == EINTR)
                continue;
            rc = -1;
            break;
        }
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(out, buf + off, r - off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                rc = -1;
                break;
            }
            off += w;
        }
        if (rc < 0)
            break;
    }
    int e = errno;
    close(in);
    if (close(out) < 0 && rc == 0)
        rc = -1, e = errno;
    errno = e;
    return rc;
}

static int overlay_available(void)
{
    char buf[8192];
    if (read_text("/proc/filesystems", buf, sizeof buf) < 0)
        return 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *name = strrchr(line, '\t');
        name = name ? name + 1 : line;
        trim(name);
        if (strcmp(name, "overlay") == 0)
            return 1;
    }
    return 0;
}

/* The config drive is raw: its bytes are config.json (padded with spaces, which JSON allows). */
static void read_config(void)
{
    char name[256], dev[300];
    if (find_drive("config", name, sizeof name) < 0)
        fail(E_BUNDLE, machine == M_CARTESI
                           ? "no drive labelled config (/proc/device-tree/aliases/config)"
                           : "no drive labelled config (virtio-blk serial config)",
             ENODEV);
    snprintf(dev, sizeof dev, "/dev/%s", name);
    if (copy_file(dev, "/run/bundle/config.json") < 0)
        failf(E_BUNDLE, errno, "copy the config drive %s to /run/bundle/config.json", dev);
}

/* Make `root` a writable container root over the read-only tree `lower` (a drive of file
   system `type` mounted at `lower`, writable when `rw`): overlayfs with its upper and work
   directories on a tmpfs at `ovdir`; else the drive itself when it is a writable ext2; else
   `lower` with tmpfs on its /tmp and /run. `who` prefixes the messages ("" for the app);
   `drive` names the drive in them. */
static void writable_root(const char *lower, const char *root, const char *ovdir,
                          enum fstype type, int rw, const char *who, const char *drive)
{
    char path[512], opts[1024];
    if (mkdir_p(root, 0755) < 0)
        failf(E_WRITABLE, errno, "%smkdir %s", who, root);
    const char *why = no_overlay ? "cmbuild.overlay=0" : "no overlayfs in this kernel";
    if (!no_overlay && overlay_available()) {
        if (mkdir_p(ovdir, 0755) < 0)
            failf(E_WRITABLE, errno, "%smkdir %s", who, ovdir);
        if (mount("tmpfs", ovdir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755") < 0)
            failf(E_WRITABLE, errno, "%smount tmpfs on %s", who, ovdir);
        snprintf(path, sizeof path, "%s/upper", ovdir);
        int bad = mkdir_p(path, 0755) < 0;
        snprintf(path, sizeof path, "%s/work", ovdir);
        if (bad || mkdir_p(path, 0755) < 0)
            failf(E_WRITABLE, errno, "%smkdir %s/upper and work", who, ovdir);
        snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s/upper,workdir=%s/work", lower, ovdir,
                 ovdir);
        if (mount("overlay", root, "overlay", 0, opts) < 0)
            failf(E_WRITABLE, errno, "%smount overlay on %s", who, root);
        say("cmbuild: %swritable root: overlayfs (lower %s %s drive, upper on tmpfs)", who,
            fs_name(type), drive);
        return;
    }
    if (mount(lower, root, NULL, MS_BIND | MS_REC, NULL) < 0)
        failf(E_WRITABLE, errno, "%sbind-mount %s on %s", who, lower, root);
    if (type == FS_EXT && rw) {
        say("cmbuild: %swritable root: ext2 %s drive, read-write (%s)", who, drive, why);
        return;
    }
    static const char *dirs[] = {"tmp", "run"};
    for (unsigned i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", root, dirs[i]);
        if (!is_dir(path)) {
            say("cmbuild: %snote: the container root has no /%s: left out", who, dirs[i]);
            continue;
        }
        if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV,
                  i == 0 ? "mode=1777" : "mode=0755") < 0)
            failf(E_WRITABLE, errno, "%smount tmpfs on %s", who, path);
    }
    say("cmbuild: %swritable root: read-only %s %s drive with tmpfs on /tmp and /run (%s)", who,
        fs_name(type), drive, why);
}

static void prepare_bundle(enum fstype app_type, int app_rw)
{
    if (mkdir_p("/run/bundle", 0755) < 0)
        fail(E_WRITABLE, "mkdir /run/bundle", errno);
    read_config();
    writable_root("/run/app", "/run/bundle/rootfs", "/run/overlay", app_type, app_rw, "", "app");
}

/* ------------------------------------------------------------------ extra drives --------- */

static int valid_label(const char *s)
{
    if (!*s || *s == '.' || strlen(s) > 64) /* no "", ".", "..", hidden names */
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '_' && *s != '.')
            return 0;
    return 1;
}

static void mount_extra(const char *label, const char *name)
{
    if (strcmp(label, "root") == 0 || strcmp(label, "app") == 0 || strcmp(label, "config") == 0 ||
        !valid_label(label))
        return;
    char target[256];
    snprintf(target, sizeof target, "/run/drives/%s", label);
    enum fstype t;
    int rw;
    if (mount_drive(name, target, &t, &rw) < 0) {
        if (t == FS_UNKNOWN) {
            say("cmbuild: note: drive %s (%s) has no known file system: not mounted", label, name);
            return;
        }
        failf(E_DRIVE_MOUNT, errno, "mount drive %s (/dev/%s, %s) on %s", label, name,
              fs_name(t), target);
    }
    dbg("cmbuild: drive %s (/dev/%s, %s, %s) on %s", label, name, fs_name(t),
        rw ? "read-write" : "read-only", target);
}

static int is_generic_alias(const char *name)
{
    if (strncmp(name, "flashdrive", 10) != 0 || !name[10])
        return 0;
    for (const char *p = name + 10; *p; p++)
        if (!isdigit((unsigned char)*p))
            return 0;
    return 1;
}

#define MAX_ALIASES 64

/* Cartesi: the emulator names every flash drive twice in /aliases, by its label and as
   "flashdrive<N>". Mount each drive once, by its label, and never root, app or config again.
   The aliases are read once (every read of /proc/device-tree costs cycles). */
static void mount_extra_drives_cartesi(void)
{
    static char names[MAX_ALIASES][64], nodes[MAX_ALIASES][64];
    int n = 0;
    DIR *d = opendir("/proc/device-tree/aliases");
    struct dirent *e;
    while (d && n < MAX_ALIASES && (e = readdir(d))) {
        if (e->d_name[0] == '.' || strcmp(e->d_name, "name") == 0 || strlen(e->d_name) >= 64)
            continue;
        char path[512];
        snprintf(path, sizeof path, "/proc/device-tree/aliases/%s", e->d_name);
        if (read_text(path, nodes[n], sizeof nodes[n]) < 0)
            continue;
        trim(nodes[n]);
        snprintf(names[n], sizeof names[n], "%s", e->d_name);
        n++;
    }
    if (d)
        closedir(d);
    for (int i = 0; i < n; i++) {
        int skip = 0;
        for (int j = 0; j < n && !skip; j++) {
            int own = strcmp(names[j], "root") == 0 || strcmp(names[j], "app") == 0 ||
                      strcmp(names[j], "config") == 0;
            /* root, app, config and their other names; a flashdrive<N> with a label */
            if (strcmp(nodes[i], nodes[j]) == 0 &&
                (own || (is_generic_alias(names[i]) && !is_generic_alias(names[j]))))
                skip = 1;
        }
        char name[256];
        if (!skip && find_drive_cartesi(names[i], name, sizeof name) == 0)
            mount_extra(names[i], name);
    }
}

static void mount_extra_drives(void)
{
    if (machine == M_CARTESI) {
        mount_extra_drives_cartesi();
        return;
    }
    DIR *d = opendir("/sys/block");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char serial[64];
        if (virtio_serial(e->d_name, serial, sizeof serial) == 0)
            mount_extra(serial, e->d_name);
    }
    if (d)
        closedir(d);
}

/* --------------------------------------------------------------------- main ------------- */

/* Wait for `pid` as PID 1 (reaping every orphan on the way); its exit code, 128+S when a
   signal S killed it. */
static int wait_child(pid_t pid, const char *what)
{
    for (;;) {
        int st;
        pid_t r = wait(&st);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            failf(E_WAIT, errno, "wait for %s", what);
        }
        if (r == rollups_pid && r != pid) {
            int c = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            failf(E_ROLLUPS, 0, "the rollups server ended (status %d) while %s ran", c, what);
        }
        for (int i = 0; i < n_services && r != pid; i++)
            if (services[i].crun == r) {
                services[i].crun = -1;
                drain(&services[i]);
                failf(E_SERVICE, 0, "service %s ended (status %d) while %s ran", services[i].name,
                      WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), what);
            }
        if (r != pid)
            continue;
        int code;
        if (WIFEXITED(st))
            code = WEXITSTATUS(st);
        else if (WIFSIGNALED(st))
            code = 128 + WTERMSIG(st);
        else
            continue;
        dbg("cmbuild: %s ended with %d", what, code);
        /* reap what is left, without blocking */
        while (waitpid(-1, &st, WNOHANG) > 0)
            ;
        return code;
    }
}

/* Start argv (chrooted in `root` when given); with out >= 0, its standard output and error
   go to `out` and its standard input is /dev/null. */
static pid_t spawn_io(char *const argv[], char *const envp[], const char *root, int out)
{
    pid_t pid = fork();
    if (pid < 0)
        fail(E_EXEC, "fork", errno);
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setsid();
        if (out >= 0) {
            int null = open("/dev/null", O_RDONLY);
            if (null >= 0 && null != 0)
                dup2(null, 0), close(null);
            dup2(out, 1);
            dup2(out, 2);
            if (out > 2)
                close(out);
        }
        if (root && (chroot(root) < 0 || chdir("/") < 0)) {
            say("cmbuild: error: chroot %s: %s", root, strerror(errno));
            _exit(E_EXEC);
        }
        execve(argv[0], argv, envp);
        say("cmbuild: error: exec %s: %s", argv[0], strerror(errno));
        _exit(E_EXEC);
    }
    return pid;
}

static pid_t spawn(char *const argv[], char *const envp[], const char *root)
{
    return spawn_io(argv, envp, root, -1);
}

static char *default_env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                              "HOME=/", "TERM=linux", NULL};

#define ROLLUPS "/usr/sbin/rollups"
#define ROLLUPS_PORT 5004

/* Bring up the loopback interface: containers share the machine's network namespace, and
   programs expect 127.0.0.1 to work (as in Docker). Without network support in the kernel,
   say so and go on: only a rollups app needs it (its server check then fails clearly). */
static void loopback_up(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
        say("cmbuild: note: no loopback interface (%s)", strerror(errno));
    } else {
        ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
        if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0)
            say("cmbuild: note: the loopback interface could not be brought up (%s)",
                strerror(errno));
    }
    if (fd >= 0)
        close(fd);
}

static int accepts_connections(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Start the built-in rollups server and wait (bounded) until it accepts connections. */
static void start_rollups(void)
{
    char *argv[] = {ROLLUPS, NULL};
    rollups_pid = spawn(argv, default_env, NULL);
    for (int i = 0; i < 1000; i++) {
        if (accepts_connections(ROLLUPS_PORT)) {
            dbg("cmbuild: rollups server ready (pid %d)", (int)rollups_pid);
            return;
        }
        int st;
        pid_t r = waitpid(rollups_pid, &st, WNOHANG);
        if (r == rollups_pid)
            failf(E_ROLLUPS, 0, "the rollups server ended (status %d) before it accepted connections",
                  WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    fail(E_ROLLUPS, "the rollups server did not accept connections on 127.0.0.1:5004 within 10 s", 0);
}

/* ------------------------------------------------------------------------ services ------- */

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* The services drive's services.txt, a line each:
   "<name> <drive label> <ready port> <ready timeout ms> <stop timeout ms>". */
static void read_services(void)
{
    char buf[4096];
    if (!is_dir(SERVICES_DIR))
        return;
    if (read_text(SERVICES_DIR "/services.txt", buf, sizeof buf) < 0)
        fail(E_SERVICE, "read " SERVICES_DIR "/services.txt", errno);
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        struct service *sv = &services[n_services];
        if (n_services == MAX_SERVICES)
            failf(E_SERVICE, 0, "more than %d services", MAX_SERVICES);
        if (sscanf(line, "%15s %23s %d %ld %ld", sv->name, sv->label, &sv->port, &sv->timeout_ms,
                   &sv->stop_ms) != 5 ||
            !valid_label(sv->name) || !valid_label(sv->label))
            failf(E_SERVICE, 0, "services.txt: bad line \"%s\"", line);
        sv->crun = sv->prefixer = -1;
        n_services++;
    }
}

/* A child that copies the pipe `fd` to the console, each line prefixed with "[name] "; its
   pid. It ends when every writer has closed the pipe (it closes `writer`, its own copy of the
   write end, first). */
static pid_t prefix_lines(int fd, int writer, const char *name)
{
    pid_t pid = fork();
    if (pid < 0)
        fail(E_SERVICE, "fork", errno);
    if (pid != 0)
        return pid;
    close(writer);
    char in[4096], out[4096 + 64];
    size_t len = 0;
    int start = 1;
    for (;;) {
        ssize_t r = read(fd, in, sizeof in);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        for (ssize_t i = 0; i < r; i++) {
            if (start) {
                len += snprintf(out + len, sizeof out - len, "[%s] ", name);
                start = 0;
            }
            out[len++] = in[i];
            if (in[i] == '\n')
                start = 1;
            if (in[i] == '\n' || len > sizeof in) {
                for (size_t off = 0; off < len;) {
                    ssize_t w = write(STDOUT_FILENO, out + off, len - off);
                    if (w < 0 && errno == EINTR)
                        continue;
                    if (w <= 0)
                        break;
                    off += w;
                }
                len = 0;
            }
        }
    }
    if (len) {
        out[len++] = '\n';
        if (write(STDOUT_FILENO, out, len) < 0)
            _exit(1);
    }
    _exit(0);
}

static void start_service(struct service *sv)
{
    char dir[128], path[256], src[256], lower[128], who[64];
    snprintf(who, sizeof who, "service %s: ", sv->name);
    snprintf(dir, sizeof dir, "/run/svc/%s", sv->name);
    if (mkdir_p(dir, 0755) < 0)
        failf(E_SERVICE, errno, "%smkdir %s", who, dir);
    snprintf(src, sizeof src, SERVICES_DIR "/%s/config.json", sv->name);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (copy_file(src, path) < 0)
        failf(E_SERVICE, errno, "%scopy %s to %s", who, src, path);
    enum fstype type = FS_SQUASHFS;
    if (strcmp(sv->label, "app") == 0) {
        snprintf(lower, sizeof lower, "/run/app"); /* the app's image: never written through */
        type = app_fs;
    } else {
        snprintf(lower, sizeof lower, "/run/drives/%s", sv->label);
        if (!is_dir(lower))
            failf(E_SERVICE, ENODEV, "%sits image's drive %s is not mounted", who, sv->label);
    }
    snprintf(path, sizeof path, "%s/rootfs", dir);
    char ov[160];
    snprintf(ov, sizeof ov, "%s/overlay", dir);
    writable_root(lower, path, ov, type, 0, who, sv->label);

    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        failf(E_SERVICE, errno, "%spipe", who);
    sv->prefixer = prefix_lines(fds[0], fds[1], sv->name);
    close(fds[0]);
    char id[32], pidfile[160];
    snprintf(id, sizeof id, "svc-%s", sv->name);
    snprintf(pidfile, sizeof pidfile, "--pid-file=%s/pid", dir);
    char *argv[] = {CRUN, "--cgroup-manager=disabled", "--root=/run/crun", "run", pidfile,
                    "--bundle", dir, id, NULL};
    sv->crun = spawn_io(argv, default_env, NULL, fds[1]);
    close(fds[1]);
    if (sv->port <= 0) {
        say("cmbuild: service %s started", sv->name);
        return;
    }
    long t0 = now_ms();
    for (;;) {
        if (accepts_connections(sv->port)) {
            say("cmbuild: service %s ready on 127.0.0.1:%d", sv->name, sv->port);
            return;
        }
        int st;
        if (waitpid(sv->crun, &st, WNOHANG) == sv->crun) {
            sv->crun = -1;
            drain(sv);
            failf(E_SERVICE, 0, "service %s ended (status %d) before it was ready on 127.0.0.1:%d",
                  sv->name, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st), sv->port);
        }
        if (now_ms() - t0 > sv->timeout_ms)
            failf(E_SERVICE, 0, "service %s was not ready on 127.0.0.1:%d within %ld.%03ld s "
                                "(its ready_timeout)", sv->name, sv->port, sv->timeout_ms / 1000,
                  sv->timeout_ms % 1000);
        sleep_ms(10);
    }
}

static void start_services(void)
{
    read_services();
    if (n_services && mkdir_p("/run/crun", 0700) < 0)
        fail(E_SERVICE, "mkdir /run/crun", errno);
    for (int i = 0; i < n_services; i++)
        start_service(&services[i]);
}

/* Let the service's last console lines out (its prefixer ends once nothing holds the pipe). */
static void drain(struct service *sv)
{
    long t0 = now_ms();
    int st;
    while (sv->prefixer > 0 && waitpid(sv->prefixer, &st, WNOHANG) == 0 && now_ms() - t0 < 1000)
        sleep_ms(10);
    sv->prefixer = -1;
}

/* Signal the service's container process (its pid, in init's namespace, from crun's pid
   file); crun kill only when the pid file cannot be read. */
static void signal_service(const struct service *sv, int sig)
{
    char path[160], buf[32];
    snprintf(path, sizeof path, "/run/svc/%s/pid", sv->name);
    if (read_text(path, buf, sizeof buf) > 0) {
        long pid = strtol(buf, NULL, 10);
        if (pid > 1 && kill((pid_t)pid, sig) == 0)
            return;
        if (pid > 1 && errno == ESRCH)
            return; /* already gone */
    }
    crun_kill(sv, sig == SIGKILL ? "KILL" : "TERM");
}

static void crun_kill(const struct service *sv, const char *sig)
{
    char id[32];
    snprintf(id, sizeof id, "svc-%s", sv->name);
    char *argv[] = {CRUN, "--cgroup-manager=disabled", "--root=/run/crun", "kill", id,
                    (char *)sig, NULL};
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    pid_t pid = spawn_io(argv, default_env, NULL, null); /* quiet: it may have ended already */
    if (null >= 0)
        close(null);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
}

/* After the app: SIGTERM to every service still running (the last started first), SIGKILL
   to what is left after its stop timeout. */
static void stop_services(void)
{
    for (int i = n_services - 1; i >= 0; i--) {
        struct service *sv = &services[i];
        if (sv->crun <= 0)
            continue;
        signal_service(sv, SIGTERM);
        long t0 = now_ms();
        int st;
        pid_t r;
        while ((r = waitpid(sv->crun, &st, WNOHANG)) == 0 && now_ms() - t0 < sv->stop_ms)
            sleep_ms(10);
        if (r == 0) {
            say("cmbuild: service %s did not end within %ld.%03ld s of SIGTERM: SIGKILL",
                sv->name, sv->stop_ms / 1000, sv->stop_ms % 1000);
            signal_service(sv, SIGKILL);
            while (waitpid(sv->crun, &st, 0) < 0 && errno == EINTR)
                ;
        }
        sv->crun = -1;
        drain(sv);
        dbg("cmbuild: service %s stopped", sv->name);
    }
}

static int run_container(void)
{
    char *argv[] = {CRUN, "--cgroup-manager=disabled", "--root=/run/crun", "run",
                    "--pid-file=" CRUN_PID_FILE, "--bundle", "/run/bundle", CONTAINER_ID, NULL};
    if (mkdir_p("/run/crun", 0700) < 0)
        fail(E_EXEC, "mkdir /run/crun", errno);
    dbg("cmbuild: starting " CRUN);
    int code = wait_child(spawn(argv, default_env, NULL), "crun");
    /* crun writes its pid file once the container is set up, just before the container's
       process runs: without it, a failure is crun's own, not the container's exit code. */
    if (code != 0 && access(CRUN_PID_FILE, F_OK) < 0)
        failf(E_CRUN, 0, "crun could not create the container (crun exited with %d; its message "
                         "is above)", code);
    return code;
}

/* cmbuild.direct=1: the same bundle, the command run chrooted in it without crun. */
static int run_direct(int argc, char **argv)
{
    if (argc < 2)
        fail(E_EXEC, "cmbuild.direct=1 needs a command after \"--\" on the kernel command line", 0);
    say("cmbuild: direct run of %s without crun", argv[1]);
    return wait_child(spawn(argv + 1, default_env, "/run/bundle/rootfs"), argv[1]);
}

/* ------------------------------------------------------- inside a service: --reap ------- */

static volatile pid_t reaped_child = -1;

static void forward_signal(int sig)
{
    if (reaped_child > 0)
        kill(reaped_child, sig);
}

/* `init --reap CMD ARGS`: PID 1 of a service's container ([services.<name>] init = true, bind-
   mounted at /dev/.cmbuild-init): runs CMD as its child, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT,
   SIGUSR1 and SIGUSR2 to it (a PID 1 without handlers ignores them), reaps every orphan, and
   exits with CMD's exit code (128+S when a signal S ended it), like `docker run --init`. */
static int reap_main(char **argv)
{
    static const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (unsigned i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaction(sigs[i], &sa, NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "cmbuild init --reap: fork: %s\n", strerror(errno));
        return 127;
    }
    if (pid == 0) {
        for (unsigned i = 0; i < sizeof sigs / sizeof *sigs; i++)
            signal(sigs[i], SIG_DFL);
        execvp(argv[0], argv);
        fprintf(stderr, "cmbuild init --reap: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    reaped_child = pid;
    for (;;) {
        int st;
        pid_t r = wait(&st);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return 127;
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--reap") == 0)
        return reap_main(argv + 2);
    if (getpid() != 1) {
        fprintf(stderr, "cmbuild init: must run as PID 1\n");
        return 1;
    }
    umask(022);
    /* /dev first: on a squashfs root the kernel found no /dev/console for fds 0-2. */
    mount_pseudo("devtmpfs", "/dev", MS_NOSUID | MS_NOEXEC, "mode=0755");
    setup_console();
    mount_pseudo("proc", "/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    read_cmdline();
    mount_pseudo("sysfs", "/sys", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_pseudo("tmpfs", "/run", MS_NOSUID | MS_NODEV, "mode=0755");
    mount_pseudo("tmpfs", "/tmp", MS_NOSUID | MS_NODEV, "mode=1777");
    if (!is_mountpoint("/sys/fs/cgroup")) {
        if (mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  NULL) < 0) {
            dbg("cmbuild: cgroup2 unavailable (%s): tmpfs on /sys/fs/cgroup", strerror(errno));
            if (mount("tmpfs", "/sys/fs/cgroup", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                      "mode=0755") < 0)
                fail(E_PSEUDOFS, "mount cgroup2 or tmpfs on /sys/fs/cgroup", errno);
        }
    }
    dbg("cmbuild: init on %s", machine == M_CARTESI ? "cartesi" : "qemu");

    char app[256];
    int found = -1;
    /* devices normally exist already; allow them a short, bounded time to appear */
    for (int i = 0; i < 20 && (found = find_drive("app", app, sizeof app)) < 0; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (found < 0)
        fail(E_APP_MISSING, machine == M_CARTESI
                                ? "no drive labelled app (/proc/device-tree/aliases/app)"
                                : "no drive labelled app (virtio-blk serial app)",
             ENODEV);
    enum fstype app_type;
    int app_rw;
    if (mount_drive(app, "/run/app", &app_type, &app_rw) < 0) {
        if (app_type == FS_UNKNOWN)
            failf(E_APP_MOUNT, 0, "app drive /dev/%s: no squashfs or ext2 superblock", app);
        failf(E_APP_MOUNT, errno, "mount app drive /dev/%s (%s) on /run/app", app,
              fs_name(app_type));
    }
    dbg("cmbuild: app drive /dev/%s (%s, %s) on /run/app", app, fs_name(app_type),
        app_rw ? "read-write" : "read-only");
    app_fs = app_type;
    prepare_bundle(app_type, app_rw);
    mount_extra_drives();
    loopback_up();
    if (rollups)
        start_rollups();
    start_services();
    int code = direct ? run_direct(argc, argv) : run_container();
    stop_services();
    finish(code);
}
