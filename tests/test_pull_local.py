"""pull from local sources: OCI layout directories and docker save tarballs (both forms)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.oci.dockersave import TarFiles
from cmbuild.oci.pull import pull
from cmbuild.store import Store, sha256_file

from imagebuild import (Image, Layout, docker_save_legacy, docker_save_oci, make_image,
                        make_layer, sha)

ATTESTATION = {"mediaType": "application/vnd.oci.image.manifest.v1+json",
               "platform": {"architecture": "unknown", "os": "unknown"},
               "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def assert_image_stored(store: Store, record: dict, image: Image) -> None:
    assert record["manifest"] == image.digest
    assert record["config"] == sha(image.config)
    assert record["diff_ids"] == [x.diff_id for x in image.layers]
    assert [x["digest"] for x in record["layers"]] == [x.digest for x in image.layers]
    for digest, data in image.blobs().items():
        assert store.object_path(digest).read_bytes() == data


def test_layout_two_refs(tmp_path: Path, store: Store) -> None:
    base = make_layer({"etc/os-release": b"base\n"})
    one = make_image([base, make_layer({"app/one": b"1"})])
    two = make_image([base, make_layer({"app/two": b"2"}, how="zstd")])
    layout = Layout(tmp_path / "layout")
    layout.add_image(one, tag="one")
    layout.add_image(two, tag="two")

    rec_digest = pull(store, ref="two", digest=None, path=layout.root, progress=False)
    record = store.read_json(rec_digest)
    assert_image_stored(store, record, two)
    assert record["index"] is None
    assert record["platform"] == "linux/riscv64"
    assert record["source"] == {"ref": "two", "digest": two.digest}
    assert record["layers"][1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert str(tmp_path) not in json.dumps(record)

    # by digest, same record; without a ref or digest the choice is ambiguous
    by_digest = pull(store, ref=None, digest=two.digest, path=layout.root, progress=False)
    assert store.read_json(by_digest)["manifest"] == two.digest
    with pytest.raises(CmbuildError, match="holds 2 images"):
        pull(store, ref=None, digest=None, path=layout.root, progress=False)
    with pytest.raises(CmbuildError, match="no image named 'three'.*one, two"):
        pull(store, ref="three", digest=None, path=layout.root, progress=False)


def test_layout_record_is_the_same_from_anywhere(tmp_path: Path) -> None:
    image = make_image([make_layer({"a": b"a"})])
    digests = []
    for where in ("x", "y"):
        layout = Layout(tmp_path / where / "layout")
        layout.add_image(image, tag="latest")
        digests.append(pull(Store(tmp_path / where / "store"), ref="latest", digest=None,
                            path=layout.root, progress=False))
    assert digests[0] == digests[1]


def test_layout_index_picks_riscv64(tmp_path: Path, store: Store) -> None:
    common = make_layer({"etc/hosts": b"h"})
    amd = make_image([common, make_layer({"bin/x": b"amd64"})], arch="amd64")
    rv = make_image([common, make_layer({"bin/x": b"riscv64"})], arch="riscv64")
    layout = Layout(tmp_path / "layout")
    attestation = dict(ATTESTATION, digest=amd.digest, size=len(amd.manifest))
    index_digest = layout.add_index([amd, rv], tag="multi", extra=[attestation])

    record = store.read_json(pull(store, ref="multi", digest=None, path=layout.root,
                                  progress=False))
    assert record["index"] == index_digest
    assert record["source"]["digest"] == index_digest
    assert_image_stored(store, record, rv)
    assert store.has(index_digest)
    assert not store.has(amd.layers[1].digest)  # the other platform is never read


def test_layout_amd64_only_is_refused(tmp_path: Path, store: Store) -> None:
    amd = make_image([make_layer({"x": b"x"})], arch="amd64")
    layout = Layout(tmp_path / "layout")
    layout.add_index([amd], tag="amd")
    layout.add_image(amd, tag="single")
    with pytest.raises(CmbuildError, match=r"no linux/riscv64 manifest \(it has: linux/amd64\)"):
        pull(store, ref="amd", digest=None, path=layout.root, progress=False)
    # a lone manifest has no platform: the config says amd64
    with pytest.raises(CmbuildError, match="the image is for linux/amd64, not linux/riscv64"):
        pull(store, ref="single", digest=None, path=layout.root, progress=False)


def test_config_must_match_the_index_platform(tmp_path: Path, store: Store) -> None:
    liar = make_image([make_layer({"x": b"x"})], arch="riscv64", config_arch="arm64")
    layout = Layout(tmp_path / "layout")
    layout.add_index([liar], tag="liar")
    with pytest.raises(CmbuildError, match="linux/arm64, not linux/riscv64"):
        pull(store, ref="liar", digest=None, path=layout.root, progress=False)


def test_layout_variant_and_other_platform(tmp_path: Path, store: Store) -> None:
    v7 = make_image([make_layer({"v": b"7"})], arch="arm", variant="v7")
    v6 = make_image([make_layer({"v": b"6"})], arch="arm", variant="v6")
    layout = Layout(tmp_path / "layout")
    layout.add_index([v6, v7], tag="arm")
    record = store.read_json(pull(store, ref="arm", digest=None, path=layout.root,
                                  platform="linux/arm/v7", progress=False))
    assert record["manifest"] == v7.digest and record["platform"] == "linux/arm/v7"


def test_layout_corrupt_layer_stores_nothing(tmp_path: Path, store: Store) -> None:
    good = make_layer({"data": b"x" * 5000})
    image = make_image([good])
    layout = Layout(tmp_path / "layout")
    layout.add_image(image, tag="t")
    blob = layout.root / "blobs" / "sha256" / good.digest[7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(CmbuildError, match=f"blob {good.digest} does not match its digest"):
        pull(store, ref="t", digest=None, path=layout.root, progress=False)
    assert not store.has(good.digest)
    assert list(store.tmp.iterdir()) == []


def test_docker_save_legacy(tmp_path: Path, store: Store) -> None:
    layers = [make_layer({"etc/a": b"a"}, how=None), make_layer({"etc/b": b"b"}, how=None)]
    image = make_image(layers)
    tarball = tmp_path / "legacy.tar"
    docker_save_legacy(tarball, image, "example.com/app:1.0")
    before = sha256_file(tarball)

    record = store.read_json(pull(store, ref="example.com/app:1.0", digest=None,
                                  path=tarball, progress=False))
    assert record["config"] == sha(image.config)
    assert record["diff_ids"] == [x.diff_id for x in layers]
    assert [x["digest"] for x in record["layers"]] == [x.diff_id for x in layers]
    assert {x["mediaType"] for x in record["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar"}
    for layer in layers:
        assert store.object_path(layer.diff_id).read_bytes() == layer.blob
    manifest = store.read_json(record["manifest"])
    assert manifest["config"]["digest"] == record["config"]
    assert [x["digest"] for x in manifest["layers"]] == record["diff_ids"]
    assert sha256_file(tarball) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legacy.tar", "store"]

    with pytest.raises(CmbuildError, match="no image tagged 'other:1'.*example.com/app:1.0"):
        pull(store, ref="other:1", digest=None, path=tarball, progress=False)


def test_docker_save_legacy_repeated_layer_is_a_symlink(tmp_path: Path, store: Store) -> None:
    empty = make_layer({}, how=None)
    image = make_image([empty, make_layer({"x": b"x"}, how=None), empty])
    tarball = tmp_path / "legacy.tar"
    docker_save_legacy(tarball, image, "app:1")
    record = store.read_json(pull(store, ref="app:1", digest=None, path=tarball,
                                  progress=False))
    assert [x["digest"] for x in record["layers"]] == [x.diff_id for x in image.layers]
    # the link is read through (within the tar) when the layer is not in the store yet
    files = TarFiles(tarball)
    linked = json.loads(files.tar.extractfile("manifest.json").read())[0]["Layers"][2]
    assert files.tar.getmember(linked).issym()
    with files.open(linked) as f:
        assert f.read() == empty.blob
    files.close()


def test_docker_save_legacy_layer_must_match_diff_id(tmp_path: Path, store: Store) -> None:
    layer = make_layer({"etc/a": b"a"}, how=None)
    image = make_image([layer])
    image.layers[0] = type(layer)(layer.blob.replace(b"etc/a", b"etc/b"), layer.diff_id,
                                  layer.media_type)
    tarball = tmp_path / "legacy.tar"
    docker_save_legacy(tarball, image, "app:1")
    with pytest.raises(CmbuildError, match="does not match its digest"):
        pull(store, ref="app:1", digest=None, path=tarball, progress=False)
    assert not store.has(sha(image.layers[0].blob))


def test_docker_save_oci_form(tmp_path: Path, store: Store) -> None:
    image = make_image([make_layer({"etc/a": b"a"}, how=None),
                        make_layer({"etc/b": b"b"}, how=None)])
    tarball = tmp_path / "new.tar"
    docker_save_oci(tarball, image, "app:2.0")
    for ref in ("app:2.0", "docker.io/library/app:2.0", None):
        record = store.read_json(pull(store, ref=ref, digest=None, path=tarball,
                                      progress=False))
        assert_image_stored(store, record, image)
        assert record["source"]["digest"] == image.digest


def test_docker_save_amd64_is_refused(tmp_path: Path, store: Store) -> None:
    image = make_image([make_layer({"a": b"a"}, how=None)], arch="amd64")
    for writer in (docker_save_legacy, docker_save_oci):
        tarball = tmp_path / f"{writer.__name__}.tar"
        writer(tarball, image, "app:1")
        with pytest.raises(CmbuildError, match="linux/amd64, not linux/riscv64"):
            pull(store, ref=None, digest=None, path=tarball, progress=False)
    assert not store.has(image.layers[0].digest)


def test_missing_path(tmp_path: Path, store: Store) -> None:
    with pytest.raises(CmbuildError, match="no such file"):
        pull(store, ref=None, digest=None, path=tmp_path / "nope", progress=False)
