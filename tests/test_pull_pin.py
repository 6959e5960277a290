"""pin_config rewrites only the digest in [image]; references parse as Docker does."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.oci.reference import is_loopback, parse_reference
from cmbuild.pin import pin_config

OLD = "sha256:" + "a" * 64
NEW = "sha256:" + "b" * 64

CONFIG = f"""# cartesi.toml for the hello example
# (comments must survive pinning)

[image]
# where the image comes from
ref = "registry.example.com/hello:1.0"   # a tag: mutable
digest = "{OLD}"  # pinned by `cmbuild pin`
platform = "linux/riscv64"

[machine]
ram = "128Mi"    # enough for hello
# digest = "not this one"
entrypoint = ["/hello"]
"""


def test_pin_rewrites_only_the_digest(tmp_path: Path) -> None:
    path = tmp_path / "cartesi.toml"
    path.write_text(CONFIG)
    pin_config(path, NEW)
    assert path.read_text() == CONFIG.replace(f'digest = "{OLD}"', f'digest = "{NEW}"')


def test_pin_adds_the_digest_after_ref(tmp_path: Path) -> None:
    without = CONFIG.replace(f'digest = "{OLD}"  # pinned by `cmbuild pin`\n', "")
    path = tmp_path / "cartesi.toml"
    path.write_text(without)
    pin_config(path, NEW)
    assert path.read_text() == without.replace(
        '# a tag: mutable\n', f'# a tag: mutable\ndigest = "{NEW}"\n')


def test_pin_refuses_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "cartesi.toml"
    path.write_text('[machine]\nram = "1"\n')
    with pytest.raises(CmbuildError, match=r"no \[image\] table"):
        pin_config(path, NEW)
    with pytest.raises(CmbuildError, match="expected sha256"):
        pin_config(path, "sha256:xyz")
    assert path.read_text() == '[machine]\nram = "1"\n'


@pytest.mark.parametrize("text,registry,repository,tag,digest", [
    ("alpine:3.20", "registry-1.docker.io", "library/alpine", "3.20", None),
    ("docker.io/x/y", "registry-1.docker.io", "x/y", "latest", None),
    ("index.docker.io/library/busybox:1", "registry-1.docker.io", "library/busybox", "1", None),
    ("localhost:5000/a/b:t", "localhost:5000", "a/b", "t", None),
    ("127.0.0.1:5000/r@" + OLD, "127.0.0.1:5000", "r", None, OLD),
    ("ghcr.io/o/r:v1@" + OLD, "ghcr.io", "o/r", "v1", OLD),
])
def test_parse_reference(text: str, registry: str, repository: str, tag: str | None,
                         digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry, repository, tag, digest)


@pytest.mark.parametrize("text", ["", "Alpine", "a b", "x:/y", "alpine@sha256:12"])
def test_parse_reference_refuses(text: str) -> None:
    with pytest.raises(CmbuildError):
        parse_reference(text)


def test_loopback() -> None:
    assert is_loopback("localhost:5000") and is_loopback("127.0.0.5:1")
    assert is_loopback("[::1]:5000") and not is_loopback("example.com:5000")
    assert not is_loopback("10.0.0.1:5000")
