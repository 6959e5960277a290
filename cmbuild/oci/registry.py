"""A client for the OCI Distribution API (Docker Registry HTTP API v2), on ``requests`` only.

* Registries on loopback (``localhost``, ``127.0.0.0/8``, ``[::1]``) are spoken to over plain
  HTTP; others over HTTPS. ``insecure=True`` tries HTTPS without certificate checks, then HTTP.
* Authentication: see :mod:`cmbuild.oci.auth`.
* 429 and 5xx answers and broken connections are retried a bounded number of times, with
  exponential backoff that honours ``Retry-After`` (capped).
* Blobs are hashed while they stream into the store; a broken download resumes with ``Range``.
* Redirects (blob storage, CDNs) are followed by hand: ``Authorization`` is never sent to a
  host other than the registry's.
"""

from __future__ import annotations

import email.utils
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..errors import CmbuildError, RegistryUnavailable
from ..store import CHUNK, Store, sha256_bytes
from .auth import Authenticator
from .blobs import BlobSink, SinkFor
from .image import MANIFEST_ACCEPT, MAX_DOCUMENT, Descriptor
from .reference import is_loopback

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
# small reads: a broken connection loses at most this much of what already arrived
_STREAM_CHUNK = 64 << 10
# the size of one PATCH of a chunked upload: a broken upload loses at most this much
UPLOAD_CHUNK = 16 << 20
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout,
                   requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError)


class BlobWriter(Protocol):
    """Where :meth:`RegistryClient.download_blob` puts a blob's bytes."""

    size: int

    def write(self, data: bytes) -> Any:
        ...

    @property
    def digest(self) -> str:
        ...


class _UploadBroke(Exception):
    """A blob upload broke in a way that starting it again may mend."""


