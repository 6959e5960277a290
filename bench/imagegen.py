"""Large synthetic OCI images for the benchmarks, written straight to an OCI image layout.

Each layer holds, by bytes, about 80% large files (half random bytes, half pseudo-text) and
20% small text files, plus directories, and from the second layer on a whiteout, an opaque
directory, a hard link and a symlink. The pseudo-text is made of words and repeats only every
256 KiB (farther than gzip's 32 KiB window), so gzip compresses it about 3:1 and the random
half not at all: decompression matters, as it does for real images. Layers are gzip level 1
(the decompression cost hardly depends on the level; generating stays quick).

Everything is streamed through temporary files, so generating a 1 GB image needs little memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MTIME = 1_700_000_000
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there would their we him been has when who will "
         "more no if out so said what up its about into than them can only other new some could "
         "time these two may then do first any my now such like our over man me even most made "
         "after also did many before must through back years where much your way well down should "
         "because each just those people how too little state good very make world still own see "
         "static const struct return void int char unsigned size_t NULL include define if else "
         "while for break continue switch case default goto sizeof typedef enum union").split()


@dataclass
class Layer:
    digest: str      # of the gzip blob
    diff_id: str     # of the uncompressed tar
    size: int        # of the blob
    raw_size: int    # of the tar


def pseudo_text(rng: random.Random, size: int) -> bytes:
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 14)))
        line = ("    " * rng.randrange(0, 3)) + line + (";\n" if rng.random() < 0.3 else "\n")
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE,
         link: str = "", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, link, mode, MTIME
    if data is not None:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if data is not None else None)


def write_layer_tar(path: Path, index: int, size: int, seed: int) -> None:
    """One layer of about ``size`` bytes of file content, as an uncompressed tar at ``path``."""
    rng = random.Random(seed * 1000 + index)
    text = pseudo_text(rng, 256 << 10)
    with open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("usr", "usr/lib", f"usr/lib/l{index}", "usr/share", "usr/bin", "etc"):
            _add(tar, d, kind=tarfile.DIRTYPE, mode=0o755)
        big_left, n = size * 8 // 10, 0
        while big_left > 0:
            chunk = min(big_left, rng.randrange(1 << 20, 8 << 20))
            half = chunk // 2
            off = rng.randrange(0, len(text) // 2)
            body = bytearray(os.urandom(half))
            while len(body) < chunk:
                body += text[off:off + chunk - len(body)]
                off = 0
            _add(tar, f"usr/lib/l{index}/big{n}.so", bytes(body), mode=0o755)
            big_left -= chunk
            n += 1
        small_left, n = size - size * 8 // 10, 0
        made: set[str] = set()
        while small_left > 0:
            chunk = rng.randrange(200, 16_000)
            off = rng.randrange(0, len(text) - chunk)
            d = f"usr/share/l{index % 3}/d{n % 50}"
            for p in (f"usr/share/l{index % 3}", d):
                if p not in made:
                    _add(tar, p, kind=tarfile.DIRTYPE, mode=0o755)
                    made.add(p)
            _add(tar, f"{d}/f{index}_{n}.txt", f"# file {index}/{n}\n".encode() + text[off:off + chunk])
            small_left -= chunk
            n += 1
        if index > 0:
            _add(tar, f"usr/lib/l{index - 1}/.wh.big0.so", b"")
            _add(tar, f"usr/share/l{(index - 1) % 3}/d7/.wh..wh..opq", b"")
            _add(tar, f"usr/bin/link{index}", kind=tarfile.LNKTYPE, link=f"usr/lib/l{index}/big0.so")
            _add(tar, f"usr/bin/sym{index}", kind=tarfile.SYMTYPE, link=f"../lib/l{index}/big0.so")
        else:
            _add(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
            _add(tar, "etc/group", b"root:x:0:\napp:x:1000:\n")


class LayoutWriter:
    """An OCI image layout being written at ``root``: blobs, then images tagged in index.json."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        self.entries: list[dict[str, Any]] = []
        self._write_index()

    def add_bytes(self, data: bytes) -> str:
        hexd = hashlib.sha256(data).hexdigest()
        (self.blobs / hexd).write_bytes(data)
        return "sha256:" + hexd

    def add_layer(self, index: int, size: int, seed: int) -> Layer:
        tmp_tar = self.root / f"layer-{index}.tar.tmp"
        tmp_gz = self.root / f"layer-{index}.gz.tmp"
        write_layer_tar(tmp_tar, index, size, seed)
        raw_h, gz_h = hashlib.sha256(), hashlib.sha256()
        comp = zlib.compressobj(1, zlib.DEFLATED, 31)   # gzip container, level 1
        with open(tmp_tar, "rb") as src, open(tmp_gz, "wb") as dst:
            while chunk := src.read(1 << 20):
                raw_h.update(chunk)
                out = comp.compress(chunk)
                gz_h.update(out)
                dst.write(out)
            out = comp.flush()
            gz_h.update(out)
            dst.write(out)
        raw_size = tmp_tar.stat().st_size
        tmp_tar.unlink()
        os.replace(tmp_gz, self.blobs / gz_h.hexdigest())
        return Layer("sha256:" + gz_h.hexdigest(), "sha256:" + raw_h.hexdigest(),
                     (self.blobs / gz_h.hexdigest()).stat().st_size, raw_size)

    def add_image(self, tag: str, layers: list[Layer], label: str = "", created: str = "") -> str:
        config = {"architecture": "riscv64", "os": "linux", **({"created": created} if created else {}),
                  "config": {"Cmd": ["/bin/sh", "-c", "echo hello"], "Env": ["PATH=/usr/bin:/bin"],
                             "WorkingDir": "/", **({"Labels": {"bench.label": label}} if label else {})},
                  "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
                  "history": [{"created_by": f"bench layer {i}"} for i in range(len(layers))]}
        cbytes = json.dumps(config, indent=2, sort_keys=True).encode()
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": self.add_bytes(cbytes), "size": len(cbytes)},
                    "layers": [{"mediaType": GZIP_LAYER, "digest": x.digest, "size": x.size} for x in layers]}
        mbytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
        digest = self.add_bytes(mbytes)
        self.entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(mbytes),
                             "annotations": {"org.opencontainers.image.ref.name": tag}})
        self._write_index()
        return digest

    def _write_index(self) -> None:
        (self.root / "index.json").write_text(json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.entries}, indent=2))


def make_image(root: Path, size_mb: int, n_layers: int = 8, seed: int = 1) -> tuple[LayoutWriter, list[Layer], str]:
    """A layout at ``root`` with the image ``v1`` of ``n_layers`` layers, ``size_mb`` MB of content."""
    w = LayoutWriter(root)
    per = size_mb * 1_000_000 // n_layers
    layers = [w.add_layer(i, per, seed) for i in range(n_layers)]
    return w, layers, w.add_image("v1", layers)
