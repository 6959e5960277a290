"""Real registries for the pull tests: Debian's ``docker-registry`` (distribution 2.8) on
loopback, anonymous, with htpasswd basic auth, and with token auth served by a small token
server written here (RS256 JWTs signed with an ``openssl``-made key, checked by the registry
against the matching certificate). Plus a fault-injecting HTTP proxy and a stand-in for blob
storage that a registry redirects to. Everything listens on 127.0.0.1 and is stopped by its
fixture."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
SERVICE = "cmbuild-test"
ISSUER = "cmbuild-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    for _ in range(200):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text() if log else ''}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not start")


# ----- token server -------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class TokenServer:
    """Issues registry tokens to known users, for the repositories they may use."""

    key: Path
    cert: Path
    users: dict[str, str]
    allowed: dict[str, set[str]]  # user -> repository names it may pull/push
    expires_in: int = 300
    port: int = 0
    issued: list[dict[str, Any]] = field(default_factory=list)

    def token(self, user: str, scope: str | None) -> str:
        access = []
        for item in (scope or "").split(" "):
            parts = item.split(":")
            if len(parts) == 3 and parts[0] == "repository" and parts[1] in self.allowed[user]:
                access.append({"type": "repository", "name": parts[1],
                               "actions": parts[2].split(",")})
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": user, "aud": SERVICE, "exp": now + self.expires_in,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{b64url(json.dumps(header).encode())}." \
                        f"{b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                             input=signing_input.encode(), check=True,
                             capture_output=True).stdout
        self.issued.append({"user": user, "scope": scope, "access": access})
        return f"{signing_input}.{b64url(sig)}"

    def handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                auth = self.headers.get("Authorization", "")
                user = None
                if auth.startswith("Basic "):
                    name, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(name) == pw:
                        user = name
                if user is None or query.get("service") != [SERVICE]:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                tok = server.token(user, " ".join(query.get("scope", [])))
                body = json.dumps({"token": tok, "access_token": tok,
                                   "expires_in": server.expires_in}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "token.key", tmp / "token.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
                    "-days", "2", "-subj", "/CN=cmbuild-test-token", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return key, cert


# ----- registry -----------------------------------------------------------------------------
@dataclass
class Registry:
    port: int
    root: Path
    creds: tuple[str, str] | None = None
    token_server: TokenServer | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def push(self, layout: Path, tag: str, repo: str, all_images: bool = False) -> None:
        """Copy ``layout:tag`` to ``repo:tag`` here with skopeo, keeping every digest."""
        cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests"]
        if all_images:
            cmd.append("--all")
        if self.creds:
            cmd += ["--dest-creds", f"{self.creds[0]}:{self.creds[1]}"]
        cmd += [f"oci:{layout}:{tag}", f"docker://{self.host}/{repo}:{tag}"]
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(self.root / "skopeo-auth.json")}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"skopeo copy failed: {done.stderr}")


def start_registry(tmp: Path, auth: dict[str, Any] | None = None) -> tuple[
        subprocess.Popen, Registry]:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(tmp / "data")},
                    "maintenance": {"uploadpurging": {"enabled": False}}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "cmbuild-test-secret"},
    }
    if auth:
        config["auth"] = auth
    conf = tmp / "config.yml"
    conf.write_text(json.dumps(config))  # YAML is a superset of JSON
    log = tmp / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY_BIN, "serve", str(conf)], stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        wait_http(port, proc, log)
    except Exception:
        proc.kill()
        proc.wait()
        raise
    return proc, Registry(port, tmp)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def pull_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous registry."""
    proc, reg = start_registry(tmp_path_factory.mktemp("registry-anon"))
    yield reg
    stop(proc)


BASIC_USER, BASIC_PASSWORD = "alice", "wonderland"


