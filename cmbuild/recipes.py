"""Recipes: the pinned inputs of the stages that build from Debian packages.

A recipe is a TOML file ``recipes/<kind>/<version>.toml``. A recipe version is immutable: to
change what it pins, write a new version. Each loaded recipe carries the sha256 of its file's
bytes (``recipe.sha256``), which goes into the stage key, so editing a recipe in place can never
silently reuse an old build.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, \
    model_validator

from .debian import DebPackage
from .errors import CmbuildError
from .store import sha256_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

def recipes_root() -> Path:
    """Where the recipes are: ``$CMBUILD_RECIPES`` when set, else the ``recipes/`` folder that
    ships with cmbuild (beside the package in a source checkout)."""
    env = os.environ.get("CMBUILD_RECIPES")
    if env:
        return Path(env)
    packaged = Path(__file__).resolve().parent / "recipes"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "recipes"


_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$")
_APPLET_RE = re.compile(r"^[a-z0-9][a-z0-9_.\[\]-]*$")


class Recipe(BaseModel):
    """What every recipe has: its version (equal to the file name) and where it was read from."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    version: str
    _sha256: str = PrivateAttr(default="")
    _path: Path | None = PrivateAttr(default=None)

    @property
    def sha256(self) -> str:
        """``sha256:<hex>`` of the recipe file's bytes (part of the stage key)."""
        return self._sha256

    @property
    def path(self) -> Path | None:
        return self._path


