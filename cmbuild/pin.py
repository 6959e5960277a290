"""Pinning: write an image's digest into ``cartesi.toml``, touching nothing else."""

from __future__ import annotations

from pathlib import Path

import shutil

import tomlkit
from tomlkit.items import InlineTable, String, Table

from .errors import CmbuildError
from .store import check_digest


def pin_config(toml_path: Path, digest: str, service: str | None = None) -> None:
    """Set ``digest`` in the ``[image]`` table of ``toml_path`` (or ``[services.<service>]``).

    Only that value changes: comments, order and formatting are kept. When the key is absent
    it is added right after ``ref`` (or at the end of the table when there is no ``ref``).
    """
    name = "[image]" if service is None else f"[services.{service}]"
    check_digest(digest, f"{toml_path}: {name}.digest")
    try:
        text = Path(toml_path).read_text()
        doc = tomlkit.parse(text)
    except OSError as e:
        raise CmbuildError(f"cannot read the file: {e.strerror}", where=str(toml_path)) from None
    except tomlkit.exceptions.ParseError as e:
        raise CmbuildError(f"not valid TOML: {e}", where=str(toml_path)) from None
    image = doc.get("image") if service is None else (doc.get("services") or {}).get(service)
    if not isinstance(image, (Table, InlineTable)):
        raise CmbuildError(f"there is no {name} table to pin", where=str(toml_path),
                           hint=f'add {name} with ref = "registry/repository:tag"')
    new = tomlkit.string(digest)
    old = image.get("digest")
    if old is not None:
        if not isinstance(old, String):
            raise CmbuildError(f"{name}.digest must be a string", where=str(toml_path))
        new.trivia.indent = old.trivia.indent
        new.trivia.comment_ws = old.trivia.comment_ws
        new.trivia.comment = old.trivia.comment
        new.trivia.trail = old.trivia.trail
        image["digest"] = new
    elif "ref" in image and isinstance(image, Table):
        image.value._insert_after("ref", "digest", new)
    else:
        image["digest"] = new
    out = tomlkit.dumps(doc)
    tmp = Path(str(toml_path) + ".tmp")
    tmp.write_text(out)
    shutil.copymode(toml_path, tmp)
    tmp.replace(toml_path)
