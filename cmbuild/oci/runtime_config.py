"""Image config -> OCI runtime ``config.json``.

This module follows the OCI image-spec "Conversion to OCI Runtime Configuration" document
(``conversion.md``) point by point, in the style of umoci's ``oci/config/convert/runtime.go``.
Everything that document leaves "implementation-defined" is decided here and listed below, so
that the output is a pure function of its inputs (a plain dict; the caller stores it as
canonical JSON).

Verbatim fields (conversion.md, "Verbatim Fields"):

- ``Config.WorkingDir`` -> ``process.cwd`` (``/`` when empty; must be absolute).
- ``Config.Env`` -> ``process.env``, in image order. cmbuild adds only names the image does not
  set: ``PATH`` (Docker's default value) and ``HOME`` (from the user's ``/etc/passwd`` entry, else
  ``/``), after the image's and the overrides' entries.
- ``Config.Entrypoint`` + ``Config.Cmd`` -> ``process.args``.

Annotation fields: ``os``, ``architecture``, ``variant``, ``os.version``, ``os.features``
(comma-joined), ``author``, ``created`` and ``Config.StopSignal`` become the
``org.opencontainers.image.*`` annotations named in conversion.md, when present in the image.
``Config.Labels`` are copied as annotations and win over every implicit annotation.

Parsed fields: ``Config.User`` is resolved through the image's own ``/etc/passwd`` and
``/etc/group`` (see :func:`read_user_db`), never the host's:

- ``""`` (unset): uid 0; gid and HOME from the passwd entry of uid 0 if any, else gid 0.
- ``uid`` (numeric): copied verbatim; gid and HOME from the first passwd entry with that uid,
  else gid 0 (a uid with no passwd entry is allowed).
- ``name``: must be in ``/etc/passwd``; uid, gid, HOME from its entry, and ``additionalGids``
  from the ``/etc/group`` entries that list ``name`` as a member (file order).
- ``user:group``: the user as above; the group is numeric (copied verbatim) or a name that must
  be in ``/etc/group``. With an explicit group, or a numeric user, ``additionalGids`` is not
  set (conversion.md: "SHOULD NOT modify").

Optional fields:

- ``Config.ExposedPorts`` -> annotation ``org.opencontainers.image.exposedPorts`` (the sorted
  keys, comma-joined), unless a label sets it.
- ``Config.Volumes`` -> one ``tmpfs`` mount per volume path, owned by the process's uid/gid
  (``mode=755``), unless an extra mount (from the caller) is at that path or at one of its
  parents. Volume contents in the image are NOT copied into the tmpfs (conversion.md: "MAY
  seed"; Docker does seed). A tmpfs lives in the machine's RAM.

Implementation-defined parts, modelled on the default spec of ``runc spec`` / ``crun spec``:

- ``ociVersion`` ``1.0.2``; ``root`` ``{"path": "rootfs", "readonly": false}``: the runtime
  layer's init gives the container a writable root (an overlay, or a copy), and crun must not
  remount it read-only.
- ``process.terminal`` false (the console is the machine's ``hvc0``, not a TTY);
  ``noNewPrivileges`` false and Docker's default capability set in bounding, effective and
  permitted, so that an image behaves as under ``docker run`` (setuid programs, su/gosu and
  chown by a root entrypoint work); ``RLIMIT_NOFILE`` 1024/1024.
- namespaces pid, ipc, uts, mount: no network namespace (the machine has no network; the
  container shares the machine's loopback) and no user namespace.
- mounts ``/proc``, ``/dev`` (tmpfs), ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``, ``/sys``
  (read-only) as in runc's default spec; no ``/sys/fs/cgroup`` mount and no ``linux.resources``:
  crun runs with ``--cgroup-manager=disabled`` in the machine and there are no cgroup limits.
- ``linux.maskedPaths`` and ``linux.readonlyPaths``: runc's default lists.
- ``hostname``: ``cartesi`` unless the caller says otherwise.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CmbuildError
from . import tarutil

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOSTNAME = "cartesi"

# conversion.md annotation keys
ANNOTATION_OS = "org.opencontainers.image.os"
ANNOTATION_ARCH = "org.opencontainers.image.architecture"
ANNOTATION_VARIANT = "org.opencontainers.image.variant"
ANNOTATION_OS_VERSION = "org.opencontainers.image.os.version"
ANNOTATION_OS_FEATURES = "org.opencontainers.image.os.features"
ANNOTATION_AUTHOR = "org.opencontainers.image.author"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_STOP_SIGNAL = "org.opencontainers.image.stopSignal"
ANNOTATION_EXPOSED_PORTS = "org.opencontainers.image.exposedPorts"

# image config top-level field -> annotation (conversion.md, "Annotation Fields")
_IMAGE_FIELD_ANNOTATIONS = (
    ("os", ANNOTATION_OS),
    ("architecture", ANNOTATION_ARCH),
    ("variant", ANNOTATION_VARIANT),
    ("os.version", ANNOTATION_OS_VERSION),
    ("os.features", ANNOTATION_OS_FEATURES),
    ("author", ANNOTATION_AUTHOR),
    ("created", ANNOTATION_CREATED),
)

# Docker's default set (moby's oci/caps/defaults.go): images written for `docker run` that
# start as root and chown, or drop to a user with su/gosu, work the same here.
DEFAULT_CAPABILITIES = sorted([
    "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
    "CAP_SETUID", "CAP_SYS_CHROOT",
])

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    "/sys/devices/virtual/tpm",
]

READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]

NAMESPACES = ["pid", "ipc", "uts", "mount"]

MAX_ID = (1 << 31) - 1  # like moby/sys/user: uids and gids are 0 .. 2^31-1
MAX_USER_DB_SIZE = 16 << 20
MAX_SYMLINK_HOPS = 8


@dataclass
class Overrides:
    """Values from ``cartesi.toml`` ``[machine]``; ``None`` keeps the image's value."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: dict[str, str] | None = None
    workdir: str | None = None
    user: str | None = None


