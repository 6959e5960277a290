"""The kernel stage: the kernel (and, for QEMU, the boot initramfs) each machine boots.

Output (the stage's output digest):

- qemu: a JSON object in the store (read it with :func:`kernel_files` or ``store.read_json``)::

      {"machine": "qemu", "kernel": <digest>, "initrd": <digest>, "cmdline": [...],
       "kernel_release": "...", "modules": [...], "builtin_modules": [...]}

- cartesi: the RAM image file itself (what ``cartesi-machine --ram-image`` takes).

Recipes: ``recipes/kernel/<name>.toml``; each machine has a default (:data:`DEFAULT_KERNELS`).
:func:`build_kernel` ``(store, recipes_root, machine)`` builds the default of a machine;
:func:`build_from_recipe` builds any loaded :class:`~cmbuild.recipes.KernelRecipe`.

- ``qemu``: Debian's riscv64 kernel package, pinned by a recipe
  (``recipes/kernel/qemu-<debian version>.toml``). Its ``/boot/vmlinux-*`` is a raw RISC-V
  ``Image`` (with an EFI stub header) that QEMU's ``-kernel`` loads as it is (a gzip image would
  be decompressed here). Debian builds virtio-mmio, virtio-blk, squashfs, overlayfs and ext4 as
  modules, so a small initramfs (newc cpio, written here byte-reproducibly) carries the boot
  shim (``cmbuild/guest/shim.c``) and those modules (decompressed from ``.ko.xz``; dependencies
  from each module's ``depends=``). The shim loads them, mounts the runtime layer (virtio serial
  ``root``) and hands over to the layer's ``/sbin/init``. The firmware is QEMU's own OpenSBI
  (``-bios default``).
- ``cartesi``: the Cartesi kernel (OpenSBI fw_payload + Linux in one RAM image) pinned by the
  recipe's sha256: taken from a local file with that sha256 when the emulator's images are on
  this machine (:func:`local_kernel`: ``$CARTESI_IMAGES_PATH``, the emulator's own default),
  else downloaded from the recipe's URL with its sha256 checked while it streams into the store
  (:func:`fetch_url`); or, with ``[machine].ram_image``, any local file
  (:func:`build_kernel_from_file`). No initrd.
"""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol

from ..debian import extract_deb, fetch_debs
from ..errors import CmbuildError
from ..guest.build import GUEST_DIR, SOURCES, build_shim
from ..recipes import KernelRecipe, load_kernel_recipe
from ..store import Store, sha256_file, stage_key

if TYPE_CHECKING:
    from ..pipeline import Context, Stage

STAGE = "kernel"
STAGE_VERSION = 1
DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a download is abandoned
DEFAULT_KERNELS = {"qemu": "qemu-6.12.117-1", "cartesi": "cartesi-v0.21.0"}


def recipe_path(root: Path, machine: str, name: str | None = None) -> Path:
    """The recipe file of kernel ``name`` (default: the machine's default kernel)."""
    if machine not in DEFAULT_KERNELS:
        raise CmbuildError(f"no kernel for machine {machine!r}; machines: "
                           f"{', '.join(DEFAULT_KERNELS)}")
    return Path(root) / "kernel" / f"{name or DEFAULT_KERNELS[machine]}.toml"


def load_machine_recipe(root: Path, machine: str, name: str | None = None) -> KernelRecipe:
    """Load the kernel recipe of ``machine`` (its default, or ``name``) and check that it is
    a recipe for that machine."""
    recipe_path(root, machine, name)  # validates the machine
    recipe = load_kernel_recipe(Path(root), name or DEFAULT_KERNELS[machine])
    if recipe.machine != machine:
        raise CmbuildError(f"kernel recipe {recipe.version} is for machine {recipe.machine}, "
                           f"not {machine}", where=str(recipe.path))
    return recipe


def shim_sources() -> list[Path]:
    """The source files of the boot shim (their digests belong in the qemu kernel's key)."""
    return [GUEST_DIR / SOURCES["shim"]]


# ----- newc cpio ------------------------------------------------------------------------------

@dataclass(frozen=True)
class CpioEntry:
    """One initramfs entry: ``kind`` is "dir", "file" or "char" (``rdev`` = (major, minor))."""

    path: str
    kind: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


class Writable(Protocol):
    def write(self, data: bytes, /) -> object: ...