@pytest.fixture(scope="session")
def pull_registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with htpasswd basic auth (user alice, password wonderland)."""
    tmp = tmp_path_factory.mktemp("registry-basic")
    line = subprocess.run(["htpasswd", "-Bbn", BASIC_USER, BASIC_PASSWORD], check=True,
                          capture_output=True, text=True).stdout.strip()
    (tmp / "htpasswd").write_text(line + "\n")
    proc, reg = start_registry(tmp, {"htpasswd": {"realm": "cmbuild-test",
                                                  "path": str(tmp / "htpasswd")}})
    reg.creds = (BASIC_USER, BASIC_PASSWORD)
    yield reg
    stop(proc)


TOKEN_USER, TOKEN_PASSWORD = "bob", "builder"


@pytest.fixture(scope="session")
def pull_registry_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with token auth; the token server lets bob use repositories under
    ``bob/`` only."""
    tmp = tmp_path_factory.mktemp("registry-token")
    key, cert = make_cert(tmp)
    tokens = TokenServer(key, cert, {TOKEN_USER: TOKEN_PASSWORD},
                         {TOKEN_USER: {"bob/app", "bob/other", "bob/cache"}})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), tokens.handler())
    tokens.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        proc, reg = start_registry(tmp, {"token": {
            "realm": f"http://127.0.0.1:{tokens.port}/token", "service": SERVICE,
            "issuer": ISSUER, "rootcertbundle": str(cert)}})
    except Exception:
        httpd.shutdown()
        raise
    reg.creds = (TOKEN_USER, TOKEN_PASSWORD)
    reg.token_server = tokens
    yield reg
    stop(proc)
    httpd.shutdown()
    httpd.server_close()


# ----- fault-injecting proxy ----------------------------------------------------------------
@dataclass
class Fault:
    """What to do to the next ``times`` requests whose path ends with ``suffix``:
    ``cut`` (send ``after`` bytes of the body, then close), ``status`` (answer ``code`` with
    ``Retry-After``), ``corrupt`` (flip a byte of the body) or ``redirect`` (307 to
    ``target`` + the path)."""

    suffix: str
    kind: str
    times: int = 1
    after: int = 0
    code: int = 503
    retry_after: str | None = "1"
    target: str = ""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of one upstream, which can misbehave."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.log: list[Seen] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and path.split("?")[0].endswith(f.suffix):
                    f.times -= 1
                    return f
        return None

    def requests_for(self, suffix: str, method: str = "GET") -> list[Seen]:
        return [s for s in self.log if s.method == method and s.path.endswith(suffix)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, headers: dict[str, str], body: bytes,
                      length: int | None = None) -> None:
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def _forward(self) -> None:
                seen = Seen(self.command, self.path, dict(self.headers.items()))
                proxy.log.append(seen)
                fault = proxy.take_fault(self.path)
                if fault and fault.kind == "status":
                    seen.status = fault.code
                    headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    self._send(fault.code, headers, b"")
                    return
                if fault and fault.kind == "redirect":
                    seen.status = 307
                    self._send(307, {"Location": fault.target + self.path}, b"")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                # Host is kept: the registry builds upload locations from it, so that
                # uploads come back through the proxy too
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                seen.status = resp.status
                out = {k: v for k, v in resp.getheaders()
                       if k.lower() not in ("content-length", "connection", "transfer-encoding")}
                if fault and fault.kind == "corrupt" and data:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if fault and fault.kind == "cut":
                    self.send_response(resp.status)
                    for k, v in out.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[:fault.after])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self._send(resp.status, out, data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler


class BlobHost:
    """Stands in for a registry's blob storage: serves given bytes at any path ending with a
    digest, and records the headers it was sent."""

    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs
        self.log: list[Seen] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                host.log.append(Seen("GET", self.path, dict(self.headers.items())))
                data = host.blobs.get(self.path.rsplit("/", 1)[-1])
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def isolated_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No credentials from the machine running the tests: an empty DOCKER_CONFIG and no
    CMBUILD_REGISTRY_* variables."""
    d = tmp_path / "docker-config"
    d.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    monkeypatch.delenv("CMBUILD_REGISTRY_USER", raising=False)
    monkeypatch.delenv("CMBUILD_REGISTRY_PASSWORD", raising=False)
    return d


def write_docker_config(d: Path, registry: str, user: str, password: str) -> None:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (d / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))