class RegistryClient:
    """Talks to one registry. Thread-safe: each thread gets its own HTTP session."""

    def __init__(self, registry: str, insecure: bool = False, *, retries: int = 5,
                 max_wait: float = 30.0, timeout: float = 60.0, backoff: float = 0.5,
                 push: bool = False):
        self.registry = registry
        self.retries = retries
        self.max_wait = max_wait
        self.timeout = timeout
        self.backoff = backoff
        self.verify = not insecure
        self.bytes_in = 0    # blob bytes downloaded and pushed (the benchmarks read them)
        self.bytes_out = 0
        self._local = threading.local()
        if is_loopback(registry):
            self.base = f"http://{registry}"
        elif insecure:
            self.base = self._probe_insecure()
        else:
            self.base = f"https://{registry}"
        self.auth = Authenticator(registry, self.session, verify=self.verify,
                                  timeout=timeout, push=push)

    # ----- plumbing --------------------------------------------------------------------
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.auth = lambda r: r  # never pick credentials up from ~/.netrc
            s.headers["User-Agent"] = "cmbuild"
            self._local.session = s
        return s

    def _probe_insecure(self) -> str:
        url = f"https://{self.registry}/v2/"
        try:
            requests.get(url, timeout=10, verify=False, allow_redirects=False)
            return f"https://{self.registry}"
        except requests.RequestException:
            return f"http://{self.registry}"

    def _sleep_for(self, r: requests.Response | None, attempt: int) -> float:
        wait = self.backoff * (2 ** attempt)
        value = r.headers.get("Retry-After") if r is not None else None
        if value:
            try:
                wait = float(value)
            except ValueError:
                when = email.utils.parsedate_to_datetime(value) if value else None
                if when is not None:
                    wait = when.timestamp() - time.time()
        return max(0.0, min(wait, self.max_wait))

    def _follow(self, method: str, url: str, headers: dict[str, str],
                stream: bool, data: bytes | None = None) -> requests.Response:
        registry_netloc = urlsplit(self.base).netloc
        for _ in range(_MAX_REDIRECTS + 1):
            r = self.session().request(method, url, headers=headers, stream=stream,
                                       allow_redirects=False, timeout=self.timeout,
                                       verify=self.verify, data=data)
            location = r.headers.get("Location")
            if r.status_code not in _REDIRECTS or not location:
                return r
            r.close()
            url = urljoin(url, location)
            if urlsplit(url).netloc != registry_netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            if r.status_code == 303 and method != "HEAD":
                method = "GET"
        raise CmbuildError(f"more than {_MAX_REDIRECTS} redirects", where=url)

    def _authed(self, method: str, url: str, repository: str, headers: dict[str, str],
                stream: bool, data: bytes | None = None) -> requests.Response:
        for _ in range(3):
            auth = self.auth.header(repository)
            r = self._follow(method, url, {**headers, **auth}, stream, data)
            if r.status_code != 401:
                return r
            r.close()
            self.auth.challenge(r, repository, sent=bool(auth))  # raises when hopeless
        raise self.auth.denied(repository)

    def request(self, method: str, url: str, repository: str,
                headers: dict[str, str] | None = None, stream: bool = False,
                body: bytes | None = None) -> requests.Response:
        """Send a request with authentication, redirects and bounded retries."""
        headers = dict(headers or {})
        for attempt in range(self.retries + 1):
            try:
                r = self._authed(method, url, repository, headers, stream, body)
            except _NETWORK_ERRORS as e:
                if attempt == self.retries:
                    raise RegistryUnavailable(f"cannot reach the registry: {e}",
                                              where=url) from None
                time.sleep(self._sleep_for(None, attempt))
                continue
            if (r.status_code == 429 or r.status_code >= 500) and attempt < self.retries:
                wait = self._sleep_for(r, attempt)
                r.close()
                time.sleep(wait)
                continue
            return r
        raise AssertionError("unreachable")

    def _fail(self, r: requests.Response, what: str, url: str) -> CmbuildError:
        code = ""
        try:
            errors = r.json().get("errors") or []
            code = ", ".join(str(e.get("code")) for e in errors if isinstance(e, dict))
        except (ValueError, AttributeError):
            pass
        detail = f" ({code})" if code else ""
        if r.status_code >= 500 or r.status_code == 429:
            return RegistryUnavailable(f"the registry answered HTTP {r.status_code}{detail} "
                                       f"for {what}", where=url)
        if r.status_code == 404:
            return CmbuildError(f"{what} was not found in the registry{detail}", where=url,
                                hint="check the repository name and the tag or digest")
        return CmbuildError(f"the registry answered HTTP {r.status_code}{detail} for {what}",
                            where=url)

    def _get_small(self, url: str, repository: str, headers: dict[str, str], what: str,
                   limit: int) -> tuple[requests.Response, bytes]:
        """GET a small document whole, trying again when the connection breaks."""
        for attempt in range(self.retries + 1):
            r = self.request("GET", url, repository, headers, stream=True)
            with r:
                if r.status_code != 200:
                    raise self._fail(r, what, url)
                try:
                    return r, _read_limited(r, limit, url)
                except _NETWORK_ERRORS as e:
                    if attempt == self.retries:
                        raise CmbuildError(f"the connection broke while reading {what}: {e}",
                                           where=url) from None
            time.sleep(self._sleep_for(None, attempt))
        raise AssertionError("unreachable")

    # ----- manifests -------------------------------------------------------------------
    def get_manifest(self, repository: str, reference: str) -> tuple[bytes, str | None, str]:
        """(bytes, media type, digest) of a manifest or index, by tag or digest."""
        url = f"{self.base}/v2/{repository}/manifests/{reference}"
        what = f"{self.registry}/{repository}{'@' if ':' in reference else ':'}{reference}"
        r, data = self._get_small(url, repository, {"Accept": MANIFEST_ACCEPT}, what,
                                  MAX_DOCUMENT)
        media = r.headers.get("Content-Type", "").split(";")[0].strip() or None
        digest = sha256_bytes(data)
        if reference.startswith("sha256:") and digest != reference:
            raise CmbuildError(f"manifest {reference} does not match its digest (its bytes "
                               f"hash to {digest})", where=url,
                               hint="the registry or a proxy altered it")
        return data, media, digest

    def get_blob_bytes(self, repository: str, desc: Descriptor) -> bytes:
        """A small blob (an image config) read into memory and verified."""
        url = f"{self.base}/v2/{repository}/blobs/{desc.digest}"
        _r, data = self._get_small(url, repository, {}, f"blob {desc.digest}",
                                   min(desc.size, MAX_DOCUMENT))
        got = sha256_bytes(data)
        if got != desc.digest or len(data) != desc.size:
            raise CmbuildError(f"blob {desc.digest} does not match its digest (its bytes hash "
                               f"to {got})", where=url, hint="the registry or a proxy altered it")
        return data

    # ----- blobs -----------------------------------------------------------------------
    def fetch_blob(self, store: Store, repository: str, desc: Descriptor,
                   progress: Callable[[int], None] | None = None, sink: BlobSink | None = None) -> None:
        """Stream a blob into the store, verifying its sha256 and size; resume a broken
        download with ``Range``. On a mismatch nothing is stored. ``sink`` sees every byte
        once, in order, and then whether the blob was stored verified."""
        verified = False
        try:
            self._fetch_blob(store, repository, desc, progress, sink)
            verified = True
        finally:
            if sink is not None:
                sink.close(verified)

    def _fetch_blob(self, store: Store, repository: str, desc: Descriptor,
                    progress: Callable[[int], None] | None, sink: BlobSink | None) -> None:
        with store.writer() as w:
            self.download_blob(repository, desc, w, progress, sink)

    def download_blob(self, repository: str, desc: Descriptor, w: "BlobWriter",
                      progress: Callable[[int], None] | None = None,
                      sink: BlobSink | None = None) -> None:
        """Stream a blob into ``w`` (``write``, ``size``, ``digest``), resuming a broken
        download with ``Range``, and raise unless what arrived is the blob's bytes (its
        sha256 and size). The caller decides what a verified blob becomes."""
        url = f"{self.base}/v2/{repository}/blobs/{desc.digest}"
        breaks = 0
        while True:
            headers = {"Range": f"bytes={w.size}-"} if w.size else {}
            r = self.request("GET", url, repository, headers, stream=True)
            with r:
                if w.size and r.status_code == 416 and w.size == desc.size:
                    break
                if r.status_code not in (200, 206):
                    raise self._fail(r, f"blob {desc.digest}", url)
                skip = w.size if r.status_code == 200 else 0
                if r.status_code == 206 and not r.headers.get(
                        "Content-Range", "").startswith(f"bytes {w.size}-"):
                    raise CmbuildError(f"the registry resumed blob {desc.digest} at the "
                                       "wrong offset", where=url)
                try:
                    for chunk in r.iter_content(_STREAM_CHUNK):
                        if skip:
                            drop = min(skip, len(chunk))
                            chunk, skip = chunk[drop:], skip - drop
                        if not chunk:
                            continue
                        w.write(chunk)
                        self.bytes_in += len(chunk)
                        if sink is not None:
                            sink.write(chunk)
                        if w.size > desc.size:
                            raise CmbuildError(f"blob {desc.digest} is longer than the "
                                               f"{desc.size} bytes its descriptor says",
                                               where=url)
                        if progress:
                            progress(len(chunk))
                    if w.size < desc.size and r.status_code in (200, 206):
                        raise requests.exceptions.ChunkedEncodingError("short read")
                    break
                except _NETWORK_ERRORS as e:
                    breaks += 1
                    if breaks > self.retries:
                        raise CmbuildError(f"the download of blob {desc.digest} broke "
                                           f"{breaks} times: {e}", where=url) from None
                    time.sleep(self._sleep_for(None, breaks - 1))
        if w.digest != desc.digest or w.size != desc.size:
            raise CmbuildError(f"blob {desc.digest} does not match its digest (its bytes "
                               f"hash to {w.digest}, {w.size} bytes)",
                               where=f"{self.registry}/{repository}",
                               hint="the registry or a proxy altered it; nothing was stored")

    # ----- pushing ---------------------------------------------------------------------
    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether the repository holds the blob (HEAD); other answers are errors."""
        url = f"{self.base}/v2/{repository}/blobs/{digest}"
        r = self.request("HEAD", url, repository)
        r.close()
        if r.status_code == 200:
            return True
        if r.status_code == 404:
            return False
        raise self._fail(r, f"blob {digest}", url)

    def push_blob(self, repository: str, data: bytes | Path, digest: str, size: int,
                  chunk: int = UPLOAD_CHUNK,
                  progress: Callable[[int], None] | None = None) -> bool:
        """Upload a blob unless the repository has it; returns whether it uploaded. Small
        blobs go in one PUT; larger ones in ``chunk``-sized PATCHes of a resumable upload:
        when a PATCH breaks or the registry fails, the upload's status (GET on its URL) says
        how much it holds and the upload goes on from there."""
        if self.has_blob(repository, digest):
            return False
        start_url = f"{self.base}/v2/{repository}/blobs/uploads/"
        for attempt in range(self.retries + 1):
            location = self._start_upload(start_url, repository)
            try:
                if size <= chunk:
                    body = data if isinstance(data, bytes) else Path(data).read_bytes()
                    self._finish_upload(location, repository, digest, body)
                    self.bytes_out += len(body)
                else:
                    self._upload_chunks(location, repository, data, digest, size, chunk,
                                        progress)
                return True
            except _UploadBroke as e:
                if attempt == self.retries:
                    raise CmbuildError(f"the upload of blob {digest} failed {attempt + 1} "
                                       f"times: {e}", where=start_url) from None
                time.sleep(self._sleep_for(None, attempt))
        raise AssertionError("unreachable")

    def _start_upload(self, url: str, repository: str) -> str:
        r = self.request("POST", url, repository, {"Content-Length": "0"})
        r.close()
        if r.status_code != 202 or not r.headers.get("Location"):
            raise self._fail(r, "a blob upload", url)
        return urljoin(url, r.headers["Location"])

    def _upload_url(self, location: str, **query: str) -> str:
        from urllib.parse import urlencode
        sep = "&" if "?" in location else "?"
        return location + (sep + urlencode(query) if query else "")

    def _finish_upload(self, location: str, repository: str, digest: str, body: bytes) -> None:
        url = self._upload_url(location, digest=digest)
        try:
            r = self._authed("PUT", url, repository, {"Content-Type": "application/octet-stream",
                                                      "Content-Length": str(len(body))},
                             False, body)
        except _NETWORK_ERRORS as e:
            raise _UploadBroke(str(e)) from None
        r.close()
        if r.status_code >= 500 or r.status_code == 429:
            raise _UploadBroke(f"HTTP {r.status_code}")
        if r.status_code not in (201, 204):
            raise self._fail(r, f"the upload of blob {digest}", location)

    def _upload_status(self, location: str, repository: str) -> int:
        """How many bytes the upload at ``location`` holds (its ``Range: 0-<last>``)."""
        try:
            r = self._authed("GET", location, repository, {}, False)
        except _NETWORK_ERRORS as e:
            raise _UploadBroke(str(e)) from None
        r.close()
        if r.status_code != 204:
            raise _UploadBroke(f"the upload's status answered HTTP {r.status_code}")
        rng = r.headers.get("Range", "")
        try:
            return int(rng.rsplit("-", 1)[1]) + 1 if rng else 0
        except (IndexError, ValueError):
            raise _UploadBroke(f"the upload's status has a bad Range {rng!r}") from None

    def _upload_chunks(self, location: str, repository: str, data: bytes | Path, digest: str,
                       size: int, chunk: int, progress: Callable[[int], None] | None) -> None:
        import contextlib
        offset, breaks = 0, 0
        with contextlib.ExitStack() as stack:
            f = None if isinstance(data, bytes) else stack.enter_context(open(data, "rb"))
            while offset < size:
                if f is None:
                    assert isinstance(data, bytes)
                    body = data[offset:offset + chunk]
                else:
                    f.seek(offset)
                    body = f.read(chunk)
                headers = {"Content-Type": "application/octet-stream",
                           "Content-Range": f"{offset}-{offset + len(body) - 1}",
                           "Content-Length": str(len(body))}
                try:
                    r = self._authed("PATCH", location, repository, headers, False, body)
                    r.close()
                    ok = r.status_code == 202
                    if not ok and r.status_code < 500 and r.status_code not in (416, 429):
                        raise self._fail(r, f"the upload of blob {digest}", location)
                except _NETWORK_ERRORS:
                    ok = False
                if ok:
                    location = urljoin(location, r.headers.get("Location") or location)
                    offset += len(body)
                    self.bytes_out += len(body)
                    if progress:
                        progress(len(body))
                    continue
                breaks += 1
                if breaks > self.retries:
                    raise _UploadBroke(f"a chunk at offset {offset} failed {breaks} times")
                time.sleep(self._sleep_for(None, breaks - 1))
                offset = self._upload_status(location, repository)
        self._finish_upload(location, repository, digest, b"")

    def has_manifest(self, repository: str, reference: str) -> str | None:
        """The digest of the manifest a tag or digest names, or None when there is none."""
        url = f"{self.base}/v2/{repository}/manifests/{reference}"
        r = self.request("HEAD", url, repository, {"Accept": MANIFEST_ACCEPT})
        r.close()
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise self._fail(r, f"manifest {reference}", url)
        return r.headers.get("Docker-Content-Digest") or reference

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> str:
        """Upload a manifest under a tag (or its digest); returns its digest."""
        url = f"{self.base}/v2/{repository}/manifests/{reference}"
        digest = sha256_bytes(data)
        r = self.request("PUT", url, repository, {"Content-Type": media_type}, body=data)
        r.close()
        if r.status_code not in (200, 201):
            raise self._fail(r, f"manifest {reference}", url)
        got = r.headers.get("Docker-Content-Digest")
        if got and got != digest:
            raise CmbuildError(f"the registry stored manifest {reference} as {got}, not "
                               f"{digest}", where=url)
        return digest
        raise AssertionError("unreachable")

    def fetch_blobs(self, store: Store, repository: str, descs: list[Descriptor],
                    progress: bool = True, workers: int = 4, sink: SinkFor | None = None) -> None:
        """Fetch the blobs the store lacks, in parallel, with a progress display on stderr
        (only when stderr is a terminal and ``progress`` is true); ``sink(desc)`` may give a
        blob a sink (:meth:`fetch_blob`)."""
        sink_for: SinkFor = sink or (lambda d: None)
        todo = list({d.digest: d for d in descs if not store.has(d.digest)}.values())
        if not todo:
            return
        workers = max(1, min(workers, len(todo)))
        if not (progress and sys.stderr.isatty()):
            _each(workers, todo, lambda d: self.fetch_blob(store, repository, d, sink=sink_for(d)))
            return
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                   TransferSpeedColumn)
        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TransferSpeedColumn(), console=Console(stderr=True), transient=False)

        def one(d: Descriptor) -> None:
            task = bar.add_task(d.digest[7:19], total=d.size)
            self.fetch_blob(store, repository, d, lambda n: bar.update(task, advance=n), sink_for(d))

        with bar:
            _each(workers, todo, one)


def _each(workers: int, items: list[Descriptor], fn: Callable[[Descriptor], None]) -> None:
    """``fn`` over ``items`` on ``workers`` threads; the first error is raised."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(fn, d) for d in items]:
            future.result()


def _read_limited(r: requests.Response, limit: int, where: str) -> bytes:
    parts: list[bytes] = []
    total = 0
    for chunk in r.iter_content(CHUNK):
        total += len(chunk)
        if total > limit:
            raise CmbuildError(f"the answer is larger than {limit} bytes", where=where)
        parts.append(chunk)
    return b"".join(parts)