_KIND_BITS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "char": stat.S_IFCHR}


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _newc_header(ino: int, mode: int, nlink: int, size: int, rdev: tuple[int, int],
                 namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def write_cpio(entries: Iterable[CpioEntry], out: Writable) -> int:
    """Write a newc cpio archive, reproducibly: entries sorted by path (parents first), inode
    numbers in that order, mtime 0, uid/gid 0, no device numbers of the build host; padded to
    a multiple of 512 bytes like cpio(1). Returns the number of bytes written."""
    items = sorted(entries, key=lambda e: e.path.strip("/"))
    seen: set[str] = set()
    total = 0

    def put(data: bytes) -> None:
        nonlocal total
        out.write(data)
        total += len(data)

    for ino, e in enumerate(items, 1):
        path = e.path.strip("/")
        if not path or path in seen or ".." in path.split("/"):
            raise CmbuildError(f"bad or duplicate initramfs path {e.path!r}")
        seen.add(path)
        parent = path.rpartition("/")[0]
        if parent and parent not in seen:
            raise CmbuildError(f"initramfs entry {path!r} comes before its directory {parent!r}")
        if e.kind not in _KIND_BITS:
            raise CmbuildError(f"unknown initramfs entry kind {e.kind!r}")
        data = e.data if e.kind == "file" else b""
        name = path.encode() + b"\0"
        hdr = _newc_header(ino, _KIND_BITS[e.kind] | (e.mode & 0o7777),
                           2 if e.kind == "dir" else 1, len(data), e.rdev, len(name))
        put(hdr + name + _pad4(len(hdr) + len(name)))
        put(data + _pad4(len(data)))
    name = b"TRAILER!!!\0"
    hdr = _newc_header(0, 0, 1, 0, (0, 0), len(name))
    put(hdr + name + _pad4(len(hdr) + len(name)))
    put(b"\0" * (-total % 512))
    return total


def read_cpio(data: bytes) -> list[tuple[str, int, bytes]]:
    """(path, mode, data) of every entry of a newc archive (for tests and inspection)."""
    out: list[tuple[str, int, bytes]] = []
    pos = 0
    while True:
        if data[pos:pos + 6] != b"070701":
            raise CmbuildError(f"not a newc cpio header at offset {pos}")
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name_start = pos + 110
        name = data[name_start:name_start + namesize - 1].decode()
        pos = name_start + namesize
        pos += -pos % 4
        body = data[pos:pos + size]
        pos += size
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out.append((name, mode, body))


# ----- kernel modules -------------------------------------------------------------------------

def modinfo(ko: bytes, where: str = "module") -> dict[str, str]:
    """The ``.modinfo`` section of an ELF64 little-endian kernel module as a dict (the last
    value of a repeated key wins; ``depends`` is what matters here)."""
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise CmbuildError("not an ELF64 little-endian kernel module", where=where)
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", ko, base)
        off, size = struct.unpack_from("<QQ", ko, base + 0x18)
        return name, off, size

    _, str_off, str_size = section(shstrndx)
    names = ko[str_off:str_off + str_size]
    for i in range(shnum):
        nm, off, size = section(i)
        if names[nm:names.index(b"\0", nm)] == b".modinfo":
            info: dict[str, str] = {}
            for item in ko[off:off + size].split(b"\0"):
                if b"=" in item:
                    k, v = item.split(b"=", 1)
                    info[k.decode(errors="replace")] = v.decode(errors="replace")
            return info
    raise CmbuildError("kernel module has no .modinfo section", where=where)


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            return name[: -len(suffix)].replace("-", "_")
    raise ValueError(name)


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        if path.name.endswith(".xz"):
            return lzma.decompress(data)
        if path.name.endswith(".gz"):
            return gzip.decompress(data)
        if path.name.endswith(".zst"):
            import zstandard
            try:
                return zstandard.ZstdDecompressor().decompressobj().decompress(data)
            except zstandard.ZstdError as e:
                raise ValueError(str(e)) from e
    except (lzma.LZMAError, OSError, EOFError, ValueError) as e:
        raise CmbuildError(f"cannot decompress kernel module: {e}", where=str(path)) from e
    return data


@dataclass
class ModuleSet:
    """Modules in load order (dependencies first) and what was found built in."""

    order: list[str]
    images: dict[str, bytes]
    builtin: list[str]


def resolve_modules(moddir: Path, wanted: list[str]) -> ModuleSet:
    """Find ``wanted`` (module names) under ``moddir`` (``lib/modules/<version>``) with their
    dependencies; built-in modules (``modules.builtin``) are skipped."""
    by_name: dict[str, Path] = {}
    for p in sorted((moddir / "kernel").rglob("*.ko*")):
        try:
            by_name.setdefault(_module_name(p), p)
        except ValueError:
            continue
    builtin_file = moddir / "modules.builtin"
    builtin_names = set()
    if builtin_file.is_file():
        for line in builtin_file.read_text().splitlines():
            if line.strip():
                builtin_names.add(_module_name(Path(line.strip())))
    order: list[str] = []
    images: dict[str, bytes] = {}
    builtin: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, chain: list[str]) -> None:
        name = name.replace("-", "_")
        if name in images or name in builtin:
            return
        if name in builtin_names:
            builtin.append(name)
            return
        if name in visiting:
            raise CmbuildError(f"kernel modules depend on each other in a cycle: "
                               f"{' -> '.join(chain + [name])}")
        path = by_name.get(name)
        if path is None:
            raise CmbuildError(f"kernel module {name} is neither built in nor in the package"
                               + (f" (needed by {chain[-1]})" if chain else ""),
                               where=str(moddir),
                               hint="check the recipe's modules against the kernel's config")
        visiting.add(name)
        image = _read_module(path)
        deps = [d for d in modinfo(image, str(path)).get("depends", "").split(",") if d]
        for d in deps:
            visit(d, chain + [name])
        visiting.discard(name)
        images[name] = image
        order.append(name)

    for w in wanted:
        visit(w, [])
    return ModuleSet(order, images, builtin)


