"""unpack: the image's layers flattened (whiteouts, opaque directories, hardlinks applied)
into one canonical tar: sorted, numeric owners, clamped times. Nothing is written as files on
the host. Output: that tar.

When this run also builds the app drive (:mod:`.squashfs`) as squashfs, the drive is made
from the same tree at the same time: the canonical tar goes into the store while the drive's
own stream goes into mksquashfs, both reading the decompressed layers, and the drive is
offered to the pipeline, which records it under the squashfs stage's own key once this
stage's output is stored (:meth:`cmbuild.pipeline.Context.offer`). It is the same drive, byte
for byte, that the squashfs stage makes from the stored tar on its own."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, Callable, TypeVar

from ..pipeline import APP, Context, ImageUse, Stage
from . import squashfs

T = TypeVar("T")
U = TypeVar("U")


def key_doc(ctx: Context, use: ImageUse = APP) -> tuple[Any, dict[str, Any]]:
    rec = ctx.image_record(use)
    img = use.image(ctx.project)
    layers = [{"digest": layer["digest"], "mediaType": layer.get("mediaType", "")} for layer in rec["layers"]]
    return ({"max_unpacked_size": img.max_unpacked_size, "mtime_clamp": img.mtime_clamp},
            {"layers": layers})


def side_by_side(first: Callable[[], T], second: Callable[[], U]) -> tuple[T, U]:
    """Run ``first`` in a thread while ``second`` runs in this one; when both have ended, raise
    the error of either (``second``'s first), else return both results."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(first())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(e)

    t = threading.Thread(target=run, name="canonical-tar", daemon=True)
    t.start()
    try:
        other = second()
    finally:
        t.join()
    if error:
        raise error[0]
    return result[0], other


def _timed(fn: Callable[[], T], into: dict[str, float], name: str) -> Callable[[], T]:
    def run() -> T:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            into[name] = time.monotonic() - t0
    return run


def build(ctx: Context, use: ImageUse = APP) -> tuple[str, dict[str, Any]]:
    from ..oci.flatten import Flattened, LayerInput, read_layers, write_canonical
    from . import pull
    img = use.image(ctx.project)
    if any(not ctx.store.has(layer["digest"]) for layer in ctx.image_record(use)["layers"]):
        pull.fetch_layers(ctx, use)   # the pull's record came from a remote cache, its layers did not
    layers = [LayerInput(path=ctx.store.require(layer["digest"], "layer"), digest=layer["digest"],
                         media_type=layer["mediaType"])
              for layer in ctx.key_inputs(use.name("unpack"))["inputs"]["layers"]]
    drive_too = use.name("squashfs") in ctx.graph and ctx.plans(use.name("squashfs")) and \
        squashfs.streams(ctx, use)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    with ctx.store.tmpdir("unpack-") as scratch, \
            read_layers(layers, scratch=scratch, max_unpacked_size=img.max_unpacked_size,
                        mtime_clamp=img.mtime_clamp, inflated=ctx.inflated) as flat:
        times["layers"] = time.monotonic() - t0

        def store_tar(flat: Flattened = flat) -> tuple[str, Any]:
            with ctx.store.writer() as w:
                stats = write_canonical(flat, w)
            return w.digest, stats

        def store_drive(flat: Flattened = flat) -> tuple[str, dict[str, Any]]:
            meta = squashfs.write_squashfs(ctx, flat.entries, scratch / "app.img", use)
            return ctx.store.adopt(scratch / "app.img"), meta

        if drive_too:
            (digest, stats), drive = side_by_side(_timed(store_tar, times, "tar"),
                                                  _timed(store_drive, times, "drive"))
            ctx.offer(use.name("squashfs"), *drive)
        else:
            digest, stats = _timed(store_tar, times, "tar")()
    for tar in ctx.inflated.values():   # the pull's inflated layers are not needed any more
        tar.unlink(missing_ok=True)
    ctx.inflated.clear()
    times["total"] = time.monotonic() - t0
    _say_times(times, use)
    return digest, {k: v for k, v in vars(stats).items() if isinstance(v, int)}


def _say_times(t: dict[str, float], use: ImageUse = APP) -> None:
    """Where the stage's time went (the benchmarks read this line)."""
    parts = [f"layers read {t['layers']:.2f} s", f"canonical tar stored {t['tar']:.2f} s"]
    if "drive" in t:
        parts.append(f"app drive stored beside it {t['drive']:.2f} s")
    parts.append(f"total {t['total']:.2f} s")
    print(f"cmbuild: {use.name('unpack')}: " + "; ".join(parts), file=sys.stderr, flush=True)


def stage(use: ImageUse = APP) -> Stage:
    return Stage(use.name("unpack"), 1, (use.name("pull"),),
                 "flatten the layers (whiteouts applied) into one canonical tar",
                 lambda ctx: key_doc(ctx, use), lambda ctx: build(ctx, use),
                 modules=("cmbuild.stages.unpack", "cmbuild.oci.flatten", "cmbuild.oci.tarutil"),
                 remote_lazy=True,   # only the drive stages read the tar
                 kind="unpack")
