"""The remote stage cache: stage outputs shared through an OCI registry.

``[cache] remote = "<registry>/<repository>"`` (or ``--remote``, or ``$CMBUILD_REMOTE``)
names a repository; ``push = true`` (``--push``, ``$CMBUILD_REMOTE_PUSH=1``) lets this build
add to it. Before a stage runs, its key is looked up there: the tag ``sha256-<key hex>`` names
an artifact (:mod:`cmbuild.oci.artifact`) whose annotations give the stage, the key, its
inputs, the output digest and the stage's metadata. On a hit the output is downloaded,
verified (every blob, then the object's own digest, which must be the annotated output) and
adopted into the store exactly as if the stage had run. After a stage runs, its output is
pushed when pushing is on.

The remote only ever saves work: it cannot break or corrupt a build. A remote that cannot be
reached or fails (5xx, 429, refused credentials) is reported once and left alone for the rest
of the run; an artifact that does not verify is refused with a warning and the stage is built
here; a push that fails is a warning and the build goes on. Credentials come from the same
places as for pulls (:mod:`cmbuild.oci.auth`).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from . import __version__
from .errors import CmbuildError, RegistryUnavailable
from .oci.artifact import EXTRA as A_EXTRA
from .store import KeyRecord, Store

if TYPE_CHECKING:
    from .pipeline import Context

T = TypeVar("T")
ENV_REMOTE = "CMBUILD_REMOTE"
ENV_PUSH = "CMBUILD_REMOTE_PUSH"
STAGE_TYPE = "application/vnd.cartesi.cmbuild.stage.v1"
A_STAGE = "io.cartesi.cmbuild.stage"
A_KEY = "io.cartesi.cmbuild.key"
A_INPUTS = "io.cartesi.cmbuild.inputs"
A_OUTPUT = "io.cartesi.cmbuild.output"
A_META = "io.cartesi.cmbuild.meta"
A_VERSION = "io.cartesi.cmbuild.version"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _say(msg: str) -> None:
    print(f"cmbuild: {msg}", file=sys.stderr, flush=True)


def tag_of(key: str) -> str:
    return "sha256-" + key.split(":", 1)[1]


def parse_remote(spec: str, where: str) -> tuple[str, str]:
    """``<registry>/<repository>`` -> (registry, repository); no tag, no digest."""
    from .oci.reference import parse_repository
    return parse_repository(spec, where)


def settings(project_remote: str | None, project_push: bool) -> tuple[str | None, bool, str]:
    """The remote and whether to push: the environment (set by the command line's
    ``--remote``/``--no-remote``/``--push``/``--no-push`` too) wins over cartesi.toml."""
    remote, where = project_remote, "cartesi.toml [cache].remote"
    env = os.environ.get(ENV_REMOTE)
    if env is not None:
        remote, where = (env.strip() or None), f"${ENV_REMOTE}"
        if remote in ("none", "off"):
            remote = None
    push = project_push
    value = os.environ.get(ENV_PUSH)
    if value is not None:
        if value.strip().lower() in _TRUE:
            push = True
        elif value.strip().lower() in _FALSE:
            push = False
        else:
            raise CmbuildError(f"expected 1 or 0, got {value!r}", where=f"${ENV_PUSH}")
    return remote, push, where


class RemoteUnusable(Exception):
    """The remote cannot be used for the rest of this run."""


@dataclass
class RemoteCache:
    spec: str
    push: bool
    insecure: bool = False
    registry: str = ""
    repository: str = ""
    broken: str | None = None
    client: Any = None
    fetched: dict[str, int] = field(default_factory=dict)   # stage -> bytes received
    pointed: set[str] = field(default_factory=set)   # stages found there, not downloaded
    stats: dict[str, int] = field(default_factory=lambda: {"downloaded": 0, "uploaded": 0})

    @classmethod
    def open(cls, spec: str, push: bool, insecure: bool, where: str) -> "RemoteCache":
        registry, repository = parse_remote(spec, where)
        return cls(spec, push, insecure, registry, repository)

    def _client(self) -> Any:
        if self.client is None:
            from .oci.registry import RegistryClient
            # few retries and short waits: a remote that is down costs seconds, not minutes
            self.client = RegistryClient(self.registry, self.insecure, retries=2, max_wait=2.0,
                                         timeout=30.0, backoff=0.25, push=self.push)
        return self.client

    def _give_up(self, what: str, e: Exception) -> None:
        self.broken = str(e).splitlines()[0]
        _say(f"warning: remote cache {self.spec}: {what} failed ({self.broken}); building "
             "here, and not using the remote again in this run")

    # ----- looking up -------------------------------------------------------------------
    def _lookup(self, name: str, key: str) -> tuple[dict[str, Any], str, str, dict[str, Any]] | None:
        """(manifest, its digest, output digest, metadata) of the artifact for ``key``, or None
        when the remote has none; raises when it is not an artifact of this stage and key."""
        from .oci.artifact import get_artifact
        from .store import check_digest
        client = self._client()
        where = f"{self.spec}:{tag_of(key)}"
        if client.has_manifest(self.repository, tag_of(key)) is None:
            return None
        doc, mdigest = get_artifact(client, self.repository, tag_of(key), STAGE_TYPE)
        ann = doc.get("annotations") or {}
        if ann.get(A_STAGE) != name or ann.get(A_KEY) != key:
            raise CmbuildError(f"the artifact is for stage {ann.get(A_STAGE)!r} and key "
                               f"{ann.get(A_KEY)!r}", where=where)
        output = ann.get(A_OUTPUT, "")
        check_digest(output, f"{where}: the output annotation")
        meta = json.loads(ann.get(A_META) or "{}")
        if not isinstance(meta, dict):
            raise CmbuildError("bad metadata annotation", where=where)
        return doc, mdigest, output, meta

    def _safely(self, name: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None when the remote is out of use, fails (then it is left alone for
        the rest of the run) or gives what does not verify (then the stage is built here)."""
        if self.broken is not None:
            return None
        try:
            return fn()
        except RegistryUnavailable as e:
            self._give_up("a lookup", e)
        except (CmbuildError, ValueError) as e:
            _say(f"warning: remote cache: refused the output of stage '{name}': "
                 f"{str(e).splitlines()[0]}; building it here")
        return None

    def point(self, ctx: "Context", name: str, key: str) -> KeyRecord | None:
        """A pointer record (:meth:`Store.put_pointer`) to the output of stage ``name`` for
        ``key`` on the remote, without downloading it; None when the remote has none."""
        found = self._safely(name, lambda: self._lookup(ctx.graph[name].key_name, key))
        if found is None:
            return None
        _, mdigest, output, meta = found
        rec = ctx.store.put_pointer(key, name, output, {**meta, "remote": f"{self.spec}@{mdigest}"})
        self.pointed.add(name)
        return rec

    def fetch(self, ctx: "Context", name: str, key: str) -> KeyRecord | None:
        """Adopt the output of stage ``name`` for ``key`` from the remote, or None."""
        from .oci.artifact import fetch_object, transfer_bar
        where = f"{self.spec}:{tag_of(key)}"

        def get() -> tuple[str, str, dict[str, Any], int] | None:
            found = self._lookup(ctx.graph[name].key_name, key)
            if found is None:
                return None
            doc, mdigest, output, meta = found
            client = self._client()
            before = _downloaded(client)
            total = sum(int(x.get("size", 0)) for x in doc.get("layers") or [])
            with transfer_bar(f"{name} ↓", total, ctx.progress) as progress:
                got = fetch_object(client, self.repository, doc, ctx.store, output, where, progress)
            check = ctx.graph[name].check_fetched
            if check is not None:
                check(ctx, got, meta, where)
            return got, mdigest, meta, _downloaded(client) - before

        fetched = self._safely(name, get)
        if fetched is None:
            return None
        got, mdigest, meta, received = fetched
        self.stats["downloaded"] += received
        rec = ctx.store.put_key(key, name, got, {**meta, "remote": f"{self.spec}@{mdigest}"})
        self.fetched[name] = received
        return rec

    # ----- pushing ----------------------------------------------------------------------
    def offer(self, ctx: "Context", name: str, key: str, rec: KeyRecord) -> KeyRecord:
        """Push a stage's output when pushing is on; returns the record (marked with where
        the output now is)."""
        if not self.push or self.broken is not None or "remote" in rec.meta:
            return rec
        from .oci.artifact import prepare_object, push_artifact, transfer_bar
        stage = ctx.graph[name]
        try:
            client = self._client()
            with ctx.store.tmpdir("push-") as work:
                # named by the key's stage (pull, not pull-<service>): one key, one artifact
                blobs, kind, extras = prepare_object(ctx.store, rec.output, stage.key_name, work)
                for digest in (stage.remote_extras(ctx) if stage.remote_extras else []):
                    from .oci.artifact import prepare_file
                    b = prepare_file(ctx.store.require(digest), f"objects/{digest}", work)
                    b.desc["annotations"][A_EXTRA] = "true"
                    blobs.append(b)
                annotations = {A_STAGE: stage.key_name, A_KEY: key, A_OUTPUT: rec.output,
                               A_INPUTS: json.dumps(ctx.key_inputs(name), sort_keys=True),
                               A_META: json.dumps(rec.meta, sort_keys=True),
                               A_VERSION: __version__, "io.cartesi.cmbuild.kind": kind}
                if extras:
                    annotations["io.cartesi.cmbuild.tree"] = json.dumps(extras, sort_keys=True)
                with transfer_bar(f"{name} ↑", sum(b.desc["size"] for b in blobs),
                                  ctx.progress) as progress:
                    mdigest, sent = push_artifact(client, self.repository, tag_of(key), blobs,
                                                  STAGE_TYPE, annotations, progress=progress)
            self.stats["uploaded"] += sent
        except (RegistryUnavailable, CmbuildError, OSError) as e:
            if isinstance(e, RegistryUnavailable):
                self._give_up(f"pushing stage '{name}'", e)
            else:
                # (a remote over its quota refuses every upload: one warning is enough)
                self.push = False
                _say(f"warning: remote cache: pushing stage '{name}' failed "
                     f"({str(e).splitlines()[0]}); not pushing again in this run; the build "
                     "goes on")
            return rec
        _say(f"{name}: pushed to {self.spec} ({sent / 1e6:.2f} MB sent)")
        return ctx.store.put_key(key, name, rec.output, {**rec.meta, "remote": f"{self.spec}@{mdigest}"})


def _downloaded(client: Any) -> int:
    return int(getattr(client, "bytes_in", 0))


def open_remote(project: Any) -> RemoteCache | None:
    spec, push, where = settings(project.cache.remote, project.cache.push)
    if spec is None:
        return None
    return RemoteCache.open(spec, push, project.cache.insecure, where)


__all__ = ["RemoteCache", "open_remote", "settings", "tag_of", "Store"]