def initramfs_entries(shim: bytes, modules: ModuleSet) -> list[CpioEntry]:
    """The boot shim's initramfs: /init, /dev/console, /lib/modules/*.ko + load.order."""
    entries = [
        CpioEntry("dev", "dir", 0o755),
        CpioEntry("dev/console", "char", 0o600, rdev=(5, 1)),
        CpioEntry("init", "file", 0o755, shim),
        CpioEntry("lib", "dir", 0o755),
        CpioEntry("lib/modules", "dir", 0o755),
        CpioEntry("lib/modules/load.order", "file", 0o644,
                  "".join(f"{m}.ko\n" for m in modules.order).encode()),
        CpioEntry("newroot", "dir", 0o755),
        CpioEntry("proc", "dir", 0o755),
        CpioEntry("sys", "dir", 0o755),
    ]
    for m in modules.order:
        entries.append(CpioEntry(f"lib/modules/{m}.ko", "file", 0o644, modules.images[m]))
    return entries


# ----- the qemu kernel ------------------------------------------------------------------------

def _kernel_image(boot: Path, where: str) -> tuple[bytes, str]:
    """The kernel image of an extracted linux-image package (decompressed if gzip)."""
    cands = sorted(boot.glob("vmlinu[xz]-*"))
    if len(cands) != 1:
        raise CmbuildError(f"expected one /boot/vmlinux-* or vmlinuz-* in the kernel package, "
                           f"found {[c.name for c in cands]}", where=where)
    data = cands[0].read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    # RISC-V Image header: magic "RSC\x05" at offset 0x38 (the EFI stub keeps it)
    if data[0x38:0x3C] != b"RSC\x05":
        raise CmbuildError(f"{cands[0].name} is not a RISC-V Linux Image", where=where)
    return data, cands[0].name.split("-", 1)[1]


