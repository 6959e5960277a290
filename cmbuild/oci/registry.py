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
from typing import Callable
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from ..errors import CmbuildError
from ..store import CHUNK, Store, sha256_bytes
from .auth import Authenticator
from .blobs import BlobSink, SinkFor
from .image import MANIFEST_ACCEPT, MAX_DOCUMENT, Descriptor
from .reference import is_loopback

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
# small reads: a broken connection loses at most this much of what already arrived
_STREAM_CHUNK = 64 << 10
_NETWORK_ERRORS = (requests.ConnectionError, requests.Timeout,
                   requests.exceptions.ChunkedEncodingError, urllib3.exceptions.HTTPError)


class RegistryClient:
    """Talks to one registry. Thread-safe: each thread gets its own HTTP session."""

    def __init__(self, registry: str, insecure: bool = False, *, retries: int = 5,
                 max_wait: float = 30.0, timeout: float = 60.0, backoff: float = 0.5):
        self.registry = registry
        self.retries = retries
        self.max_wait = max_wait
        self.timeout = timeout
        self.backoff = backoff
        self.verify = not insecure
        self._local = threading.local()
        if is_loopback(registry):
            self.base = f"http://{registry}"
        elif insecure:
            self.base = self._probe_insecure()
        else:
            self.base = f"https://{registry}"
        self.auth = Authenticator(registry, self.session, verify=self.verify,
                                  timeout=timeout)

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
                stream: bool) -> requests.Response:
        registry_netloc = urlsplit(self.base).netloc
        for _ in range(_MAX_REDIRECTS + 1):
            r = self.session().request(method, url, headers=headers, stream=stream,
                                       allow_redirects=False, timeout=self.timeout,
                                       verify=self.verify)
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
                stream: bool) -> requests.Response:
        for _ in range(3):
            auth = self.auth.header(repository)
            r = self._follow(method, url, {**headers, **auth}, stream)
            if r.status_code != 401:
                return r
            r.close()
            self.auth.challenge(r, repository, sent=bool(auth))  # raises when hopeless
        raise self.auth.denied(repository)

    def request(self, method: str, url: str, repository: str,
                headers: dict[str, str] | None = None, stream: bool = False) -> requests.Response:
        """Send a request with authentication, redirects and bounded retries."""
        headers = dict(headers or {})
        for attempt in range(self.retries + 1):
            try:
                r = self._authed(method, url, repository, headers, stream)
            except _NETWORK_ERRORS as e:
                if attempt == self.retries:
                    raise CmbuildError(f"cannot reach the registry: {e}", where=url) from None
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
        url = f"{self.base}/v2/{repository}/blobs/{desc.digest}"
        breaks = 0
        with store.writer() as w:
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
