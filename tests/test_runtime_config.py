"""cmbuild.oci.runtime_config: image config -> OCI runtime config.json (image-spec conversion.md)."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.oci.runtime_config import (
    DEFAULT_PATH,
    Mount,
    Overrides,
    make_runtime_config,
    read_user_db,
    resolve_user,
)
from cmbuild.store import canonical_json

# Docker's default capability set, spelled out here so a change to the module shows up
DOCKER_CAPS = ["CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
               "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID",
               "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT"]

PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
+nisuser::::::
broken line
app:x:1000:1000:App user:/home/app:/bin/sh
nohome:x:1001:1002:::/bin/sh
"""

GROUP = b"""\
root:x:0:
daemon:x:1:
wheel:x:10:root,app
app:x:1000:
audio:x:29:daemon,app
staff:x:50:
nohome:x:1002:
"""

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def image(config: dict | None = None, **top) -> dict:
    doc = {"architecture": "riscv64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
    doc.update(top)
    if config is not None:
        doc["config"] = config
    return doc


def convert(config: dict | None = None, overrides: Overrides | None = None, *, passwd=PASSWD, group=GROUP,
            extra_mounts=(), **top) -> dict:
    return make_runtime_config(image(config, **top), overrides or Overrides(), passwd=passwd, group=group,
                               extra_mounts=extra_mounts)


# --------------------------------------------------------------------------- the whole document


def test_alpine_like_image_gives_exact_config():
    got = convert({"Env": [PATH_ENV], "Cmd": ["/bin/sh"]}, created="2024-01-01T00:00:00Z")
    assert got == {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/sh"],
            "env": [PATH_ENV, "HOME=/root"],
            "cwd": "/",
            "capabilities": {
                "bounding": DOCKER_CAPS,
                "effective": DOCKER_CAPS,
                "permitted": DOCKER_CAPS,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": False,
        },
        "root": {"path": "rootfs", "readonly": False},
        "hostname": "cartesi",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "annotations": {
            "org.opencontainers.image.os": "linux",
            "org.opencontainers.image.architecture": "riscv64",
            "org.opencontainers.image.created": "2024-01-01T00:00:00Z",
        },
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi", "/sys/devices/virtual/tpm",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def test_output_is_deterministic_and_plain_json():
    cfg = {"Env": ["B=2", "A=1"], "Entrypoint": ["/app"], "Volumes": {"/b": {}, "/a": {}},
           "Labels": {"z": "1", "a": "2"}, "ExposedPorts": {"8080/tcp": {}, "53/udp": {}}, "User": "app"}
    ov = Overrides(env={"Z": "z", "C": "c"})
    first = convert(cfg, ov)
    second = convert(json.loads(json.dumps(cfg)), Overrides(env={"C": "c", "Z": "z"}))
    assert canonical_json(first) == canonical_json(second)
    assert json.loads(json.dumps(first)) == first


def test_hostname_is_configurable():
    got = make_runtime_config(image({"Cmd": ["/x"]}), Overrides(), passwd=None, group=None, hostname="box")
    assert got["hostname"] == "box"


# --------------------------------------------------------------------------- process.args


@pytest.mark.parametrize(
    "entrypoint, cmd, overrides, expected",
    [
        (None, ["/bin/sh"], Overrides(), ["/bin/sh"]),
        (["/entry.sh"], None, Overrides(), ["/entry.sh"]),
        (["/entry.sh"], ["serve", "--port=80"], Overrides(), ["/entry.sh", "serve", "--port=80"]),
        # a cmd override replaces Cmd only
        (["/entry.sh"], ["serve"], Overrides(cmd=["migrate"]), ["/entry.sh", "migrate"]),
        (None, ["/bin/sh"], Overrides(cmd=["/bin/echo", "hi"]), ["/bin/echo", "hi"]),
        # an entrypoint override resets Cmd (like docker --entrypoint) ...
        (["/entry.sh"], ["serve"], Overrides(entrypoint=["/bin/true"]), ["/bin/true"]),
        # ... unless cmd is given too
        (["/entry.sh"], ["serve"], Overrides(entrypoint=["/bin/echo"], cmd=["a", "b"]), ["/bin/echo", "a", "b"]),
        # an empty entrypoint override drops the image's entrypoint
        (["/entry.sh"], ["serve"], Overrides(entrypoint=[], cmd=["/bin/ls"]), ["/bin/ls"]),
    ],
)
def test_process_args(entrypoint, cmd, overrides, expected):
    cfg = {}
    if entrypoint is not None:
        cfg["Entrypoint"] = entrypoint
    if cmd is not None:
        cfg["Cmd"] = cmd
    assert convert(cfg, overrides)["process"]["args"] == expected


@pytest.mark.parametrize(
    "cfg, overrides",
    [
        ({}, Overrides()),
        (None, Overrides()),
        ({"Entrypoint": None, "Cmd": None}, Overrides()),
        ({"Cmd": ["/bin/sh"]}, Overrides(entrypoint=[])),
        ({"Entrypoint": ["/x"]}, Overrides(entrypoint=[], cmd=[])),
    ],
)
def test_empty_args_is_a_clear_error(cfg, overrides):
    with pytest.raises(CmbuildError) as e:
        convert(cfg, overrides)
    assert "nothing to run" in e.value.message
    assert "cmd" in e.value.hint


def test_args_must_be_strings():
    with pytest.raises(CmbuildError) as e:
        convert({"Cmd": ["/bin/sh", 3]})
    assert e.value.where == "image config Config.Cmd"


# --------------------------------------------------------------------------- env and cwd


@pytest.mark.parametrize(
    "image_env, override, expected",
    [
        # defaults added only when missing: PATH (docker's) then HOME
        ([], None, [f"PATH={DEFAULT_PATH}", "HOME=/root"]),
        (["PATH=/bin", "HOME=/data"], None, ["PATH=/bin", "HOME=/data"]),
        # values may contain '=' and be empty
        (["A=x=y", "B="], None, ["A=x=y", "B=", f"PATH={DEFAULT_PATH}", "HOME=/root"]),
        # a repeated name keeps its first place, last value wins
        (["A=1", "B=2", "A=3"], None, ["A=3", "B=2", f"PATH={DEFAULT_PATH}", "HOME=/root"]),
        # same name replaced in place, new names after the image's, sorted
        (["PATH=/bin", "A=1", "B=2"], {"Z": "26", "B": "two", "C": "3"},
         ["PATH=/bin", "A=1", "B=two", "C=3", "Z=26", "HOME=/root"]),
        (["PATH=/bin"], {"PATH": "/opt/bin", "HOME": "/h"}, ["PATH=/opt/bin", "HOME=/h"]),
        (["PATH=/bin"], {}, ["PATH=/bin", "HOME=/root"]),
    ],
)
def test_env_merge(image_env, override, expected):
    got = convert({"Env": image_env, "Cmd": ["/x"]}, Overrides(env=override))
    assert got["process"]["env"] == expected


@pytest.mark.parametrize("bad", ["NOEQUALS", "=value", 7])
def test_env_entries_must_be_name_value(bad):
    with pytest.raises(CmbuildError) as e:
        convert({"Env": ["OK=1", bad], "Cmd": ["/x"]})
    assert e.value.where == "image config Config.Env"


@pytest.mark.parametrize("bad", [{"": "x"}, {"A=B": "x"}, {"A": 1}])
def test_env_override_names_and_values_are_checked(bad):
    with pytest.raises(CmbuildError) as e:
        convert({"Cmd": ["/x"]}, Overrides(env=bad))
    assert e.value.where == "[machine] env"


@pytest.mark.parametrize(
    "workdir, override, expected",
    [(None, None, "/"), ("", None, "/"), ("/srv/app", None, "/srv/app"), ("/srv/app", "/tmp", "/tmp")],
)
def test_working_dir(workdir, override, expected):
    cfg = {"Cmd": ["/x"]}
    if workdir is not None:
        cfg["WorkingDir"] = workdir
    assert convert(cfg, Overrides(workdir=override))["process"]["cwd"] == expected


def test_relative_working_dir_is_an_error():
    with pytest.raises(CmbuildError) as e:
        convert({"Cmd": ["/x"]}, Overrides(workdir="app"))
    assert e.value.where == "[machine] workdir"


# --------------------------------------------------------------------------- user


@pytest.mark.parametrize(
    "spec, uid, gid, additional, home",
    [
        ("", 0, 0, None, "/root"),
        ("root", 0, 0, [10], "/root"),
        ("0", 0, 0, None, "/root"),
        ("app", 1000, 1000, [10, 29], "/home/app"),
        ("1000", 1000, 1000, None, "/home/app"),            # numeric: no additionalGids
        ("app:staff", 1000, 50, None, "/home/app"),         # explicit group: no additionalGids
        ("app:0", 1000, 0, None, "/home/app"),
        ("1000:50", 1000, 50, None, "/home/app"),
        ("4242", 4242, 0, None, "/"),                       # uid not in passwd: allowed, gid 0
        ("4242:4343", 4242, 4343, None, "/"),               # gid not in group: verbatim
        ("4242:audio", 4242, 29, None, "/"),
        ("nohome", 1001, 1002, None, "/"),                  # empty home field
        ("daemon", 1, 1, [29], "/usr/sbin"),
    ],
)
def test_user_resolution(spec, uid, gid, additional, home):
    got = convert({"Cmd": ["/x"], "User": spec})
    expected_user = {"uid": uid, "gid": gid}
    if additional:
        expected_user["additionalGids"] = additional
    assert got["process"]["user"] == expected_user
    assert f"HOME={home}" in got["process"]["env"]


def test_user_override_wins_over_image_user():
    got = convert({"Cmd": ["/x"], "User": "app"}, Overrides(user="0"))
    assert got["process"]["user"] == {"uid": 0, "gid": 0}


def test_numeric_user_without_passwd_and_group():
    got = convert({"Cmd": ["/x"], "User": "1234:5678"}, passwd=None, group=None)
    assert got["process"]["user"] == {"uid": 1234, "gid": 5678}
    assert "HOME=/" in got["process"]["env"]


def test_user_name_resolves_without_group_file():
    got = convert({"Cmd": ["/x"], "User": "app"}, group=None)
    assert got["process"]["user"] == {"uid": 1000, "gid": 1000}


@pytest.mark.parametrize(
    "spec, passwd, group, words",
    [
        ("nobody", PASSWD, GROUP, ["'nobody'", "/etc/passwd"]),
        ("app", None, GROUP, ["'app'", "no /etc/passwd"]),
        ("app:nogroup", PASSWD, GROUP, ["'nogroup'", "/etc/group"]),
        ("1000:nogroup", PASSWD, None, ["'nogroup'", "no /etc/group"]),
        ("app:", PASSWD, GROUP, ["empty group"]),
        ("99999999999", PASSWD, GROUP, ["out of range"]),
    ],
)
def test_user_errors_name_the_user_and_the_file(spec, passwd, group, words):
    with pytest.raises(CmbuildError) as e:
        convert({"Cmd": ["/x"], "User": spec}, passwd=passwd, group=group)
    for word in words:
        assert word in e.value.message
    assert e.value.where == "image config Config.User"


def test_user_error_from_override_says_where():
    with pytest.raises(CmbuildError) as e:
        convert({"Cmd": ["/x"]}, Overrides(user="ghost"))
    assert e.value.where == "[machine] user"


def test_resolve_user_first_passwd_match_wins():
    passwd = b"a:x:5:5::/first:/bin/sh\na:x:6:6::/second:/bin/sh\nb:x:5:7::/b:/bin/sh\n"
    got = resolve_user("a", passwd, None)
    assert (got.uid, got.gid, got.home) == (5, 5, "/first")
    got = resolve_user("5", passwd, None)
    assert (got.uid, got.gid, got.home) == (5, 5, "/first")


# --------------------------------------------------------------------------- volumes and mounts


def _extra_mounts(cfg: dict) -> list[dict]:
    return cfg["mounts"][6:]


def test_volumes_become_tmpfs_mounts_owned_by_the_user():
    got = convert({"Cmd": ["/x"], "User": "app", "Volumes": {"/var/lib/db": {}, "/data/": {}, "/cache": {}}})
    assert _extra_mounts(got) == [
        {"destination": p, "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=755", "uid=1000", "gid=1000"]}
        for p in ["/cache", "/data", "/var/lib/db"]
    ]


def test_extra_mount_covers_a_volume_at_or_above_its_path():
    app = Mount(destination="/data", source="/dev/pmem1", type="ext2", options=["rw"])
    got = convert({"Cmd": ["/x"], "Volumes": {"/data": {}, "/data/db": {}, "/logs": {}}}, extra_mounts=[app])
    assert [m["destination"] for m in _extra_mounts(got)] == ["/data", "/logs"]
    assert _extra_mounts(got)[0] == {"destination": "/data", "type": "ext2", "source": "/dev/pmem1",
                                     "options": ["rw"]}


def test_mounts_are_ordered_parents_first_keeping_the_callers_order():
    mounts = [
        Mount("/srv/app/cache", "tmpfs", "tmpfs", []),
        Mount("/srv", "tmpfs", "tmpfs", ["size=1m"]),
        Mount("/srv", "tmpfs", "tmpfs", ["size=2m"]),
    ]
    got = convert({"Cmd": ["/x"], "Volumes": {"/srv/app": {}}}, extra_mounts=mounts)
    # /srv/app is under the extra mount /srv: covered, no tmpfs
    assert [(m["destination"], m["options"]) for m in _extra_mounts(got)] == [
        ("/srv", ["size=1m"]), ("/srv", ["size=2m"]), ("/srv/app/cache", []),
    ]


def test_volume_child_of_a_volume_comes_after_it():
    got = convert({"Cmd": ["/x"], "Volumes": {"/a/b": {}, "/a": {}, "/a-b": {}}})
    assert [m["destination"] for m in _extra_mounts(got)] == ["/a", "/a/b", "/a-b"]


@pytest.mark.parametrize("bad", ["relative/path", "/", "/data/../etc"])
def test_bad_volume_paths_are_errors(bad):
    with pytest.raises(CmbuildError) as e:
        convert({"Cmd": ["/x"], "Volumes": {bad: {}}})
    assert e.value.where == "image config Config.Volumes"


# --------------------------------------------------------------------------- annotations


def test_annotations_from_image_fields_ports_and_stop_signal():
    got = convert(
        {"Cmd": ["/x"], "StopSignal": "SIGTERM", "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "443/tcp": {}}},
        variant="v1", author="someone", created="2024-05-06T07:08:09Z",
        **{"os.version": "10.0", "os.features": ["a", "b"]},
    )
    assert got["annotations"] == {
        "org.opencontainers.image.os": "linux",
        "org.opencontainers.image.architecture": "riscv64",
        "org.opencontainers.image.variant": "v1",
        "org.opencontainers.image.os.version": "10.0",
        "org.opencontainers.image.os.features": "a,b",
        "org.opencontainers.image.author": "someone",
        "org.opencontainers.image.created": "2024-05-06T07:08:09Z",
        "org.opencontainers.image.stopSignal": "SIGTERM",
        "org.opencontainers.image.exposedPorts": "443/tcp,53/udp,8080/tcp",
    }


def test_labels_take_precedence_over_implicit_annotations():
    labels = {
        "org.opencontainers.image.architecture": "from-label",
        "org.opencontainers.image.stopSignal": "SIGKILL",
        "org.opencontainers.image.exposedPorts": "1/tcp",
        "com.example.x": "y",
    }
    got = convert({"Cmd": ["/x"], "Labels": labels, "StopSignal": "SIGTERM", "ExposedPorts": {"80/tcp": {}}})
    assert got["annotations"] == {"org.opencontainers.image.os": "linux", **labels}


def test_no_image_fields_no_annotations():
    got = make_runtime_config({"config": {"Cmd": ["/x"], "Labels": None}}, Overrides(), passwd=None, group=None)
    assert got["annotations"] == {}


def test_non_linux_image_is_rejected():
    with pytest.raises(CmbuildError) as e:
        convert({"Cmd": ["/x"]}, os="windows")
    assert "windows" in e.value.message


# --------------------------------------------------------------------------- read_user_db


def _tar(path: Path, entries: list[tuple]) -> Path:
    """entries: (name, kind, payload) with kind "file" | "dir" | "sym" | "link"."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            tar.addfile(info)
    return path


def test_read_user_db_plain_names(tmp_path):
    tar = _tar(tmp_path / "r.tar", [("etc", "dir", None), ("etc/passwd", "file", PASSWD),
                                    ("etc/group", "file", GROUP)])
    assert read_user_db(tar) == (PASSWD, GROUP)


def test_read_user_db_dot_slash_names_and_implicit_dirs(tmp_path):
    tar = _tar(tmp_path / "r.tar", [("./etc/passwd", "file", PASSWD)])
    assert read_user_db(tar) == (PASSWD, None)


def test_read_user_db_missing(tmp_path):
    tar = _tar(tmp_path / "r.tar", [("bin", "dir", None), ("bin/sh", "file", b"x")])
    assert read_user_db(tar) == (None, None)


def test_read_user_db_follows_symlinks_inside_the_tar(tmp_path):
    tar = _tar(tmp_path / "r.tar", [
        ("etc", "dir", None),
        ("etc/passwd", "sym", "../usr/share/passwd"),      # relative, once
        ("etc/group", "sym", "/usr/lib/group-link"),       # absolute, twice
        ("usr/lib/group-link", "sym", "../share/group"),
        ("usr/share/passwd", "file", PASSWD),
        ("usr/share/group", "file", GROUP),
    ])
    assert read_user_db(tar) == (PASSWD, GROUP)


def test_read_user_db_follows_a_directory_symlink_and_hard_links(tmp_path):
    tar = _tar(tmp_path / "r.tar", [
        ("etc", "sym", "private/etc"),
        ("private/etc/passwd", "file", PASSWD),
        ("private/etc/group", "link", "./private/etc/group.orig"),
        ("private/etc/group.orig", "file", GROUP),
    ])
    assert read_user_db(tar) == (PASSWD, GROUP)


def test_read_user_db_never_leaves_the_tar(tmp_path):
    # Targets that would reach the host's files if resolved on the host: they are resolved
    # inside the tar (".." stops at its root), where they do not exist.
    outside = tmp_path / "outside"
    outside.write_bytes(b"host:x:0:0::/:/bin/sh\n")
    tar = _tar(tmp_path / "r.tar", [
        ("etc/passwd", "sym", "../../../../../../" + str(outside).lstrip("/")),
        ("etc/group", "sym", str(outside)),
    ])
    assert read_user_db(tar) == (None, None)


def test_read_user_db_symlink_loop_is_an_error(tmp_path):
    tar = _tar(tmp_path / "r.tar", [("etc/passwd", "sym", "../etc/passwd")])
    with pytest.raises(CmbuildError) as e:
        read_user_db(tar)
    assert "symbolic links" in e.value.message


def test_read_user_db_later_entry_wins(tmp_path):
    tar = _tar(tmp_path / "r.tar", [("etc/passwd", "file", b"old:x:1:1::/:/bin/sh\n"),
                                    ("./etc/passwd", "file", PASSWD)])
    assert read_user_db(tar)[0] == PASSWD


def test_read_user_db_not_a_tar(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(CmbuildError) as e:
        read_user_db(bad)
    assert e.value.where == str(bad)


# --------------------------------------------------------------------------- what crun accepts


def _crun() -> str:
    exe = shutil.which("crun")
    if exe is None:
        pytest.skip("crun is not installed (apt-get install -y crun)")
    return exe


def _full_config() -> dict:
    return convert(
        {"Env": [PATH_ENV], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["true"], "User": "app",
         "WorkingDir": "/work", "Volumes": {"/data": {}}, "Labels": {"a": "b"},
         "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGTERM"},
        Overrides(env={"GREETING": "hello"}),
        extra_mounts=[Mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=1777"])],
    )


def test_every_emitted_key_exists_in_crun_spec(tmp_path):
    subprocess.run([_crun(), "spec"], cwd=tmp_path, check=True, capture_output=True)
    reference = json.loads((tmp_path / "config.json").read_text())
    ours = _full_config()
    # "annotations" is a top-level property of the runtime-spec config.md that `crun spec`'s
    # example does not fill in; every other key must be one crun's own default spec uses.
    assert set(ours) - set(reference) == {"annotations"}
    assert set(ours["process"]) <= set(reference["process"])
    assert set(ours["process"]["user"]) - set(reference["process"]["user"]) <= {"additionalGids"}
    assert set(ours["process"]["capabilities"]) <= set(reference["process"]["capabilities"])
    assert set(ours["root"]) == set(reference["root"])
    assert set(ours["linux"]) <= set(reference["linux"])
    ref_mounts = {m["destination"]: m for m in reference["mounts"]}
    for m in ours["mounts"]:
        assert set(m) <= {"destination", "type", "source", "options"}
        if m["destination"] in ref_mounts:  # the default mounts are crun's, unchanged
            assert m == ref_mounts[m["destination"]]
    assert ours["process"]["rlimits"] == reference["process"]["rlimits"]
    assert ours["linux"]["readonlyPaths"] == reference["linux"]["readonlyPaths"]
    assert set(reference["linux"]["maskedPaths"]) <= set(ours["linux"]["maskedPaths"])


def _static_busybox() -> Path:
    exe = shutil.which("busybox")
    if exe is None:
        pytest.skip("busybox is not installed (apt-get install -y busybox-static)")
    data = Path(exe).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        pytest.skip("busybox is not a 64-bit little-endian ELF")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP: dynamically linked
            pytest.skip("busybox is dynamically linked (apt-get install -y busybox-static)")
    return Path(exe)


def test_crun_runs_a_container_from_the_generated_config(tmp_path):
    """The generated config.json, unchanged, given to real crun (as the machine's init does:
    --cgroup-manager=disabled, a tmpfs at /sys/fs/cgroup, a state directory on the side)."""
    crun = _crun()
    busybox = _static_busybox()
    if os.geteuid() != 0:
        pytest.skip("running crun with namespaces needs root here")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")

    bundle = tmp_path / "bundle"
    rootfs = bundle / "rootfs"
    for d in ["bin", "etc", "work", "proc", "sys", "dev", "tmp"]:
        (rootfs / d).mkdir(parents=True)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in ["sh", "id", "env", "pwd", "hostname", "cat", "touch", "true", "echo", "stat"]:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_bytes(PASSWD)
    (rootfs / "etc" / "group").write_bytes(GROUP)

    script = ("id -u; id -g; id -G; pwd; hostname; echo $GREETING; echo $HOME; "
              "touch /data/ok && echo data-writable; stat -c %u:%g /data; "
              "cat /proc/self/mountinfo | while read a b c d mp rest; do echo mnt:$mp; done")
    cfg = convert(
        {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sh", "-c"], "Cmd": ["exit 1"], "User": "app",
         "WorkingDir": "/work", "Volumes": {"/data": {}}},
        Overrides(cmd=[script], env={"GREETING": "hello"}),
    )
    (bundle / "config.json").write_text(json.dumps(cfg))
    state = tmp_path / "state"
    state.mkdir()
    inner = (f"mount -t tmpfs none /sys/fs/cgroup && exec {crun} --cgroup-manager=disabled "
             f"--root {state} run --bundle {bundle} cmbuild-test-{os.getpid()}")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", inner],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr and "unshare" in proc.stderr:
        pytest.skip(f"this host does not allow mount namespaces: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:9] == ["1000", "1000", "1000 10 29", "/work", "cartesi", "hello", "/home/app",
                         "data-writable", "1000:1000"]
    mounts = {line[4:] for line in lines[9:]}
    assert {"/", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/data"} <= mounts