def build_qemu_kernel(store: Store, recipe: KernelRecipe) -> str:
    """Build the qemu kernel stage from a ``machine = "qemu"`` recipe; return its output."""
    if recipe.machine != "qemu":
        raise CmbuildError(f"recipe {recipe.version} is for machine {recipe.machine}, not qemu")
    shim = build_shim(store)
    pin = recipe.package()
    options = {"machine": "qemu", "modules": recipe.modules, "cmdline": recipe.cmdline}
    key = stage_key(STAGE, STAGE_VERSION, options,
                    {"recipe": recipe.sha256, "package": pin.deb().digest, "shim": shim})
    with store.key_lock(key):
        rec = store.get_key(key)
        if rec is not None:
            return rec.output
        debs = fetch_debs(store, [pin.deb()], suite=recipe.suite or "",
                          arch=recipe.architecture or "")
        with store.tmpdir("kernel-") as tmp:
            root = tmp / "pkg"
            extract_deb(store.object_path(debs[pin.name]), root)
            kernel, kver = _kernel_image(root / "boot", pin.name)
            moddir = next((d for d in (root / "usr/lib/modules" / kver, root / "lib/modules" / kver)
                           if d.is_dir()), None)
            if moddir is None:
                raise CmbuildError(f"no modules directory for kernel {kver} in the package",
                                   where=pin.name)
            mods = resolve_modules(moddir, recipe.modules)
            kernel_digest = store.add_bytes(kernel)
            with store.writer() as w:
                write_cpio(initramfs_entries(store.object_path(shim).read_bytes(), mods), w)
            initrd_digest = w.digest
        doc = {"machine": "qemu", "kernel": kernel_digest, "initrd": initrd_digest,
               "cmdline": list(recipe.cmdline), "kernel_release": kver,
               "modules": mods.order, "builtin_modules": mods.builtin}
        out = store.add_json(doc)
        store.put_key(key, STAGE, out, {"recipe": recipe.version})
        return out


# ----- the cartesi kernel ---------------------------------------------------------------------