class PackagePin(BaseModel):
    """``[[package]]``: one Debian package, pinned by version and the sha256 of its ``.deb``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    version: str
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError(f"expected 64 lower-case hex digits, got {v!r}")
        return v

    def deb(self) -> DebPackage:
        return DebPackage(self.name, self.version, self.sha256)


class DebianRecipe(Recipe):
    """A recipe made of pinned packages of one Debian suite and architecture."""

    suite: str
    architecture: str
    packages: list[PackagePin] = Field(alias="package", min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "DebianRecipe":
        names = [p.name for p in self.packages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"package(s) pinned more than once: {', '.join(dup)}")
        return self

    def debs(self) -> list[DebPackage]:
        return [p.deb() for p in self.packages]

    def package(self, name: str) -> PackagePin:
        for p in self.packages:
            if p.name == name:
                return p
        raise CmbuildError(f"the recipe pins no package {name!r}", where=str(self.path or ""))


class RuntimeRecipe(DebianRecipe):
    """``recipes/runtime/<version>.toml``: the runtime layer (crun, its libraries, busybox).

    ``busybox_applets`` are the names linked to ``/bin/busybox`` in the layer.
    ``libsystemd`` chooses what provides ``libsystemd.so.0`` to crun: ``"debian"`` (the
    ``libsystemd0`` package) or ``"stub"`` (cmbuild's small stub library: see
    docs/runtime-layer.md)."""

    busybox_applets: list[str]
    libsystemd: Literal["debian", "stub"] = "debian"

    @field_validator("busybox_applets")
    @classmethod
    def _applets(cls, v: list[str]) -> list[str]:
        for a in v:
            if not _APPLET_RE.match(a):
                raise ValueError(f"not a busybox applet name: {a!r}")
            if a in ("busybox", "crun", "init"):
                raise ValueError(f"applet {a!r} would shadow a file of the layer")
        if len(set(v)) != len(v):
            raise ValueError("busybox_applets lists a name twice")
        return sorted(v)

    @model_validator(mode="after")
    def _needs(self) -> "RuntimeRecipe":
        names = {p.name for p in self.packages}
        for required in ("crun", "busybox-static"):
            if required not in names:
                raise ValueError(f"the runtime layer needs package {required!r}")
        if self.libsystemd == "stub" and "libsystemd0" in names:
            raise ValueError('libsystemd = "stub" replaces package libsystemd0: do not pin it')
        if self.libsystemd == "debian" and "libsystemd0" not in names:
            raise ValueError('libsystemd = "debian" needs package libsystemd0 pinned')
        return self


R = TypeVar("R", bound=Recipe)


def available_versions(root: Path, kind: str) -> list[str]:
    d = Path(root) / kind
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def _format_error(e: ValidationError) -> str:
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}")
    return "; ".join(out)


def load_recipe(root: Path, kind: str, version: str, model: type[R]) -> R:
    """Read and validate ``<root>/<kind>/<version>.toml`` as ``model``."""
    if not _VERSION_RE.match(version):
        raise CmbuildError(f"not a recipe version: {version!r}")
    path = Path(root) / kind / f"{version}.toml"
    if not path.is_file():
        have = available_versions(root, kind)
        raise CmbuildError(f"there is no {kind} recipe version {version}",
                           where=str(Path(root) / kind),
                           hint=f"available: {', '.join(have)}" if have else
                           f"no {kind} recipes at all in {root}")
    data = path.read_bytes()
    try:
        doc: dict[str, Any] = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise CmbuildError(f"not valid TOML: {e}", where=str(path)) from e
    try:
        recipe = model.model_validate(doc)
    except ValidationError as e:
        raise CmbuildError(_format_error(e), where=str(path)) from None
    if recipe.version != version:
        raise CmbuildError(f"the file says version = {recipe.version!r}, its name says "
                           f"{version!r}", where=str(path))
    recipe._sha256 = sha256_bytes(data)
    recipe._path = path
    return recipe


def load_runtime_recipe(root: Path, version: str) -> RuntimeRecipe:
    """The runtime layer recipe ``<root>/runtime/<version>.toml``."""
    return load_recipe(root, "runtime", version, RuntimeRecipe)


# ===== kernel recipes (owned by the guest/kernel engineer; cmbuild/stages/kernel.py) ========

KERNEL_MACHINES = ("qemu", "cartesi")


class KernelRecipe(Recipe):
    """``recipes/kernel/<machine>-<version>.toml``: the kernel one machine boots.

    ``machine = "qemu"``: Debian's riscv64 kernel package (exactly one ``[[package]]`` pin, with
    ``suite`` and ``architecture``) and the modules the boot shim loads (``modules``, by module
    name; their dependencies are added from each module's ``depends=``), plus kernel command
    line words (``cmdline``).
    ``machine = "cartesi"``: the Cartesi kernel (OpenSBI + Linux in one RAM image) as a file
    downloaded from ``url``, checked against ``sha256``."""

    machine: str
    # qemu
    suite: str | None = None
    architecture: str | None = None
    packages: list[PackagePin] = Field(default_factory=list, alias="package")
    modules: list[str] = Field(default_factory=list)
    cmdline: list[str] = Field(default_factory=list)
    # cartesi
    url: str | None = None
    kernel_sha256: str | None = Field(default=None, alias="sha256")

    @field_validator("machine")
    @classmethod
    def _machine(cls, v: str) -> str:
        if v not in KERNEL_MACHINES:
            raise ValueError(f"machine must be one of {', '.join(KERNEL_MACHINES)}, got {v!r}")
        return v

    @field_validator("modules")
    @classmethod
    def _modules(cls, v: list[str]) -> list[str]:
        for m in v:
            if not re.fullmatch(r"[a-z0-9_\-]+", m):
                raise ValueError(f"not a kernel module name: {m!r}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> "KernelRecipe":
        if self.machine == "qemu":
            if not self.suite or not self.architecture:
                raise ValueError("a qemu kernel recipe needs suite and architecture")
            if len(self.packages) != 1:
                raise ValueError("a qemu kernel recipe pins exactly one [[package]] "
                                 "(the linux-image package)")
            if self.url or self.kernel_sha256:
                raise ValueError("url and sha256 are for cartesi kernel recipes")
        else:
            if not self.url or not self.kernel_sha256:
                raise ValueError("a cartesi kernel recipe needs url and sha256")
            if not re.fullmatch(r"[0-9a-f]{64}", self.kernel_sha256):
                raise ValueError("sha256 must be 64 lower-case hex digits, "
                                 f"got {self.kernel_sha256!r}")
            if not self.url.startswith(("https://", "http://")):
                raise ValueError(f"url must be http(s), got {self.url!r}")
            if self.packages or self.modules:
                raise ValueError("package and modules are for qemu kernel recipes")
        return self

    def package(self) -> PackagePin:
        return self.packages[0]

    @property
    def file_sha256(self) -> str:
        """For cartesi recipes: ``sha256:<hex>`` of the kernel file (the url's content)."""
        return "sha256:" + (self.kernel_sha256 or "")


def load_kernel_recipe(root: Path, name: str) -> KernelRecipe:
    """The kernel recipe ``<root>/kernel/<name>.toml`` (``name`` as ``qemu-6.12.117-1``)."""
    return load_recipe(root, "kernel", name, KernelRecipe)
