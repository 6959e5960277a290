"""pull from a real registry (Debian's docker-registry on loopback): anonymous, basic auth,
token auth, multi-arch indexes, compressed layers, shared layers, pinning."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.oci.pull import pull, resolve_digest
from cmbuild.store import Store

from imagebuild import Image, Layout, make_image, make_layer, sha
from registry_fixtures import (BASIC_PASSWORD, BASIC_USER, TOKEN_PASSWORD, TOKEN_USER,
                               FaultProxy, Registry, isolated_docker_config,  # noqa: F401
                               write_docker_config)

pytestmark = pytest.mark.usefixtures("isolated_docker_config")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def push_image(reg: Registry, tmp: Path, image: Image, repo: str, tag: str) -> None:
    layout = Layout(tmp / f"layout-{repo.replace('/', '-')}-{tag}")
    layout.add_image(image, tag=tag)
    reg.push(layout.root, tag, repo)


def check_record(store: Store, record: dict, image: Image) -> None:
    assert record["manifest"] == image.digest
    assert record["config"] == sha(image.config)
    assert record["diff_ids"] == [x.diff_id for x in image.layers]
    assert record["layers"] == [{"digest": x.digest, "mediaType": x.media_type,
                                 "size": len(x.blob)} for x in image.layers]
    for digest, data in image.blobs().items():
        assert store.object_path(digest).read_bytes() == data


def test_multiarch_index_gzip_and_zstd(pull_registry: Registry, tmp_path: Path,
                                       store: Store) -> None:
    base = make_layer({"etc/os-release": b"ID=test\n"}, how="gzip")
    rv = make_image([base, make_layer({"bin/app": b"rv" * 1000}, how="zstd")])
    amd = make_image([base, make_layer({"bin/app": b"x86" * 1000})], arch="amd64")
    layout = Layout(tmp_path / "layout")
    index = layout.add_index([amd, rv], tag="v1")
    pull_registry.push(layout.root, "v1", "multi/app", all_images=True)

    ref = f"{pull_registry.host}/multi/app:v1"
    assert resolve_digest(ref, "linux/riscv64") == index
    record = store.read_json(pull(store, ref=ref, digest=index, path=None, progress=False))
    assert record["index"] == index
    assert record["source"] == {"ref": ref, "digest": index}
    check_record(store, record, rv)
    assert store.has(index)
    assert not store.has(amd.layers[1].digest)
    # the same image pulled by its manifest digest: index null, same layers
    by_manifest = store.read_json(pull(store, ref=ref, digest=rv.digest, path=None,
                                       progress=False))
    assert by_manifest["index"] is None and by_manifest["layers"] == record["layers"]


def test_amd64_only_is_refused(pull_registry: Registry, tmp_path: Path, store: Store) -> None:
    amd = make_image([make_layer({"bin/app": b"amd"})], arch="amd64")
    layout = Layout(tmp_path / "layout")
    index = layout.add_index([amd], tag="amd")
    pull_registry.push(layout.root, "amd", "multi/amdonly", all_images=True)
    ref = f"{pull_registry.host}/multi/amdonly:amd"
    with pytest.raises(CmbuildError, match=r"no linux/riscv64 manifest \(it has: linux/amd64\)"):
        pull(store, ref=ref, digest=index, path=None, progress=False)
    with pytest.raises(CmbuildError, match="no linux/riscv64 manifest"):
        resolve_digest(ref, "linux/riscv64")
    assert store.all_objects() == [index]  # only the index was read


def test_shared_base_layer_is_fetched_once(pull_registry: Registry, tmp_path: Path,
                                           store: Store) -> None:
    base = make_layer({"lib/libc.so": b"libc" * 4000})
    first = make_image([base, make_layer({"app/first": b"1"})])
    second = make_image([base, make_layer({"app/second": b"2"})])
    push_image(pull_registry, tmp_path, first, "shared/first", "1")
    push_image(pull_registry, tmp_path, second, "shared/second", "1")
    proxy = FaultProxy(pull_registry.port)
    try:
        pull(store, ref=f"{proxy.host}/shared/first:1", digest=first.digest, path=None,
             progress=True)  # stderr is not a terminal here: quiet
        assert len(proxy.requests_for(f"/blobs/{base.digest}")) == 1
        rec = store.read_json(pull(store, ref=f"{proxy.host}/shared/second:1",
                                   digest=second.digest, path=None, progress=False))
        check_record(store, rec, second)
        blob_gets = [s.path for s in proxy.log if "/shared/second/blobs/" in s.path]
        assert sorted(blob_gets) == sorted([f"/v2/shared/second/blobs/{sha(second.config)}",
                                            f"/v2/shared/second/blobs/{second.layers[1].digest}"])
        # pulling a pinned image again needs no request at all, and gives the same record
        n = len(proxy.log)
        again = pull(store, ref=f"{proxy.host}/shared/second:1", digest=second.digest,
                     path=None, progress=False)
        assert store.read_json(again) == rec
        assert proxy.log[n:] == []
    finally:
        proxy.close()


def test_unpinned_ref(pull_registry: Registry, tmp_path: Path, store: Store,
                      capsys: pytest.CaptureFixture[str]) -> None:
    image = make_image([make_layer({"x": b"x"})])
    push_image(pull_registry, tmp_path, image, "pin/me", "latest")
    ref = f"{pull_registry.host}/pin/me:latest"
    with pytest.raises(CmbuildError, match="not pinned"):
        pull(store, ref=ref, digest=None, path=None, progress=False)
    rec = store.read_json(pull(store, ref=ref, digest=None, path=None, allow_unpinned=True,
                               progress=False))
    assert rec["source"] == {"ref": ref, "digest": image.digest}
    assert f"using {image.digest}" in capsys.readouterr().err
    assert resolve_digest(ref, "linux/riscv64") == image.digest
    # the digest in the ref itself pins it
    rec2 = pull(store, ref=f"{pull_registry.host}/pin/me@{image.digest}", digest=None,
                path=None, progress=False)
    assert store.read_json(rec2)["manifest"] == image.digest


def test_not_found_names_repository_and_tag(pull_registry: Registry, store: Store) -> None:
    with pytest.raises(CmbuildError, match=r"nothere/app:v9 was not found.*MANIFEST_UNKNOWN|"
                                           r"nothere/app:v9 was not found.*NAME_UNKNOWN"):
        resolve_digest(f"{pull_registry.host}/nothere/app:v9", "linux/riscv64")
    missing = "sha256:" + "0" * 64
    with pytest.raises(CmbuildError, match=f"nothere/app@{missing} was not found"):
        pull(store, ref=f"{pull_registry.host}/nothere/app:v9", digest=missing, path=None,
             progress=False)


def test_basic_auth(pull_registry_basic: Registry, tmp_path: Path, store: Store,
                    isolated_docker_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image([make_layer({"secret": b"s" * 100})])
    push_image(pull_registry_basic, tmp_path, image, "private/app", "1")
    ref = f"{pull_registry_basic.host}/private/app:1"

    with pytest.raises(CmbuildError, match="asks for credentials and none were found") as e:
        pull(store, ref=ref, digest=image.digest, path=None, progress=False)
    assert pull_registry_basic.host in str(e.value)

    write_docker_config(isolated_docker_config, f"http://{pull_registry_basic.host}",
                        BASIC_USER, BASIC_PASSWORD)
    rec = store.read_json(pull(store, ref=ref, digest=image.digest, path=None,
                               progress=False))
    check_record(store, rec, image)

    write_docker_config(isolated_docker_config, pull_registry_basic.host,
                        BASIC_USER, "wrong")
    with pytest.raises(CmbuildError, match="refused the credentials from .*config.json") as e:
        resolve_digest(ref, "linux/riscv64")
    assert pull_registry_basic.host in str(e.value) and "CMBUILD_REGISTRY_USER" in str(e.value)

    # the environment wins over the docker config
    monkeypatch.setenv("CMBUILD_REGISTRY_USER", BASIC_USER)
    monkeypatch.setenv("CMBUILD_REGISTRY_PASSWORD", BASIC_PASSWORD)
    assert resolve_digest(ref, "linux/riscv64") == image.digest
    monkeypatch.setenv("CMBUILD_REGISTRY_PASSWORD", "bad")
    with pytest.raises(CmbuildError, match=r"refused the credentials from the environment"):
        resolve_digest(ref, "linux/riscv64")


def test_token_auth(pull_registry_token: Registry, tmp_path: Path, store: Store,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    image = make_image([make_layer({"a": b"a" * 3000}), make_layer({"b": b"b"}, how="zstd")])
    push_image(pull_registry_token, tmp_path, image, "bob/app", "1")
    ref = f"{pull_registry_token.host}/bob/app:1"
    tokens = pull_registry_token.token_server
    assert tokens is not None

    with pytest.raises(CmbuildError, match="asks for credentials"):
        resolve_digest(ref, "linux/riscv64")

    monkeypatch.setenv("CMBUILD_REGISTRY_USER", TOKEN_USER)
    monkeypatch.setenv("CMBUILD_REGISTRY_PASSWORD", TOKEN_PASSWORD)
    n = len(tokens.issued)
    rec = store.read_json(pull(store, ref=ref, digest=image.digest, path=None,
                               progress=False))
    check_record(store, rec, image)
    issued = tokens.issued[n:]
    assert len(issued) == 1  # one token, reused for the manifest, config and both layers
    assert issued[0]["scope"] == "repository:bob/app:pull"

    # a token the registry no longer accepts is replaced (once) on its 401
    from cmbuild.oci.registry import RegistryClient
    client = RegistryClient(pull_registry_token.host)
    client.get_manifest("bob/app", "1")
    scope = client.auth.scope("bob/app")
    token, expiry = client.auth._tokens[scope]
    client.auth._tokens[scope] = ("not-a-valid-token", expiry)
    assert client.get_manifest("bob/app", "1")[2] == image.digest
    assert client.auth._tokens[scope][0] not in (token, "not-a-valid-token")
    # and one past its lifetime is fetched again before use
    client.auth._tokens[scope] = (client.auth._tokens[scope][0], 0.0)
    n = len(tokens.issued)
    client.get_manifest("bob/app", "1")
    assert len(tokens.issued) == n + 1

    # a repository the token server gives bob no access to
    with pytest.raises(CmbuildError, match="access to alice/app is denied"):
        resolve_digest(f"{pull_registry_token.host}/alice/app:1", "linux/riscv64")

    monkeypatch.setenv("CMBUILD_REGISTRY_PASSWORD", "wrong")
    with pytest.raises(CmbuildError, match="refused the credentials from the environment"):
        resolve_digest(ref, "linux/riscv64")


def test_docker_config_auth_field_is_base64(isolated_docker_config: Path) -> None:
    from cmbuild.oci.auth import find_credentials
    (isolated_docker_config / "config.json").write_text(
        '{"auths": {"https://index.docker.io/v1/": {"auth": "%s"}}}'
        % base64.b64encode(b"hub:pa:ss").decode())
    creds = find_credentials("registry-1.docker.io")
    assert creds is not None and (creds.username, creds.password) == ("hub", "pa:ss")
    assert find_credentials("ghcr.io") is None
