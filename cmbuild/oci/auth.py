"""Registry credentials and the authentication handshake (anonymous, Basic, Bearer token).

Where credentials come from, first found wins:

1. The environment variables ``CMBUILD_REGISTRY_USER`` and ``CMBUILD_REGISTRY_PASSWORD``
   (both must be set): used for every registry cmbuild talks to, e.g. in CI.
2. The ``auths`` table of Docker's ``config.json``: ``$DOCKER_CONFIG/config.json`` when
   ``DOCKER_CONFIG`` is set, else ``~/.docker/config.json``. The entry whose key names the
   registry (``"127.0.0.1:5000"``, ``"https://index.docker.io/v1/"`` for Docker Hub, ...) is used;
   its ``auth`` is base64 of ``user:password`` (``username``/``password`` fields also work).
   Credential helpers (``credsStore``, ``credHelpers``) are not run.
3. Otherwise requests are anonymous (enough for public images; Bearer registries such as
   Docker Hub still hand out anonymous pull tokens).

The handshake: a request that gets ``401`` with ``WWW-Authenticate: Basic`` is sent again with
the credentials; with ``WWW-Authenticate: Bearer realm=...,service=...,scope=...`` a token is
asked from the realm (with the credentials, if any) and sent as ``Authorization: Bearer``. Tokens
(``token`` or ``access_token`` in the answer) are kept per scope until shortly before they
expire (``expires_in``, 60 s when absent) and fetched again on expiry or on a new 401.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from ..errors import CmbuildError, RegistryUnavailable
from .reference import normalize_registry

ENV_USER = "CMBUILD_REGISTRY_USER"
ENV_PASSWORD = "CMBUILD_REGISTRY_PASSWORD"
CREDENTIAL_SOURCES = (f"{ENV_USER}/{ENV_PASSWORD}, then the \"auths\" of "
                      "$DOCKER_CONFIG/config.json or ~/.docker/config.json")
_EARLY_REFRESH = 10.0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    source: str  # where they came from, for error messages (never the secret itself)


def docker_config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def _registry_of_key(key: str) -> str:
    key = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", key)
    return normalize_registry(key.split("/", 1)[0])


def find_credentials(registry: str) -> Credentials | None:
    user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
    if user and password is not None:
        return Credentials(user, password, f"the environment ({ENV_USER}/{ENV_PASSWORD})")
    path = docker_config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CmbuildError(f"cannot read Docker's config: {e}", where=str(path)) from None
    auths = doc.get("auths") if isinstance(doc, dict) else None
    if not isinstance(auths, dict):
        return None
    want = normalize_registry(registry)
    for key, entry in auths.items():
        if not isinstance(entry, dict) or _registry_of_key(key) != want:
            continue
        where = f"{path} auths[{key!r}]"
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise CmbuildError("\"auth\" is not base64 of user:password", where=where)
            return Credentials(user, password, where)
        if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
            return Credentials(entry["username"], entry["password"], where)
    return None


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ("bearer", {"realm": "x", "service": "y"})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in re.finditer(r'([A-Za-z_]+)\s*=\s*(?:"([^"]*)"|([^,\s]*))', rest)}
    return scheme.lower(), params


class Authenticator:
    """Holds the credentials and tokens for one registry; safe to share between threads."""

    def __init__(self, registry: str, session: Callable[[], requests.Session],
                 verify: bool = True, timeout: float = 30.0, push: bool = False):
        self.registry = registry
        self.actions = "pull,push" if push else "pull"
        self.creds = find_credentials(registry)
        self._session = session
        self._verify = verify
        self._timeout = timeout
        self._lock = threading.Lock()
        self._scheme: str | None = None
        self._params: dict[str, str] = {}
        self._tokens: dict[str, tuple[str, float]] = {}

    def scope(self, repository: str) -> str:
        return f"repository:{repository}:{self.actions}"

    def header(self, repository: str) -> dict[str, str]:
        """The Authorization header for a request about ``repository`` (maybe none)."""
        with self._lock:
            if self._scheme == "basic" and self.creds:
                return {"Authorization": _basic(self.creds)}
            if self._scheme == "bearer":
                scope = self.scope(repository)
                tok = self._tokens.get(scope)
                if tok is None or time.monotonic() > tok[1]:
                    tok = self._fetch_token(scope)
                return {"Authorization": f"Bearer {tok[0]}"}
        return {}

    def challenge(self, response: requests.Response, repository: str, sent: bool) -> None:
        """Learn from a 401 how to authenticate; raise when trying again cannot help."""
        header = response.headers.get("WWW-Authenticate", "")
        scheme, params = parse_challenge(header)
        with self._lock:
            if scheme == "basic":
                if self.creds is None:
                    raise self.needs_credentials()
                if sent and self._scheme == "basic":
                    raise self.rejected()
                self._scheme = "basic"
            elif scheme == "bearer" and params.get("realm"):
                if sent and self._scheme == "bearer" and params.get("error") != "invalid_token":
                    # a fresh token was refused: the credentials do not grant this scope
                    raise self.denied(repository)
                self._scheme, self._params = "bearer", params
                self._tokens.pop(self.scope(repository), None)
                self._fetch_token(self.scope(repository))
            else:
                raise CmbuildError(f"unsupported authentication challenge {header!r}",
                                   where=self.registry)

    def _fetch_token(self, scope: str) -> tuple[str, float]:
        realm = self._params["realm"]
        query = {"scope": scope}
        if self._params.get("service"):
            query["service"] = self._params["service"]
        headers = {"Authorization": _basic(self.creds)} if self.creds else {}
        try:
            r = self._session().get(realm, params=query, headers=headers, timeout=self._timeout,
                                    verify=self._verify)
        except requests.RequestException as e:
            raise RegistryUnavailable(f"cannot get a token from {realm}: {e}",
                               where=self.registry) from None
        if r.status_code == 401 and self.creds:
            raise self.rejected()
        if r.status_code == 401:
            raise self.needs_credentials()
        if r.status_code != 200:
            raise RegistryUnavailable(f"the token server answered HTTP {r.status_code}",
                               where=f"{self.registry} ({realm})")
        try:
            doc: Any = r.json()
        except ValueError:
            doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise CmbuildError("the token server's answer has no token",
                               where=f"{self.registry} ({realm})")
        expires_in = doc.get("expires_in")
        life = 60.0
        if isinstance(expires_in, (int, float)) and expires_in > 0:
            life = float(expires_in)
        tok = (token, time.monotonic() + max(life - _EARLY_REFRESH, life / 2))
        self._tokens[scope] = tok
        return tok

    def needs_credentials(self) -> CmbuildError:
        return RegistryUnavailable("the registry asks for credentials and none were found "
                            "(HTTP 401)", where=self.registry,
                            hint=f"cmbuild reads credentials from {CREDENTIAL_SOURCES}")

    def rejected(self) -> CmbuildError:
        src = self.creds.source if self.creds else "nowhere"
        return RegistryUnavailable(f"the registry refused the credentials from {src} (HTTP 401)",
                            where=self.registry,
                            hint=f"check the user and password; cmbuild reads credentials "
                                 f"from {CREDENTIAL_SOURCES}")

    def denied(self, repository: str) -> CmbuildError:
        who = f"the credentials from {self.creds.source}" if self.creds else "anonymous access"
        return RegistryUnavailable(f"access to {repository} is denied for {who} (HTTP 401)",
                            where=self.registry,
                            hint=f"check the repository name and the credentials "
                                 f"({CREDENTIAL_SOURCES})")


def _basic(creds: Credentials | None) -> str:
    assert creds is not None
    raw = f"{creds.username}:{creds.password}".encode()
    return "Basic " + base64.b64encode(raw).decode()