@dataclass
class Mount:
    destination: str
    source: str
    type: str
    options: list[str] = field(default_factory=list)

    def to_spec(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "type": self.type,
            "source": self.source,
            "options": list(self.options),
        }


def _default_mounts() -> list[dict[str, Any]]:
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
    ]


# --------------------------------------------------------------------------- the conversion


def make_runtime_config(
    image_config: dict,
    overrides: Overrides,
    *,
    passwd: bytes | None,
    group: bytes | None,
    extra_mounts: Sequence[Mount] = (),
    hostname: str = DEFAULT_HOSTNAME,
) -> dict:
    """The OCI runtime config (``config.json`` of the bundle) for ``image_config``.

    ``image_config`` is the image's config blob as parsed JSON; ``passwd`` and ``group`` are the
    image's ``/etc/passwd`` and ``/etc/group`` (from :func:`read_user_db`), or ``None`` when the
    image has none. ``extra_mounts`` come after the default mounts, with the volumes' tmpfs
    mounts, parents before children.
    """
    if not isinstance(image_config, dict):
        raise CmbuildError("the image config is not a JSON object", where="image config")
    _check_os(image_config)
    cfg = image_config.get("config") or {}
    if not isinstance(cfg, dict):
        raise CmbuildError("'config' is not a JSON object", where="image config")

    args = _process_args(cfg, overrides)
    cwd = _working_dir(cfg, overrides)
    env = _merge_env(cfg, overrides)
    user_spec, user_where = _user_spec(cfg, overrides)
    user = resolve_user(user_spec, passwd, group, where=user_where)
    env = _add_default_env(env, user.home)

    process: dict[str, Any] = {
        "terminal": False,
        "user": user.to_spec(),
        "args": args,
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": cwd,
        "capabilities": {
            "bounding": list(DEFAULT_CAPABILITIES),
            "effective": list(DEFAULT_CAPABILITIES),
            "permitted": list(DEFAULT_CAPABILITIES),
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": False,
    }
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": _mounts(cfg, extra_mounts, user),
        "annotations": _annotations(image_config, cfg),
        "linux": {
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def _check_os(image_config: dict) -> None:
    os_name = image_config.get("os")
    if os_name not in (None, "", "linux"):
        raise CmbuildError(
            f"the image is for os {os_name!r}; a Cartesi machine runs linux images",
            where="image config 'os'",
            hint="pick the linux/riscv64 variant of the image",
        )


def _string_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CmbuildError(f"expected a list of strings, got {value!r}", where=where)
    return list(value)


def _process_args(cfg: dict, ov: Overrides) -> list[str]:
    """Entrypoint + Cmd (conversion.md note 2), with docker's override rules: a new entrypoint
    resets Cmd unless a cmd is given too; a new cmd replaces Cmd only."""
    entrypoint = _string_list(cfg.get("Entrypoint"), "image config Config.Entrypoint")
    cmd = _string_list(cfg.get("Cmd"), "image config Config.Cmd")
    if ov.entrypoint is not None:
        entrypoint = _string_list(ov.entrypoint, "[machine] entrypoint")
        cmd = []
    if ov.cmd is not None:
        cmd = _string_list(ov.cmd, "[machine] cmd")
    args = entrypoint + cmd
    if not args:
        raise CmbuildError(
            "nothing to run: the image has no Entrypoint and no Cmd, and none is configured",
            where="image config Config.Entrypoint/Config.Cmd",
            hint='set [machine] cmd = ["/path/to/program", ...] (or entrypoint) in cartesi.toml',
        )
    return args


def _working_dir(cfg: dict, ov: Overrides) -> str:
    if ov.workdir is not None:
        value, where = ov.workdir, "[machine] workdir"
    else:
        value, where = cfg.get("WorkingDir") or "", "image config Config.WorkingDir"
    if not isinstance(value, str):
        raise CmbuildError(f"expected a string, got {value!r}", where=where)
    if value == "":
        return "/"
    if not value.startswith("/"):
        raise CmbuildError(
            f"the working directory {value!r} is not an absolute path", where=where,
            hint="an OCI runtime needs an absolute process.cwd",
        )
    return value


def _parse_env_entry(entry: Any, where: str) -> tuple[str, str]:
    if not isinstance(entry, str) or "=" not in entry:
        raise CmbuildError(f"environment entry {entry!r} is not NAME=VALUE", where=where)
    name, value = entry.split("=", 1)
    if name == "":
        raise CmbuildError(f"environment entry {entry!r} has an empty name", where=where)
    return name, value


def _merge_env(cfg: dict, ov: Overrides) -> dict[str, str]:
    """Image Env in image order (a repeated name keeps its first place, last value wins), then
    the overrides: a name already there is replaced in place, new names follow sorted."""
    where = "image config Config.Env"
    raw = cfg.get("Env") or []
    if not isinstance(raw, list):
        raise CmbuildError(f"expected a list of NAME=VALUE strings, got {raw!r}", where=where)
    env: dict[str, str] = {}
    for entry in raw:
        name, value = _parse_env_entry(entry, where)
        env[name] = value
    if ov.env:
        for name in ov.env:
            value = ov.env[name]
            if not isinstance(name, str) or not name or "=" in name:
                raise CmbuildError(f"invalid environment variable name {name!r}", where="[machine] env")
            if not isinstance(value, str):
                raise CmbuildError(f"the value of {name} is not a string: {value!r}", where="[machine] env")
        for name in [n for n in ov.env if n in env]:
            env[name] = ov.env[name]
        for name in sorted(n for n in ov.env if n not in env):
            env[name] = ov.env[name]
    return env


def _add_default_env(env: dict[str, str], home: str) -> dict[str, str]:
    """Implementation defaults, only for names the image and the overrides do not set
    (conversion.md note 1)."""
    out = dict(env)
    out.setdefault("PATH", DEFAULT_PATH)
    out.setdefault("HOME", home)
    return out


def _user_spec(cfg: dict, ov: Overrides) -> tuple[str, str]:
    if ov.user is not None:
        value, where = ov.user, "[machine] user"
    else:
        value, where = cfg.get("User") or "", "image config Config.User"
    if not isinstance(value, str):
        raise CmbuildError(f"expected a string, got {value!r}", where=where)
    return value, where


def _annotations(image_config: dict, cfg: dict) -> dict[str, str]:
    ann: dict[str, str] = {}
    for key, annotation in _IMAGE_FIELD_ANNOTATIONS:
        value = image_config.get(key)
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if value not in (None, ""):
            ann[annotation] = str(value)
    stop = cfg.get("StopSignal")
    if stop:
        ann[ANNOTATION_STOP_SIGNAL] = str(stop)
    ports = cfg.get("ExposedPorts") or {}
    if not isinstance(ports, dict):
        raise CmbuildError(f"expected an object, got {ports!r}", where="image config Config.ExposedPorts")
    if ports:
        ann[ANNOTATION_EXPOSED_PORTS] = ",".join(sorted(ports))
    labels = cfg.get("Labels") or {}
    if not isinstance(labels, dict):
        raise CmbuildError(f"expected an object, got {labels!r}", where="image config Config.Labels")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise CmbuildError(f"label {key!r} is not a string: {value!r}", where="image config Config.Labels")
        ann[str(key)] = value  # labels take precedence over the implicit annotations
    return ann


# --------------------------------------------------------------------------- mounts


def _clean_abs_path(path: Any, where: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise CmbuildError(f"mount path {path!r} is not an absolute path", where=where)
    if ".." in path.split("/"):
        raise CmbuildError(f"mount path {path!r} contains '..'", where=where)
    clean = posixpath.normpath(path)
    if clean.startswith("//"):
        clean = "/" + clean.lstrip("/")
    if clean == "/":
        raise CmbuildError("a mount over '/' would hide the image", where=where)
    return clean


def _is_same_or_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _mounts(cfg: dict, extra_mounts: Sequence[Mount], user: ResolvedUser) -> list[dict[str, Any]]:
    volumes = cfg.get("Volumes") or {}
    if not isinstance(volumes, dict):
        raise CmbuildError(f"expected an object, got {volumes!r}", where="image config Config.Volumes")
    extra = []
    for m in extra_mounts:
        spec = m.to_spec()
        spec["destination"] = _clean_abs_path(m.destination, f"extra mount {m.destination!r}")
        extra.append(spec)
    covered = [m["destination"] for m in extra]
    for path in sorted({_clean_abs_path(v, "image config Config.Volumes") for v in volumes}):
        if any(_is_same_or_under(path, c) for c in covered):
            continue
        extra.append({
            "destination": path,
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=755", f"uid={user.uid}", f"gid={user.gid}"],
        })
    # Parents before children; a stable sort keeps the caller's order for equal destinations.
    extra.sort(key=lambda m: tuple(p for p in m["destination"].split("/") if p))
    return _default_mounts() + extra


def _needed_dirs(destinations: list[str], cwd: str | None) -> list[str]:
    """The mount destinations that no other mount provides (``/dev/pts`` lives in the ``/dev``
    tmpfs, ``/proc`` must exist in the root), and ``cwd`` unless a mount provides it."""
    dests = [posixpath.normpath(d) for d in destinations if isinstance(d, str) and d.startswith("/")]
    out = {d for d in dests if not any(d != o and _is_same_or_under(d, o) for o in dests)}
    if isinstance(cwd, str) and cwd.startswith("/") and cwd != "/":
        c = posixpath.normpath(cwd)
        if not any(_is_same_or_under(c, o) for o in dests):
            out.add(c)
    return sorted(out)


def mount_points(doc: dict[str, Any]) -> list[str]:
    """The directories that must exist in the root file system for ``doc`` (a runtime config)
    to run on a read-only root: every mount destination that no other mount of the config
    provides, and ``process.cwd``, which crun would otherwise try to create."""
    return _needed_dirs([m.get("destination") for m in doc.get("mounts", [])],
                        (doc.get("process") or {}).get("cwd"))


def image_mount_points(image_config: dict[str, Any]) -> list[str]:
    """What :func:`mount_points` gives for any runtime config made from this image config
    without overrides: the default mounts (``/proc``, ``/dev``, ``/sys``), the image's
    ``Volumes`` and its ``WorkingDir``. These depend on the image alone, so they belong on the
    image's own drive."""
    cfg = image_config.get("config") or {}
    volumes = cfg.get("Volumes") or {}
    dests = [m["destination"] for m in _default_mounts()]
    if isinstance(volumes, dict):
        dests += [v for v in volumes if isinstance(v, str)]
    return _needed_dirs(dests, cfg.get("WorkingDir") or None)


# --------------------------------------------------------------------------- users


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass
class ResolvedUser:
    uid: int
    gid: int
    additional_gids: list[int]
    home: str

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"uid": self.uid, "gid": self.gid}
        if self.additional_gids:
            spec["additionalGids"] = list(self.additional_gids)
        return spec


def _parse_id(text: str) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if value <= MAX_ID else None


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """``name:password:uid:gid:gecos:home:shell`` lines; malformed and NIS (``+``/``-``) lines
    are skipped, like libc does."""
    entries = []
    for line in data.decode("utf-8", "replace").splitlines():
        if not line or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 4:
            continue
        uid, gid = _parse_id(fields[2]), _parse_id(fields[3])
        if not fields[0] or uid is None or gid is None:
            continue
        home = fields[5] if len(fields) > 5 and fields[5] else "/"
        entries.append(PasswdEntry(fields[0], uid, gid, home))
    return entries


def parse_group(data: bytes) -> list[GroupEntry]:
    """``name:password:gid:member,member`` lines; malformed lines are skipped."""
    entries = []
    for line in data.decode("utf-8", "replace").splitlines():
        if not line or line.startswith(("#", "+", "-")):
            continue
        fields = line.split(":")
        if len(fields) < 3:
            continue
        gid = _parse_id(fields[2])
        if not fields[0] or gid is None:
            continue
        members = tuple(m for m in (fields[3].split(",") if len(fields) > 3 else []) if m)
        entries.append(GroupEntry(fields[0], gid, members))
    return entries


def resolve_user(spec: str, passwd: bytes | None, group: bytes | None, *, where: str = "User") -> ResolvedUser:
    """Resolve ``user``, ``uid``, ``user:group`` or ``uid:gid`` (conversion.md, ``Config.User``)
    through the image's own ``/etc/passwd`` and ``/etc/group``."""
    user_part, sep, group_part = spec.partition(":")
    if sep and group_part == "":
        raise CmbuildError(f"user {spec!r} has an empty group after ':'", where=where)
    users = parse_passwd(passwd) if passwd is not None else []

    uid = _parse_id(user_part) if user_part else 0
    if user_part and uid is None and user_part.isascii() and user_part.isdigit():
        raise CmbuildError(f"uid {user_part} is out of range (0..{MAX_ID})", where=where)
    if uid is not None:
        entry = next((u for u in users if u.uid == uid), None)
        by_name = False
    else:
        entry = _find_user_by_name(user_part, users, passwd is not None, where)
        uid = entry.uid
        by_name = True
    gid = entry.gid if entry else 0
    home = entry.home if entry else "/"

    additional: list[int] = []
    if group_part:
        gid = _resolve_group(group_part, group, where)
    elif by_name and group is not None:
        for g in parse_group(group):
            if user_part in g.members and g.gid not in additional:
                additional.append(g.gid)
    return ResolvedUser(uid=uid, gid=gid, additional_gids=additional, home=home)


def _find_user_by_name(name: str, users: list[PasswdEntry], have_passwd: bool, where: str) -> PasswdEntry:
    if not have_passwd:
        raise CmbuildError(
            f"user {name!r} cannot be resolved: the image has no /etc/passwd",
            where=where,
            hint="use a numeric uid (and uid:gid), or add the user to the image",
        )
    entry = next((u for u in users if u.name == name), None)
    if entry is None:
        raise CmbuildError(
            f"user {name!r} is not in the image's /etc/passwd",
            where=where,
            hint="use a user that exists in the image, or a numeric uid",
        )
    return entry


def _resolve_group(name: str, group: bytes | None, where: str) -> int:
    gid = _parse_id(name)
    if gid is not None:
        return gid  # numeric: verbatim (conversion.md)
    if name.isascii() and name.isdigit():
        raise CmbuildError(f"gid {name} is out of range (0..{MAX_ID})", where=where)
    if group is None:
        raise CmbuildError(
            f"group {name!r} cannot be resolved: the image has no /etc/group",
            where=where,
            hint="use a numeric gid, or add the group to the image",
        )
    entry = next((g for g in parse_group(group) if g.name == name), None)
    if entry is None:
        raise CmbuildError(
            f"group {name!r} is not in the image's /etc/group",
            where=where,
            hint="use a group that exists in the image, or a numeric gid",
        )
    return entry.gid


# --------------------------------------------------------------------------- reading the tar


def _tar_key(name: str) -> str:
    """Normalise an entry name ("./etc/passwd", "/etc/passwd", "etc/passwd/") to "etc/passwd"."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _resolve_in_tar(path: str, members: dict[str, _Member], where: str) -> _Member | None:
    """Find ``path`` in the tar, following symlinks (in any component) and hard links the way
    the kernel would inside a chroot at the tar's root: ``..`` never goes above the root and an
    absolute target starts again at the root. Nothing on the host is looked at."""
    implicit_dirs = {k.rsplit("/", 1)[0] for k in members if "/" in k}
    implicit_dirs |= {d.rsplit("/", i)[0] for d in list(implicit_dirs) for i in range(1, d.count("/") + 1)}
    hops = 0
    pending = [p for p in path.split("/") if p]
    resolved: list[str] = []
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        resolved.append(part)
        info = members.get("/".join(resolved))
        if info is None:
            if pending and "/".join(resolved) in implicit_dirs:
                continue  # a directory that has entries but no entry of its own
            return None
        if info.issym():
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise CmbuildError(f"more than {MAX_SYMLINK_HOPS} symbolic links while resolving /{path}",
                                   where=where)
            resolved.pop()
            target = info.linkname
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p] + pending
        elif pending and not info.isdir():
            return None
    info = members.get("/".join(resolved)) if resolved else None
    if info is not None and info.islnk():
        info = members.get(_tar_key(info.linkname))
    return info


@dataclass
class _Member:
    """An entry of the rootfs tar, as far as finding the user database needs."""

    type: bytes
    linkname: str
    size: int
    offset: int

    def issym(self) -> bool:
        return self.type == tarutil.SYM

    def islnk(self) -> bool:
        return self.type == tarutil.LNK

    def isdir(self) -> bool:
        return self.type == tarutil.DIR

    def isfile(self) -> bool:
        return self.type in (tarutil.REG, tarutil.AREG, tarutil.CONT)


def _read_member(fd: int, path: str, members: dict[str, _Member], where: str) -> bytes | None:
    info = _resolve_in_tar(path, members, where)
    if info is None or not info.isfile():
        return None
    if info.size > MAX_USER_DB_SIZE:
        raise CmbuildError(f"/{path} is {info.size} bytes, more than a user database should be", where=where)
    return os.pread(fd, info.size, info.offset)


def read_user_db(rootfs_tar: Path) -> tuple[bytes | None, bytes | None]:
    """``/etc/passwd`` and ``/etc/group`` of a flattened (canonical) rootfs tar, or ``None`` for
    each one the image does not have. Symbolic links are followed inside the tar only. Reads
    the headers and those two files only."""
    where = str(rootfs_tar)
    try:
        fd = os.open(rootfs_tar, os.O_RDONLY)
        try:
            members: dict[str, _Member] = {}
            for e in tarutil.iter_tar(fd, os.fstat(fd).st_size):
                key = _tar_key(e.name.decode("utf-8", "surrogateescape"))
                if key:   # a later entry of the same name wins, as when extracting
                    members[key] = _Member(e.type, e.linkname.decode("utf-8", "surrogateescape"),
                                           e.size, e.offset)
            return (_read_member(fd, "etc/passwd", members, where),
                    _read_member(fd, "etc/group", members, where))
        finally:
            os.close(fd)
    except (tarutil.TarFormatError, OSError) as e:
        raise CmbuildError(f"cannot read the rootfs tar: {e}", where=where) from e
