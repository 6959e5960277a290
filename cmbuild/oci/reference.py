"""Image references: ``[registry/]repository[:tag][@sha256:<hex>]``.

Follows the Docker reference grammar: the first path component is a registry when it contains
a ``.`` or a ``:`` or is ``localhost``; otherwise the image is on Docker Hub, where a
one-component name lives under ``library/`` (``alpine:3.20`` is
``registry-1.docker.io/library/alpine:3.20``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import CmbuildError
from ..store import check_digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
                   r"(?::[0-9]+)?$")


@dataclass(frozen=True)
class Reference:
    """A parsed image reference.

    ``registry`` is the host[:port] to talk to (``registry-1.docker.io`` for Docker Hub),
    ``repository`` the path inside it, ``tag`` and ``digest`` as given (either may be None).
    """

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def display_registry(self) -> str:
        return DOCKER_HUB if self.registry == DOCKER_HUB_API else self.registry

    @property
    def name(self) -> str:
        """The canonical name without tag or digest, e.g. ``docker.io/library/alpine``."""
        return f"{self.display_registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        return self.digest or self.tag or "latest"


def normalize_registry(host: str) -> str:
    """The API host of a registry name (Docker Hub's aliases all map to one host)."""
    host = host.lower() if host.startswith("[") else host
    bare = host.split("/", 1)[0]
    return DOCKER_HUB_API if bare.lower() in _HUB_ALIASES else bare


def parse_reference(text: str) -> Reference:
    """Parse ``text`` or raise a CmbuildError saying what is wrong with it."""
    where = f"image reference {text!r}"
    if not text or text.strip() != text or any(c.isspace() for c in text):
        raise CmbuildError("an image reference must be a non-empty string without spaces",
                           where=where)
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        check_digest(digest, where)
    registry = DOCKER_HUB_API
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry = normalize_registry(first)
        rest = remainder
        if not _HOST.match(first):
            raise CmbuildError(f"{first!r} is not a valid registry host", where=where)
    tag = None
    last_slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > last_slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG.match(tag):
            raise CmbuildError(f"{tag!r} is not a valid tag", where=where)
    if not rest:
        raise CmbuildError("the repository name is missing", where=where)
    for comp in rest.split("/"):
        if not _COMPONENT.match(comp):
            raise CmbuildError(f"{comp!r} is not a valid repository name component "
                               "(lowercase letters, digits and separators . _ -)", where=where)
    if registry == DOCKER_HUB_API and "/" not in rest:
        rest = "library/" + rest
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, rest, tag, digest)


def parse_repository(text: str, where: str) -> tuple[str, str]:
    """``<registry>/<repository>`` without a tag or digest -> (registry, repository)."""
    ref = parse_reference(text)
    if ref.digest or ":" in text.rsplit("/", 1)[-1]:
        raise CmbuildError(f"expected a repository without a tag or digest, got {text!r}",
                           where=where, hint='e.g. "ghcr.io/you/app-cache"')
    return ref.registry, ref.repository


def is_loopback(registry: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``[::1]`` (with or without a port)."""
    host = registry
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
