"""cmbuild.debian: the host's mirror, pinned .deb downloads into the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmbuild import debian
from cmbuild.debian import DebPackage
from cmbuild.errors import CmbuildError
from cmbuild.store import Store

SUITE, ARCH = "trixie", "riscv64"


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


# ----- mirror from apt configuration (no network) ------------------------------------------

DEB822 = """\
# security first: must not be taken
Types: deb
URIs: http://security.example.test/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
# a comment inside the stanza
URIs: http://mirror.example.test/debian/
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_mirror_from_deb822(tmp_path: Path) -> None:
    write(tmp_path, "etc/apt/sources.list.d/debian.sources", DEB822)
    write(tmp_path, "etc/os-release", 'NAME="Debian"\nVERSION_CODENAME=bookworm\n')
    assert debian.host_mirror(tmp_path, env={}) == "http://mirror.example.test/debian"


def test_mirror_from_one_line(tmp_path: Path) -> None:
    write(tmp_path, "etc/apt/sources.list",
          "# deb http://commented.example.test/debian bookworm main\n"
          "deb [arch=amd64 signed-by=/x.gpg] http://sec.example.test/debian-security "
          "bookworm-security main\n"
          "deb-src http://src.example.test/debian bookworm main\n"
          "deb [ arch=amd64 ] http://one.example.test/debian bookworm main non-free\n")
    assert debian.host_mirror(tmp_path, codename="bookworm", env={}) == \
        "http://one.example.test/debian"


def test_mirror_skips_disabled_other_codenames_and_other_components(tmp_path: Path) -> None:
    write(tmp_path, "etc/apt/sources.list.d/a.sources",
          "Enabled: no\nTypes: deb\nURIs: http://off.example.test/debian\n"
          "Suites: bookworm\nComponents: main\n\n"
          "Types: deb\nURIs: http://old.example.test/debian\nSuites: bullseye\nComponents: main\n\n"
          "Types: deb\nURIs: http://contrib.example.test/debian\nSuites: bookworm\n"
          "Components: contrib\n")
    write(tmp_path, "etc/apt/sources.list.d/b.list.disabled",
          "deb http://disabled.example.test/debian bookworm main\n")
    with pytest.raises(CmbuildError, match="no apt source.*bookworm main") as e:
        debian.host_mirror(tmp_path, codename="bookworm", env={})
    assert debian.MIRROR_ENV in str(e.value)
    write(tmp_path, "etc/apt/sources.list.d/c.list",
          "deb http://on.example.test/debian bookworm main\n")
    assert debian.host_mirror(tmp_path, codename="bookworm", env={}) == \
        "http://on.example.test/debian"


def test_mirror_env_overrides(tmp_path: Path) -> None:
    env = {debian.MIRROR_ENV: "http://env.example.test/debian/"}
    assert debian.host_mirror(tmp_path, env=env) == "http://env.example.test/debian"


def test_mirror_needs_a_codename(tmp_path: Path) -> None:
    with pytest.raises(CmbuildError, match="codename"):
        debian.host_mirror(tmp_path, env={})


def test_this_host_has_a_mirror() -> None:
    assert debian.host_mirror().startswith(("http://", "https://", "file:"))


def test_deb_package_is_checked() -> None:
    with pytest.raises(CmbuildError, match="hello 1.0.*64 lower-case hex"):
        DebPackage("hello", "1.0", "abc")
    with pytest.raises(CmbuildError, match="not a Debian package name"):
        DebPackage("Hello World", "1.0", "0" * 64)
    p = DebPackage("hello", "2.10-5", "a" * 64)
    assert p.digest == "sha256:" + "a" * 64 and str(p) == "hello=2.10-5"


# ----- real downloads ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, DebPackage]:
    store = Store(tmp_path_factory.mktemp("debian-store"))
    return store, debian.lookup(store, "hello", suite=SUITE, arch=ARCH)


@pytest.mark.slow
def test_lookup_gives_a_pin(hello: tuple[Store, DebPackage]) -> None:
    _store, pkg = hello
    assert pkg.name == "hello" and pkg.version and len(pkg.sha256) == 64
    with pytest.raises(CmbuildError, match="no-such-package-xyz not found"):
        debian.lookup(_store, "no-such-package-xyz", suite=SUITE, arch=ARCH)


@pytest.mark.slow
def test_tampered_deb_is_refused_and_nothing_stored(hello: tuple[Store, DebPackage],
                                                    tmp_path: Path) -> None:
    store, good = hello
    bad = DebPackage(good.name, good.version, "0" * 64)
    before = store.all_objects()
    with pytest.raises(CmbuildError) as e:
        debian.fetch_debs(store, [bad], suite=SUITE, arch=ARCH)
    msg = str(e.value)
    assert f"package hello {good.version}" in msg
    assert "0" * 64 in msg and good.sha256 in msg  # expected and actual
    assert store.all_objects() == before
    assert not any(store.tmp.iterdir())


@pytest.mark.slow
def test_fetch_once_then_from_the_store(hello: tuple[Store, DebPackage], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    store, pkg = hello
    got = debian.fetch_debs(store, [pkg], suite=SUITE, arch=ARCH)
    assert got == {"hello": pkg.digest}
    assert store.verify(pkg.digest)

    def no_apt(*a: object, **k: object) -> None:
        raise AssertionError("apt must not run for a .deb already in the store")
    monkeypatch.setattr(debian, "_run", no_apt)
    monkeypatch.setattr(debian, "apt_index", no_apt)
    assert debian.fetch_debs(store, [pkg], suite=SUITE, arch=ARCH) == {"hello": pkg.digest}
    monkeypatch.undo()

    debian.extract_deb(store.object_path(pkg.digest), tmp_path / "x")
    assert (tmp_path / "x/usr/bin/hello").is_file()


@pytest.mark.slow
def test_version_the_mirror_no_longer_serves(hello: tuple[Store, DebPackage]) -> None:
    store, good = hello
    gone = DebPackage("hello", "0.0.1-1", "1" * 64)
    with pytest.raises(CmbuildError, match="pins hello 0.0.1-1, a version the mirror no "
                                           "longer serves") as e:
        debian.fetch_debs(store, [gone], suite=SUITE, arch=ARCH)
    assert good.version in str(e.value)  # what it serves now
