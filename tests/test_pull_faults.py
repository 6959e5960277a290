"""pull through a fault-injecting proxy in front of a real registry: broken connections,
503s, corrupt blobs and redirects to blob storage on another host."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from cmbuild.errors import CmbuildError
from cmbuild.oci.flatten import LayerInflater
from cmbuild.oci.image import Descriptor
from cmbuild.oci.pull import pull
from cmbuild.store import Store

from imagebuild import Image, Layer, Layout, make_image, make_layer, sha
from registry_fixtures import (BASIC_PASSWORD, BASIC_USER, BlobHost, Fault, FaultProxy,
                               Registry, isolated_docker_config)  # noqa: F401

pytestmark = pytest.mark.usefixtures("isolated_docker_config")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def big_layer(seed: bytes) -> Layer:
    # incompressible enough to make a blob of a few hundred KiB
    return make_layer({"data/blob": os.urandom(300_000) + seed}, how="gzip")


def pushed(reg: Registry, tmp: Path, repo: str) -> Image:
    image = make_image([big_layer(repo.encode()), make_layer({"small": repo.encode()})])
    layout = Layout(tmp / "layout")
    layout.add_image(image, tag="1")
    reg.push(layout.root, "1", repo)
    return image


@pytest.fixture
def proxy(pull_registry: Registry) -> Iterator[FaultProxy]:
    p = FaultProxy(pull_registry.port)
    yield p
    p.close()


def test_cut_connection_is_resumed_with_range(pull_registry: Registry, proxy: FaultProxy,
                                              tmp_path: Path, store: Store) -> None:
    image = pushed(pull_registry, tmp_path, "faults/cut")
    layer = image.layers[0]
    proxy.faults.append(Fault(f"/blobs/{layer.digest}", "cut", after=100_000))
    rec = store.read_json(pull(store, ref=f"{proxy.host}/faults/cut:1", digest=image.digest,
                               path=None, progress=False))
    assert rec["layers"][0]["digest"] == layer.digest
    assert store.object_path(layer.digest).read_bytes() == layer.blob
    gets = proxy.requests_for(f"/blobs/{layer.digest}")
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].status == 206
    resumed_at = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 100_000


def test_503_then_success_honours_retry_after(pull_registry: Registry, proxy: FaultProxy,
                                              tmp_path: Path, store: Store) -> None:
    image = pushed(pull_registry, tmp_path, "faults/busy")
    proxy.faults.append(Fault(f"/manifests/{image.digest}", "status", code=503,
                              retry_after="1"))
    proxy.faults.append(Fault(f"/blobs/{image.layers[1].digest}", "status", code=429,
                              retry_after="1"))
    start = time.monotonic()
    rec = store.read_json(pull(store, ref=f"{proxy.host}/faults/busy:1", digest=image.digest,
                               path=None, progress=False))
    assert time.monotonic() - start >= 2.0  # waited as told, twice
    assert rec["manifest"] == image.digest
    assert [s.status for s in proxy.requests_for(f"/manifests/{image.digest}")] == [503, 200]
    assert [s.status for s in proxy.requests_for(f"/blobs/{image.layers[1].digest}")] == [
        429, 200]


def test_persistent_503_gives_up(pull_registry: Registry, proxy: FaultProxy,
                                 tmp_path: Path, store: Store) -> None:
    image = pushed(pull_registry, tmp_path, "faults/down")
    proxy.faults.append(Fault(f"/manifests/{image.digest}", "status", code=503, times=100,
                              retry_after="0"))
    with pytest.raises(CmbuildError, match="HTTP 503"):
        pull(store, ref=f"{proxy.host}/faults/down:1", digest=image.digest, path=None,
             progress=False)
    assert len(proxy.requests_for(f"/manifests/{image.digest}")) == 6  # bounded


def test_corrupt_blob_is_refused_and_not_stored(pull_registry: Registry, proxy: FaultProxy,
                                                tmp_path: Path, store: Store) -> None:
    image = pushed(pull_registry, tmp_path, "faults/corrupt")
    layer = image.layers[0]
    proxy.faults.append(Fault(f"/blobs/{layer.digest}", "corrupt"))
    with pytest.raises(CmbuildError, match=f"blob {layer.digest} does not match its digest"):
        pull(store, ref=f"{proxy.host}/faults/corrupt:1", digest=image.digest, path=None,
             progress=False)
    assert not store.has(layer.digest)
    assert list(store.tmp.iterdir()) == []
    # a corrupt manifest is refused too (in a store that does not hold it yet)
    fresh = Store(tmp_path / "fresh")
    proxy.faults.append(Fault(f"/manifests/{image.digest}", "corrupt"))
    with pytest.raises(CmbuildError, match=f"manifest {image.digest} does not match"):
        pull(fresh, ref=f"{proxy.host}/faults/corrupt:1", digest=image.digest, path=None,
             progress=False)
    assert fresh.all_objects() == []
    # and once the proxy behaves, the pull succeeds
    pull(store, ref=f"{proxy.host}/faults/corrupt:1", digest=image.digest, path=None,
         progress=False)
    assert store.object_path(layer.digest).read_bytes() == layer.blob


def test_redirect_to_another_host_drops_authorization(
        pull_registry_basic: Registry, tmp_path: Path, store: Store,
        monkeypatch: pytest.MonkeyPatch) -> None:
    image = pushed(pull_registry_basic, tmp_path, "faults/redirect")
    layer = image.layers[0]
    monkeypatch.setenv("CMBUILD_REGISTRY_USER", BASIC_USER)
    monkeypatch.setenv("CMBUILD_REGISTRY_PASSWORD", BASIC_PASSWORD)
    blobs = BlobHost({layer.digest: layer.blob})
    proxy = FaultProxy(pull_registry_basic.port)
    try:
        proxy.faults.append(Fault(f"/blobs/{layer.digest}", "redirect",
                                  target=f"http://localhost:{blobs.port}/storage"))
        rec = store.read_json(pull(store, ref=f"{proxy.host}/faults/redirect:1",
                                   digest=image.digest, path=None, progress=False))
    finally:
        proxy.close()
        blobs.close()
    assert rec["layers"][0]["digest"] == layer.digest
    assert store.object_path(layer.digest).read_bytes() == layer.blob
    redirected = proxy.requests_for(f"/blobs/{layer.digest}")
    assert [s.status for s in redirected] == [307]
    assert redirected[0].headers["Authorization"].startswith("Basic ")
    assert len(blobs.log) == 1 and blobs.log[0].path.endswith(layer.digest)
    assert "Authorization" not in blobs.log[0].headers
    assert sha(layer.blob) == layer.digest


def _inflaters(tmp: Path) -> tuple[dict[str, LayerInflater], Callable[[Descriptor], LayerInflater]]:
    made: dict[str, LayerInflater] = {}

    def sink(desc: Descriptor) -> LayerInflater:
        made[desc.digest] = LayerInflater(tmp / f"{desc.digest[7:]}.tar", 1 << 30)
        return made[desc.digest]
    return made, sink


def test_layers_are_inflated_while_downloaded_across_a_resumed_download(
        pull_registry: Registry, proxy: FaultProxy, tmp_path: Path, store: Store) -> None:
    """What the unpack stage gets from the pull (a cold `cmbuild app` inflates the layers as
    they download): each layer's uncompressed tar, whose sha256 is its diff_id, even when
    the download broke and was resumed with Range."""
    image = pushed(pull_registry, tmp_path, "faults/inflate")
    proxy.faults.append(Fault(f"/blobs/{image.layers[0].digest}", "cut", after=100_000))
    made, sink = _inflaters(tmp_path)
    pull(store, ref=f"{proxy.host}/faults/inflate:1", digest=image.digest, path=None,
         progress=False, sink=sink)
    assert len(proxy.requests_for(f"/blobs/{image.layers[0].digest}")) == 2
    assert set(made) == {layer.digest for layer in image.layers}
    for layer in image.layers:
        tar = made[layer.digest].result()
        assert tar is not None and sha(tar.read_bytes()) == layer.diff_id


def test_a_corrupt_blob_leaves_no_inflated_tar(pull_registry: Registry, proxy: FaultProxy,
                                               tmp_path: Path, store: Store) -> None:
    image = pushed(pull_registry, tmp_path, "faults/inflate-corrupt")
    layer = image.layers[0]
    proxy.faults.append(Fault(f"/blobs/{layer.digest}", "corrupt"))
    made, sink = _inflaters(tmp_path)
    with pytest.raises(CmbuildError, match="does not match its digest"):
        pull(store, ref=f"{proxy.host}/faults/inflate-corrupt:1", digest=image.digest, path=None,
             progress=False, sink=sink)
    assert made[layer.digest].result() is None
    assert not (tmp_path / f"{layer.digest[7:]}.tar").exists()
