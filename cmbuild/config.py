"""``cartesi.toml``: the pydantic models of a project's configuration, and how to load it.

Unknown keys are rejected. Every error names the key path and the problem, e.g.
``cartesi.toml: [image].digest: expected sha256:<64 hex>, got 'abc'``. Key names follow
Cartesi's own CLI where the concept exists there (``ram_length``, ``bootargs``,
``max_mcycle``, ``assert_rolling_template``, drives' ``builder``/``format``/``mount``...).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationError, field_validator, model_validator)

from .errors import CmbuildError
from .machines import DRIVE_LABEL_RULE, valid_label

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "cartesi.toml"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_UNITS = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(Ki|Mi|Gi|Ti)?\s*$")
_DECIMAL_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT])(B|b|iB)?\s*$")


def parse_size(value: Any) -> int:
    """A size in bytes from an integer or a string with a binary unit: ``128Mi``, ``4Gi``."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 128Mi, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2) or ""]
        d = _DECIMAL_RE.match(value)
        if d and d.group(3) != "iB":
            unit = d.group(2).upper() + "i"
            unit = "Ki" if unit == "Ki" else unit
            raise ValueError(f"sizes use binary units: did you mean '{d.group(1)}{unit}'? "
                             f"(got {value!r}; units are Ki, Mi, Gi, Ti)")
        raise ValueError(f"expected a size like 128Mi or a number of bytes, got {value!r}")
    raise ValueError(f"expected a size like 128Mi, got {type(value).__name__}")


Size = Annotated[int, BeforeValidator(parse_size)]
Compression = Literal["none", "lz4", "zstd", "xz"]


def _strict(**kw: Any) -> ConfigDict:
    return ConfigDict(extra="forbid", populate_by_name=True, **kw)


class ImageConfig(BaseModel):
    """``[image]``: which OCI image to build."""

    model_config = _strict()
    ref: str | None = None
    digest: str | None = None
    path: Path | None = None
    platform: str = "linux/riscv64"
    insecure: bool = False
    max_unpacked_size: Size = 8 << 30
    mtime_clamp: int = Field(0, ge=0)

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not DIGEST_RE.match(v):
            raise ValueError(f"expected sha256:<64 hex>, got {v!r}")
        return v

    @field_validator("platform")
    @classmethod
    def _platform(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?$", v):
            raise ValueError(f"expected os/architecture[/variant] like linux/riscv64, got {v!r}")
        return v

    @model_validator(mode="after")
    def _source(self) -> "ImageConfig":
        if self.ref is None and self.digest is None and self.path is None:
            raise ValueError("name the image: set ref (and digest) for a registry, or path for "
                             "an OCI layout directory or a docker-save tarball")
        if self.path is None and self.ref is None:
            raise ValueError("a digest alone does not say where to pull from: set ref too")
        return self


class RuntimeConfig(BaseModel):
    """``[runtime]``: which runtime layer recipe (``recipes/runtime/<version>.toml``)."""

    model_config = _strict()
    version: str = "0.1.0"
    compression: Compression = "none"

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not re.match(r"^[0-9A-Za-z][0-9A-Za-z.+_-]*$", v):
            raise ValueError(f"not a recipe version: {v!r}")
        return v


def _str_list(v: Any) -> Any:
    if isinstance(v, str):
        return [v]
    return v


StrList = Annotated[list[str], BeforeValidator(_str_list)]


class MachineConfig(BaseModel):
    """``[machine]``: how the machine boots and what the container runs."""

    model_config = _strict()
    backend: Literal["cartesi", "qemu"] | None = None
    ram_length: Size = 128 << 20
    ram_image: Path | None = None
    bootargs: StrList = Field(default_factory=list, validation_alias=AliasChoices("bootargs", "boot_args"))
    entrypoint: StrList | None = None
    cmd: StrList | None = None
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    max_mcycle: int | None = Field(None, ge=0)
    assert_rolling_template: bool = False
    timeout: float = Field(900.0, gt=0)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name or "=" in name or "\0" in name:
                raise ValueError(f"not an environment variable name: {name!r}")
        return v

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"workdir must be an absolute path inside the container, got {v!r}")
        return v


