"""cartesi.toml: every plausible mistake gives one clear message naming the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmbuild.config import load_project, parse_project, parse_size
from cmbuild.errors import CmbuildError

GOOD_DIGEST = "sha256:" + "ab" * 32
BASE = f'[image]\nref = "ghcr.io/x/app:1"\ndigest = "{GOOD_DIGEST}"\n'

BAD = [
    ('[image]\nref = "a"\ndigest = "abc"\n', "[image].digest: expected sha256:<64 hex>, got 'abc'"),
    ('[image]\nref = "a"\ndigest = "sha256:ABC"\n', "[image].digest: expected sha256:<64 hex>"),
    ('[image]\nref = "a"\ntag = "x"\n', "[image].tag: unknown key"),
    ('[image]\n', "[image]: name the image"),
    (f'[image]\ndigest = "{GOOD_DIGEST}"\n', "a digest alone does not say where to pull from"),
    ('[imgae]\nref = "a"\n', "imgae: unknown key"),
    ('[runtime]\nversion = "0.1.0"\n', "[image]: required key is missing"),
    ('[image]\nref = "a"\nplatform = "riscv64"\n', "[image].platform: expected os/architecture"),
    (BASE + '[machine]\nram_length = "128MB"\n', "[machine].ram_length: sizes use binary units: did you mean '128Mi'?"),
    (BASE + '[machine]\nram_length = "lots"\n', "[machine].ram_length: expected a size like 128Mi"),
    (BASE + '[machine]\nram_length = true\n', "[machine].ram_length: expected a size like 128Mi, got a boolean"),
    (BASE + '[machine]\nbackend = "docker"\n', "[machine].backend: Input should be 'cartesi' or 'qemu'"),
    (BASE + '[machine]\nenv = { A = 1 }\n', "[machine].env.A: Input should be a valid string (got 1)"),
    (BASE + '[machine]\nenv = { "A=B" = "1" }\n', "[machine].env: not an environment variable name: 'A=B'"),
    (BASE + '[machine]\nworkdir = "app"\n', "[machine].workdir: workdir must be an absolute path"),
    (BASE + '[machine]\nmax_mcycle = -1\n', "[machine].max_mcycle: Input should be greater than or equal to 0"),
    (BASE + '[machine]\ncmd = 5\n', "[machine].cmd: Input should be a valid list"),
    (BASE + '[machine]\nramlength = "1Gi"\n', "[machine].ramlength: unknown key"),
    (BASE + '[runtime]\ncompression = "bzip2"\n', "[runtime].compression: Input should be 'none', 'lz4', 'zstd' or 'xz'"),
    (BASE + '[runtime]\nversion = "../etc"\n', "[runtime].version: not a recipe version"),
    (BASE + '[drives.app]\nformat = "ext3"\n', "[drives.app].format: Input should be 'squashfs' or 'ext2'"),
    (BASE + '[drives.app]\nformat = "ext2"\ncompression = "xz"\n', "ext2 drives are not compressed"),
    (BASE + '[drives.app]\nextra_size = "10Mi"\n', "extra_size needs a writable drive"),
    (BASE + '[drives.app]\nsize = "10Mi"\n', "[drives.app]: size is for ext2 drives"),
    (BASE + '[drives.app]\nformat = "ext2"\nsize = "10Mi"\nextra_size = "1Mi"\n', "size (the whole drive) or extra_size"),
    (BASE + '[drives.my_data]\nbuilder = "empty"\nsize = "1Mi"\nformat = "ext2"\nmount = "/d"\n', "drive name 'my_data': use 1 to 16 lowercase letters"),
    (BASE + '[drives.data]\nbuilder = "directory"\ndirectory = "."\nsize = "1Mi"\nmount = "/d"\n', "[drives.data]: size is for ext2 drives"),
    (BASE + '[drives.app]\nmount = "/x"\n', "[drives.app] is the container's root"),
    (BASE + '[drives.root]\nbuilder = "empty"\nsize = "1Mi"\nformat = "ext2"\nmount = "/d"\n', "drive name 'root' is reserved (the runtime layer)"),
    (BASE + '[drives.config]\nbuilder = "empty"\nsize = "1Mi"\nformat = "ext2"\nmount = "/d"\n', "drive name 'config' is reserved (the container config)"),
    (BASE + '[drives.data]\nbuilder = "empty"\nformat = "ext2"\nmount = "/d"\n', "builder = \"empty\" needs size"),
    (BASE + '[drives.data]\nbuilder = "directory"\nmount = "/d"\n', "needs directory"),
    (BASE + '[drives.data]\nbuilder = "empty"\nsize = "1Mi"\nformat = "ext2"\n', "[drives.data] needs mount"),
    (BASE + '[drives.Data]\nbuilder = "empty"\nsize = "1Mi"\nformat = "ext2"\nmount = "/d"\n', "drive name 'Data'"),
    (BASE + '[drives.data]\nbuilder = "empty"\nsize = "1Mi"\nformat = "ext2"\nmount = "d"\n', "[drives.data].mount: mount must be an absolute path"),
    (BASE + '[cache]\ndirectory = "x"\n', "[cache].directory: unknown key"),
    ('[image\nref = "a"\n', "invalid TOML"),
]


@pytest.mark.parametrize("text,message", BAD, ids=[m[:40] for _t, m in BAD])
def test_bad_config_names_key_and_problem(text: str, message: str) -> None:
    with pytest.raises(CmbuildError) as exc:
        parse_project(text)
    text_out = str(exc.value)
    assert message in text_out
    assert text_out.startswith("cartesi.toml: ")
    assert "Traceback" not in text_out


def test_good_config_defaults_and_aliases() -> None:
    p = parse_project(BASE + '[machine]\nboot_args = ["quiet"]\ncmd = "serve"\nram_length = "256Mi"\n'
                      '[drives.data]\nbuilder = "empty"\nsize = "4Mi"\nformat = "ext2"\nmount = "/data"\n'
                      '[drives.app]\nformat = "sqfs"\n')
    assert p.image.platform == "linux/riscv64"
    assert p.machine.bootargs == ["quiet"]
    assert p.machine.cmd == ["serve"]
    assert p.machine.ram_length == 256 << 20
    assert p.runtime.version == "0.1.0" and p.runtime.compression == "none"
    assert p.app_drive().format == "squashfs"
    assert list(p.extra_drives()) == ["data"] and p.drives["data"].size == 4 << 20


@pytest.mark.parametrize("value,expected", [(0, 0), ("4096", 4096), ("1Ki", 1024), ("128Mi", 128 << 20),
                                            ("2Gi", 2 << 30), (" 3 Mi ", 3 << 20)])
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


def test_missing_files_are_named(tmp_path: Path) -> None:
    cfg = tmp_path / "cartesi.toml"
    cfg.write_text('[image]\npath = "nowhere/image"\n')
    with pytest.raises(CmbuildError, match=r"\[image\]\.path: .*nowhere/image does not exist"):
        load_project(cfg)
    cfg.write_text(BASE + '[drives.data]\nbuilder = "directory"\ndirectory = "missing"\nmount = "/d"\n')
    with pytest.raises(CmbuildError, match=r"\[drives\.data\]\.directory: .*missing does not exist"):
        load_project(cfg)
    with pytest.raises(CmbuildError, match="no cartesi.toml here"):
        load_project(tmp_path / "elsewhere" / "cartesi.toml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    cfg = tmp_path / "cartesi.toml"
    cfg.write_text('[image]\npath = "img"\n')
    p = load_project(cfg)
    assert p.image.path == tmp_path / "img"
    assert p.cache.dir == tmp_path / "cache"
