/*
 * libsystemd.so.0 for the runtime layer: a stub with exactly the symbols Debian's crun imports.
 *
 * Debian links crun against libsystemd for three features the runtime layer never uses:
 *   - the systemd cgroup manager (--cgroup-manager=systemd): sd_bus_*
 *   - the journald log driver (--log=journald:...): sd_journal_send_with_location
 *   - forwarding READY=1 to $NOTIFY_SOCKET: sd_notify, sd_notify_barrier
 * cmbuild's init runs `crun --cgroup-manager=disabled` with neither. Should one of them be
 * asked for anyway, every function answers like libsystemd does when there is no systemd:
 * no bus (-ENOSYS, so crun reports "cannot open sd-bus: Function not implemented"), and
 * "nothing was sent" (0) for notifications. Nothing aborts, nothing allocates.
 *
 * Freestanding: no libc, no DT_NEEDED, so the layer also drops libm (which only libsystemd
 * needs). Symbol versions (LIBSYSTEMD_209/221/237/246) come from libsystemd.map.
 * See docs/runtime-layer.md.
 */

#define STUB_ENOSYS 38 /* ENOSYS on Linux (asm-generic/errno.h) */
#define NULL ((void *) 0)
#define PUBLIC __attribute__((visibility("default")))

typedef struct sd_bus sd_bus;
typedef struct sd_bus_message sd_bus_message;
typedef struct sd_bus_slot sd_bus_slot;
typedef struct {
    const char *name;
    const char *message;
    int _need_free;
} sd_bus_error; /* layout of systemd's public sd-bus.h */

/* ---- LIBSYSTEMD_209 ---- */
PUBLIC int sd_notify(int unset_environment, const char *state) {
    (void) unset_environment; (void) state;
    return 0; /* as without $NOTIFY_SOCKET: nothing sent */
}

PUBLIC int sd_journal_send_with_location(const char *file, const char *line, const char *func,
                                         const char *format, ...) {
    (void) file; (void) line; (void) func; (void) format;
    return -STUB_ENOSYS;
}

/* ---- LIBSYSTEMD_221 ---- */
PUBLIC int sd_bus_default_system(sd_bus **ret) {
    if (ret) *ret = NULL;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_default_user(sd_bus **ret) {
    if (ret) *ret = NULL;
    return -STUB_ENOSYS;
}

PUBLIC sd_bus *sd_bus_unref(sd_bus *bus) { (void) bus; return NULL; }

PUBLIC sd_bus_message *sd_bus_message_unref(sd_bus_message *m) { (void) m; return NULL; }

PUBLIC void sd_bus_error_free(sd_bus_error *e) {
    if (!e) return;
    e->name = NULL;
    e->message = NULL;
    e->_need_free = 0;
}

PUBLIC int sd_bus_error_get_errno(const sd_bus_error *e) {
    return (e && e->name) ? STUB_ENOSYS : 0;
}

PUBLIC int sd_bus_call(sd_bus *bus, sd_bus_message *m, unsigned long long usec,
                       sd_bus_error *ret_error, sd_bus_message **reply) {
    (void) bus; (void) m; (void) usec; (void) ret_error;
    if (reply) *reply = NULL;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_new_method_call(sd_bus *bus, sd_bus_message **m, const char *dest,
                                          const char *path, const char *iface,
                                          const char *member) {
    (void) bus; (void) dest; (void) path; (void) iface; (void) member;
    if (m) *m = NULL;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_append(sd_bus_message *m, const char *types, ...) {
    (void) m; (void) types;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_append_array(sd_bus_message *m, char type, const void *ptr,
                                       unsigned long size) {
    (void) m; (void) type; (void) ptr; (void) size;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_append_basic(sd_bus_message *m, char type, const void *p) {
    (void) m; (void) type; (void) p;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_append_strv(sd_bus_message *m, char **l) {
    (void) m; (void) l;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_open_container(sd_bus_message *m, char type, const char *contents) {
    (void) m; (void) type; (void) contents;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_close_container(sd_bus_message *m) {
    (void) m;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_message_read(sd_bus_message *m, const char *types, ...) {
    (void) m; (void) types;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_process(sd_bus *bus, sd_bus_message **r) {
    (void) bus;
    if (r) *r = NULL;
    return -STUB_ENOSYS;
}

PUBLIC int sd_bus_wait(sd_bus *bus, unsigned long long timeout_usec) {
    (void) bus; (void) timeout_usec;
    return -STUB_ENOSYS;
}

/* ---- LIBSYSTEMD_237 ---- */
PUBLIC int sd_bus_match_signal_async(sd_bus *bus, sd_bus_slot **ret, const char *sender,
                                     const char *path, const char *iface, const char *member,
                                     void *callback, void *install_callback, void *userdata) {
    (void) bus; (void) sender; (void) path; (void) iface; (void) member;
    (void) callback; (void) install_callback; (void) userdata;
    if (ret) *ret = NULL;
    return -STUB_ENOSYS;
}

/* ---- LIBSYSTEMD_246 ---- */
PUBLIC int sd_notify_barrier(int unset_environment, unsigned long long timeout) {
    (void) unset_environment; (void) timeout;
    return 0; /* as without $NOTIFY_SOCKET */
}
