"""Stored machines as OCI artifacts: ``cmbuild push REF`` and ``cmbuild fetch REF@DIGEST DIR``.

A machine artifact (``artifactType`` ``application/vnd.cartesi.machine.v1``) has one layer per
file of the stored machine (``cartesi-machine --store``; see :mod:`cmbuild.oci.artifact` for the
encoding: modes kept, zeros compressed and restored as holes), a small config blob (JSON:
template hash, source image digest, emulator and cmbuild versions) and annotations:

* ``io.cartesi.machine.template-hash``: the root hash of the stored machine (``0x<64 hex>``);
* ``io.cartesi.cmbuild.image``: the digest of the source image's manifest;
* ``io.cartesi.cmbuild.lock``: the project's ``cartesi.lock``, which says how it was built.

``fetch`` verifies every blob and every file, then takes the machine's root hash twice: with
``cartesi-machine-stored-hash`` (which reads the stored hash tree) and recomputed from the
memory and drive contents alone (``cartesi-machine --load-config`` without the hash tree files:
the stored tree alone would not notice altered contents). Unless both are the annotated
template hash, the machine is refused and nothing is left in DIR. Output for scripts (the pushed digest, the fetched template hash) is the only thing on
standard output.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import __version__
from .errors import CmbuildError
from .store import Store

MACHINE_TYPE = "application/vnd.cartesi.machine.v1"
CONFIG_TYPE = "application/vnd.cartesi.machine.config.v1+json"
A_HASH = "io.cartesi.machine.template-hash"
A_IMAGE = "io.cartesi.cmbuild.image"
A_LOCK = "io.cartesi.cmbuild.lock"


def _say(msg: str) -> None:
    print(f"cmbuild: {msg}", file=sys.stderr, flush=True)


def _client(ref: Any, push: bool, insecure: bool = False) -> Any:
    from .oci.registry import RegistryClient
    return RegistryClient(ref.registry, insecure, push=push)


def push_machine(cfg: str | None, target: str, insecure: bool = False) -> int:
    """Publish the project's current snapshot at ``target`` (``registry/repo[:tag]``); print
    the manifest digest."""
    from .oci.artifact import prepare_object, push_artifact, transfer_bar
    from .oci.reference import parse_reference
    from .publish import read_lock, render_lock
    from .tasks import config_path, open_context
    ref = parse_reference(target)
    if ref.digest:
        raise CmbuildError("push names a tag (or just a repository), not a digest: the digest "
                           "is what push prints", where=target)
    path = config_path(cfg)
    ctx = open_context(path)   # (its remote cache is not asked: records only, and pointers)
    from .pipeline import NotBuilt
    try:
        rec = ctx.record("snapshot")
    except NotBuilt:   # an input of the snapshot has no output for this configuration
        rec = None
    if rec is None or not rec.meta.get("root_hash"):
        raise CmbuildError("there is no snapshot of the current configuration to push",
                           where=str(path), hint="run `cmbuild snapshot` first")
    lock = read_lock(ctx.project_dir)
    locked = lock.get("stages", {}).get("snapshot", {})
    if locked.get("output") != rec.output:
        raise CmbuildError("cartesi.lock does not record the current snapshot", where=str(path),
                           hint="run `cmbuild snapshot` first")
    image = ctx.image_record().get("manifest")
    from .machines import cartesi as cm
    version = ".".join(map(str, cm.installed_version() or ()))
    config = {"template_hash": rec.meta["root_hash"], "image": image, "emulator": version,
              "cmbuild": __version__}
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    annotations = {A_HASH: rec.meta["root_hash"], A_IMAGE: str(image), A_LOCK: render_lock(lock),
                   "io.cartesi.cmbuild.kind": "tree", "io.cartesi.cmbuild.version": __version__}
    client = _client(ref, push=True, insecure=insecure or ctx.project.image.insecure)
    with ctx.store.tmpdir("push-") as work:
        _say(f"packing the stored machine {rec.output[7:19]} (zstd where it pays)")
        blobs, kind, extras = prepare_object(ctx.store, rec.output, "image", work)
        if extras:
            annotations["io.cartesi.cmbuild.tree"] = json.dumps(extras, sort_keys=True)
        total = sum(b.desc["size"] for b in blobs)
        _say(f"pushing {len(blobs)} files ({total / 1e6:.1f} MB) to {ref.registry}/{ref.repository}")
        with transfer_bar("image ↑", total) as progress:
            digest, sent = push_artifact(client, ref.repository, ref.tag or "latest", blobs,
                                         MACHINE_TYPE, annotations, (CONFIG_TYPE, config_bytes),
                                         progress)
    _say(f"pushed {ref.registry}/{ref.repository}:{ref.tag or 'latest'}@{digest} "
         f"({sent / 1e6:.1f} MB sent); template hash {rec.meta['root_hash']}")
    print(digest, flush=True)
    return 0


def fetch_machine(source: str, dest: Path, insecure: bool = False) -> int:
    """Fetch a machine artifact by digest into ``dest`` (which must not exist, or be an empty
    folder), verified; print its template hash."""
    from .machines import cartesi as cm
    from .oci.artifact import copy_tree_out, fetch_object, get_artifact, transfer_bar
    from .oci.reference import parse_reference
    ref = parse_reference(source)
    if not ref.digest:
        raise CmbuildError("fetch takes a machine by digest: REGISTRY/REPOSITORY@sha256:...",
                           where=source, hint="`cmbuild push` prints the digest")
    dest = Path(dest).absolute()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CmbuildError("the destination exists and is not an empty folder", where=str(dest),
                           hint="name a new folder; nothing was fetched")
    client = _client(ref, push=False, insecure=insecure)
    doc, digest = get_artifact(client, ref.repository, ref.digest, MACHINE_TYPE)
    ann = doc.get("annotations") or {}
    want = ann.get(A_HASH)
    if not isinstance(want, str) or not want.startswith("0x"):
        raise CmbuildError("the artifact has no template hash annotation", where=source)
    cfg_desc = doc.get("config") or {}
    from .oci.image import Descriptor
    try:
        cfg = json.loads(client.get_blob_bytes(ref.repository, Descriptor(
            cfg_desc.get("mediaType", ""), cfg_desc["digest"], int(cfg_desc["size"]))))
    except (KeyError, TypeError, ValueError):
        raise CmbuildError("the artifact's config blob is not valid", where=source) from None
    if not isinstance(cfg, dict) or cfg.get("template_hash") != want:
        raise CmbuildError("the config blob and the annotation give different template hashes",
                           where=source, hint="the artifact was altered; nothing was kept")
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = sum(int(x.get("size", 0)) for x in doc["layers"])
    _say(f"fetching {len(doc['layers'])} files ({total / 1e6:.1f} MB) of {source}")
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.fetch-", dir=dest.parent))
    try:
        store = Store(scratch / "store")
        with transfer_bar(f"{dest.name} ↓", total) as progress:
            tree = fetch_object(client, ref.repository, doc, store, None, source, progress)
        got = cm.checked_hash(store.object_path(tree))
        if got != want:
            raise CmbuildError(f"the stored machine's root hash is {got}, the artifact says {want}",
                               where=source, hint="the machine was refused; nothing was kept")
        staged = scratch / "machine"
        copy_tree_out(store.object_path(tree), staged)
        if dest.exists():
            dest.rmdir()
        os.rename(staged, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _say(f"fetched {source} into {dest}: every blob and file verified, template hash {want} "
         "(stored hash tree and contents)")
    image = cfg.get("image")
    if image:
        _say(f"built from image {image} with cmbuild {cfg.get('cmbuild')}, emulator {cfg.get('emulator')}")
    print(want, flush=True)
    return 0


def main(args: list[str], cfg: str | None) -> int:
    """``cmbuild push REF`` / ``cmbuild fetch REF@DIGEST DIR`` (``--insecure``: HTTPS without
    certificate checks, then HTTP, for a registry that is not on loopback)."""
    insecure = "--insecure" in args
    words = [a for a in args if a != "--insecure"]
    unknown = [a for a in words[1:] if a.startswith("-")]
    try:
        if unknown:
            raise CmbuildError(f"unknown option {unknown[0]}")
        if words[0] == "push":
            if len(words) != 2:
                raise CmbuildError("usage: cmbuild push REGISTRY/REPOSITORY[:TAG]")
            return push_machine(cfg, words[1], insecure)
        if len(words) != 3:
            raise CmbuildError("usage: cmbuild fetch REGISTRY/REPOSITORY@sha256:... DIR")
        return fetch_machine(words[1], Path(words[2]), insecure)
    except CmbuildError as e:
        print(f"cmbuild: error: {e}", file=sys.stderr)
        return 1