def fetch_url(store: Store, url: str, sha256: str, *, timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """Download ``url`` into the store, checking ``sha256`` (``sha256:<hex>``) while it streams:
    on a mismatch or any error nothing is stored. Already in the store: no download."""
    if store.has(sha256):
        return sha256
    import requests

    try:
        with requests.get(url, stream=True, timeout=timeout) as resp:
            if resp.status_code != 200:
                raise CmbuildError(f"download failed: HTTP {resp.status_code} {resp.reason}",
                                   where=url)
            try:
                with store.writer(expect=sha256) as w:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        w.write(chunk)
            except CmbuildError as e:
                raise CmbuildError(f"refused: {e.message}", where=url,
                                   hint="nothing was stored; check the recipe's sha256 and the "
                                        "URL") from None
    except requests.RequestException as e:
        raise CmbuildError(f"download failed: {e}", where=url,
                           hint="check the network, or give the kernel as a local file "
                                "(ram_image)") from None
    return w.digest


# where an installed emulator keeps its kernel: $CARTESI_IMAGES_PATH (what cartesi-machine
# boots by default), then the install prefixes of its release packages
IMAGE_DIRS = ("/usr/share/cartesi-machine/images", "/usr/local/share/cartesi-machine/images",
              "/opt/cartesi/share/images")


def local_kernel(recipe: KernelRecipe) -> tuple[Path | None, list[tuple[Path, str]]]:
    """A local file with the recipe's sha256 (the pinned kernel, no download needed), and the
    other candidates looked at with their digests (for the error when there is none)."""
    dirs = [d for d in (os.environ.get("CARTESI_IMAGES_PATH"), *IMAGE_DIRS) if d]
    names = [Path(recipe.url or "").name, "linux.bin"]
    seen: list[tuple[Path, str]] = []
    for d in dirs:
        for name in names:
            p = Path(d) / name
            if not name or not p.is_file() or any(p.resolve() == q.resolve() for q, _ in seen):
                continue
            digest = sha256_file(p)
            if digest == recipe.file_sha256:
                return p, seen
            seen.append((p, digest))
    return None, seen


def build_cartesi_kernel(store: Store, recipe: KernelRecipe) -> str:
    """The cartesi kernel stage from a ``machine = "cartesi"`` recipe: a local file with the
    pinned sha256 when there is one, else a verified download; the output is the RAM image's
    digest."""
    if recipe.machine != "cartesi" or not recipe.url:
        raise CmbuildError(f"recipe {recipe.version} is not a cartesi kernel recipe")
    key = stage_key(STAGE, STAGE_VERSION, {"machine": "cartesi", "source": "url"},
                    {"kernel": recipe.file_sha256})
    with store.key_lock(key):
        rec = store.get_key(key)
        if rec is not None:
            return rec.output
        local, others = local_kernel(recipe)
        if local is not None:
            out = store.add_file(local, expect=recipe.file_sha256)
            store.put_key(key, STAGE, out, {"recipe": recipe.version, "file": local.name})
            return out
        try:
            out = fetch_url(store, recipe.url, recipe.file_sha256)
        except CmbuildError as e:
            looked = "; ".join(f"{p} is another kernel ({d[7:19]}...)" for p, d in others)
            raise CmbuildError(
                f"Cartesi's kernel {recipe.version} ({recipe.file_sha256[:19]}...) is not on this "
                f"machine and could not be downloaded: {e.message}"
                + (f". Looked at: {looked}" if looked else ""), where=e.where or recipe.url,
                hint="set [machine].ram_image = \"<path of a kernel file>\" to boot a kernel of "
                     "your own (its sha256 then enters the build), or [machine].backend = \"qemu\" "
                     "to run under QEMU; or put the pinned kernel in $CARTESI_IMAGES_PATH") from None
        store.put_key(key, STAGE, out, {"recipe": recipe.version, "url": recipe.url})
        return out


def build_kernel_from_file(store: Store, path: Path) -> str:
    """The cartesi kernel stage from a local RAM image (``ram_image``): stored as it is (the
    output is its digest); its sha256 is the stage's input."""
    path = Path(path)
    if not path.is_file():
        raise CmbuildError("the kernel RAM image is not a file", where=str(path))
    digest = sha256_file(path)
    key = stage_key(STAGE, STAGE_VERSION, {"machine": "cartesi", "source": "file"},
                    {"kernel": digest})
    with store.key_lock(key):
        rec = store.get_key(key)
        if rec is not None:
            return rec.output
        out = store.add_file(path, expect=digest)
        store.put_key(key, STAGE, out, {"file": path.name})
        return out


def build_from_recipe(store: Store, recipe: KernelRecipe) -> str:
    """The kernel stage for whichever machine the recipe is for."""
    if recipe.machine == "qemu":
        return build_qemu_kernel(store, recipe)
    return build_cartesi_kernel(store, recipe)


def build_kernel(store: Store, root: Path, machine: str, name: str | None = None) -> str:
    """The kernel stage of ``machine`` from its default recipe under ``root`` (or ``name``)."""
    return build_from_recipe(store, load_machine_recipe(root, machine, name))


@dataclass(frozen=True)
class QemuKernel:
    """A qemu kernel stage output, resolved to files in the store."""

    kernel: Path
    initrd: Path
    cmdline: list[str]


def kernel_files(store: Store, output: str) -> QemuKernel:
    """Read a qemu kernel stage output: the kernel and initrd files and the cmdline words."""
    doc = store.read_json(output)
    if not isinstance(doc, dict) or doc.get("machine") != "qemu":
        raise CmbuildError(f"{output} is not the output of a qemu kernel stage")
    return QemuKernel(store.require(doc["kernel"], "kernel"), store.require(doc["initrd"], "initrd"),
                      list(doc.get("cmdline", [])))


# ----- the stage ----------------------------------------------------------------------------

def key_doc(ctx: "Context") -> tuple[Any, dict[str, Any]]:
    from ..pipeline import compiler, file_digests, source_digest
    from ..recipes import recipes_root
    backend = ctx.backend
    if backend == "cartesi" and ctx.project.machine.ram_image is not None:
        return {"backend": backend}, {"ram_image": source_digest(ctx.store, ctx.project.machine.ram_image)}
    recipe_file = recipe_path(recipes_root(), backend)
    inputs: dict[str, Any] = {"recipe": sha256_file(recipe_file)}
    if backend == "qemu":
        inputs["shim"] = file_digests(shim_sources())
        inputs["compiler"] = compiler(ctx)
    return {"backend": backend}, inputs


def build(ctx: "Context") -> tuple[str, dict[str, Any]]:
    from ..recipes import recipes_root
    if ctx.backend == "cartesi" and ctx.project.machine.ram_image is not None:
        return build_kernel_from_file(ctx.store, ctx.project.machine.ram_image), {}
    return build_kernel(ctx.store, recipes_root(), ctx.backend), {}


def stage() -> "Stage":
    from ..pipeline import Stage
    return Stage("kernel", 1, (), "the machine's kernel (Cartesi's, or Debian's with a boot shim for QEMU)",
                 key_doc, build, modules=("cmbuild.stages.kernel", "cmbuild.debian"))