class DriveConfig(BaseModel):
    """``[drives.<name>]``: a drive of the machine. ``app`` is the image's own drive."""

    model_config = _strict()
    builder: Literal["image", "directory", "tar", "empty"] | None = None
    format: Literal["squashfs", "ext2"] = "squashfs"
    compression: Compression = "none"
    extra_size: Size = 0
    size: Size | None = None
    mount: str | None = None
    directory: Path | None = None
    filename: Path | None = None
    shared: bool = False
    user: str | None = None

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, v: Any) -> Any:
        return "squashfs" if v == "sqfs" else v

    @field_validator("mount")
    @classmethod
    def _mount(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError(f"mount must be an absolute path inside the container, got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "DriveConfig":
        if self.format == "ext2" and self.compression != "none":
            raise ValueError("ext2 drives are not compressed: use compression = \"none\" or format = \"squashfs\"")
        if self.format == "squashfs" and self.extra_size:
            raise ValueError("extra_size needs a writable drive: use format = \"ext2\"")
        if self.format == "squashfs" and self.size is not None:
            raise ValueError("size is for ext2 drives: a squashfs drive is exactly as large as its "
                             "content (use format = \"ext2\" for a drive of a given size)")
        if self.size is not None and self.extra_size:
            raise ValueError("give size (the whole drive) or extra_size (free space), not both")
        if self.builder == "directory" and self.directory is None:
            raise ValueError("builder = \"directory\" needs directory = \"<path>\"")
        if self.builder == "tar" and self.filename is None:
            raise ValueError("builder = \"tar\" needs filename = \"<path to a .tar>\"")
        if self.builder == "empty":
            if self.size is None:
                raise ValueError("builder = \"empty\" needs size = \"<size>\", e.g. \"64Mi\"")
            if self.format != "ext2":
                raise ValueError("an empty drive must be writable: format = \"ext2\"")
        return self


SERVICE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,11}$")
SERVICE_NAME_RULE = "1 to 12 lowercase letters, digits or '-', starting with a letter"


class ServiceConfig(ImageConfig):
    """``[services.<name>]``: a container started before the app, from its own image (named
    exactly like ``[image]``), with its own ``config.json``; the app reaches it on 127.0.0.1."""

    entrypoint: StrList | None = None
    cmd: StrList | None = None
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    user: str | None = None
    ready_port: int | None = Field(None, ge=1, le=65535)
    ready_timeout: float = Field(60.0, gt=0, le=3600)
    stop_timeout: float = Field(3.0, ge=0, le=3600)   # SIGTERM, then SIGKILL after this
    init: bool = False   # run under a small init that forwards signals (docker run --init)

    _env = field_validator("env")(MachineConfig._env.__func__)          # type: ignore[attr-defined]
    _workdir = field_validator("workdir")(MachineConfig._workdir.__func__)  # type: ignore[attr-defined]

    def image_identity(self) -> tuple[Any, ...]:
        """What makes two images the same for the build (then they share one drive)."""
        return image_identity(self)


def image_identity(img: ImageConfig) -> tuple[Any, ...]:
    return (str(img.path) if img.path else None, img.ref, img.digest, img.platform, img.insecure,
            img.max_unpacked_size, img.mtime_clamp)


class RollupsConfig(BaseModel):
    """``[rollups]``: the project is a rollups app (a table, even an empty one, says so)."""

    model_config = _strict()
    # "builtin": the runtime layer's rollups server answers the Rollup HTTP API at
    # http://127.0.0.1:5004 (ROLLUP_HTTP_SERVER_URL); "image": the image brings its own guest
    # tools, and /dev/cmio is passed into the container instead
    server: Literal["builtin", "image"] = "builtin"


class CacheConfig(BaseModel):
    """``[cache]``: where the content-addressed store lives, and the remote stage cache (an
    OCI registry repository) shared with other machines."""

    model_config = _strict()
    dir: Path = Path("cache")
    remote: str | None = None   # "<registry>/<repository>"
    push: bool = False          # add this build's stage outputs to the remote
    insecure: bool = False      # the remote's TLS certificate is not checked (loopback is HTTP)

    @field_validator("remote")
    @classmethod
    def _remote(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from .oci.reference import parse_repository
        try:
            parse_repository(v, "")
        except CmbuildError as e:
            raise ValueError(f"a remote cache is a repository: {e.message}") from None
        return v


class Project(BaseModel):
    """The whole of ``cartesi.toml``."""

    model_config = _strict()
    image: ImageConfig
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    machine: MachineConfig = Field(default_factory=MachineConfig)
    drives: dict[str, DriveConfig] = Field(default_factory=dict)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    rollups: RollupsConfig | None = None
    services: dict[str, ServiceConfig] = Field(default_factory=dict)   # in start order

    @field_validator("services")
    @classmethod
    def _services(cls, v: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        for name in v:
            if not SERVICE_NAME.match(name):
                raise ValueError(f"service name {name!r}: use {SERVICE_NAME_RULE} (its drive is "
                                 f"labelled svc-<name> in the machine)")
        ports: dict[int, str] = {}
        for name, svc in v.items():
            if svc.ready_port is not None:
                if svc.ready_port in ports:
                    raise ValueError(f"services {ports[svc.ready_port]!r} and {name!r} both say "
                                     f"ready_port = {svc.ready_port}: one port, one listener")
                ports[svc.ready_port] = name
        return v

    @field_validator("drives")
    @classmethod
    def _drives(cls, v: dict[str, DriveConfig]) -> dict[str, DriveConfig]:
        for name, drive in v.items():
            if not valid_label(name):
                raise ValueError(f"drive name {name!r}: use {DRIVE_LABEL_RULE} (it becomes the "
                                 "drive's label in the machine)")
            if name in ("root", "config"):
                raise ValueError(f"drive name {name!r} is reserved ({'the runtime layer' if name == 'root' else 'the container config'})")
            if name == "services" or name.startswith("svc-"):
                raise ValueError(f"drive name {name!r} is reserved (services and svc-<name> are "
                                 "the services' drives)")
            if name == "app":
                if drive.builder not in (None, "image"):
                    raise ValueError("[drives.app] is the image's drive: its builder is \"image\"")
                if drive.mount is not None:
                    raise ValueError("[drives.app] is the container's root: it has no mount path")
            elif drive.builder in (None, "image"):
                raise ValueError(f"[drives.{name}] needs builder = \"directory\", \"tar\" or \"empty\"")
            elif drive.mount is None:
                raise ValueError(f"[drives.{name}] needs mount = \"<path in the container>\"")
        return v

    @model_validator(mode="after")
    def _ports(self) -> "Project":
        if self.rollups is not None and self.rollups.server == "builtin":
            for name, svc in self.services.items():
                if svc.ready_port == 5004:
                    raise ValueError(f"[services.{name}].ready_port = 5004 is the built-in "
                                     "rollups server's port")
        return self

    def app_drive(self) -> DriveConfig:
        return self.drives.get("app") or DriveConfig(builder="image")

    def extra_drives(self) -> dict[str, DriveConfig]:
        return {k: v for k, v in sorted(self.drives.items()) if k != "app"}


def _loc(loc: tuple[Any, ...]) -> str:
    """('drives', 'data', 'format') -> '[drives.data].format'."""
    parts = [str(p) for p in loc if not (isinstance(p, str) and p.startswith(("function-", "literal")))]
    if not parts:
        return "(top level)"
    if parts[0] in ("drives", "services") and len(parts) >= 2:
        table, rest = f"{parts[0]}.{parts[1]}", parts[2:]
    elif len(parts) >= 2:
        table, rest = parts[0], parts[1:]
    elif parts[0] in Project.model_fields:
        return f"[{parts[0]}]"
    else:
        return parts[0]
    return f"[{table}]" + ("." + ".".join(rest) if rest else "")


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(err.get("msg", ""))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        msg += f" (got {err.get('input')!r})"
    return msg


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc, msg = tuple(err.get("loc", ())), _message(err)
        if not loc and msg.startswith("["):   # a check across tables names its key itself
            lines.append(f"{source}: {msg}")
        else:
            lines.append(f"{source}: {_loc(loc)}: {msg}")
    return "\n".join(lines)


def parse_project(text: str, source: str = CONFIG_NAME) -> Project:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CmbuildError(f"invalid TOML: {e}", where=source) from None
    try:
        return Project.model_validate(data)
    except ValidationError as e:
        raise CmbuildError(format_validation_error(e, source)) from None


def load_project(path: Path) -> Project:
    """Read and validate ``cartesi.toml``; relative paths in it are relative to its folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CmbuildError("no cartesi.toml here", where=str(path),
                           hint="`cmbuild init [IMAGE]` writes one; or run from the project folder (or pass -c FILE)") from None
    except UnicodeDecodeError as e:
        raise CmbuildError(f"not UTF-8 text: {e}", where=str(path)) from None
    project = parse_project(text, path.name)
    base = path.parent
    for table, img in [("image", project.image)] + [(f"services.{n}", s) for n, s in project.services.items()]:
        if img.path is not None and not img.path.is_absolute():
            img.path = base / img.path
        if img.path is not None and not img.path.exists():
            raise CmbuildError(f"[{table}].path: {img.path} does not exist", where=path.name)
    if project.machine.ram_image is not None:
        ri = project.machine.ram_image
        project.machine.ram_image = ri if ri.is_absolute() else base / ri
        if not project.machine.ram_image.is_file():
            raise CmbuildError(f"[machine].ram_image: {project.machine.ram_image} is not a file",
                               where=path.name)
    for name, drive in project.drives.items():
        for attr in ("directory", "filename"):
            p = getattr(drive, attr)
            if p is not None:
                p = p if p.is_absolute() else base / p
                setattr(drive, attr, p)
                if not p.exists():
                    raise CmbuildError(f"[drives.{name}].{attr}: {p} does not exist", where=path.name)
    if not project.cache.dir.is_absolute():
        project.cache.dir = base / project.cache.dir
    return project
