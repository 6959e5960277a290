#!/usr/bin/env python3
"""Write a NEW runtime recipe version with the packages Debian serves today.

    python3 recipes/pin_runtime.py 0.2.0                # packages and applets of the newest recipe
    python3 recipes/pin_runtime.py 0.2.0 --from 0.1.0   # ... of recipe 0.1.0
    python3 recipes/pin_runtime.py 0.2.0 --add libfoo1  # and one more package

Each package is looked up in the suite of the base recipe (apt-cache, through cmbuild's private
apt configuration in the store) and pinned by its current version and sha256. The new recipe's
packages are then downloaded and crun's library closure is checked against them, so a recipe
that lacks a library is never written. A recipe version is immutable: an existing file is never
overwritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from cmbuild import debian  # noqa: E402
from cmbuild.errors import CmbuildError  # noqa: E402
from cmbuild.recipes import RuntimeRecipe, available_versions, load_runtime_recipe  # noqa: E402
from cmbuild.store import Store  # noqa: E402


def render(version: str, suite: str, arch: str, libsystemd: str, applets: list[str],
           pkgs: list[debian.DebPackage], comment: str) -> str:
    lines = [f"# Runtime layer recipe {version}. {comment}",
             "# A recipe version is immutable: write a new one with recipes/pin_runtime.py.",
             f'version = "{version}"', f'suite = "{suite}"', f'architecture = "{arch}"',
             "# what gives crun libsystemd.so.0: \"stub\" (cmbuild/guest/sdstub, see "
             "docs/runtime-layer.md) or \"debian\" (pin libsystemd0)",
             f'libsystemd = "{libsystemd}"',
             "busybox_applets = ["]
    for i in range(0, len(applets), 8):
        lines.append("  " + ", ".join(f'"{a}"' for a in applets[i:i + 8]) + ",")
    lines.append("]")
    for p in pkgs:
        lines += ["", "[[package]]", f'name = "{p.name}"', f'version = "{p.version}"',
                  f'sha256 = "{p.sha256}"']
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("version", help="the new recipe version")
    ap.add_argument("--from", dest="base", help="base recipe version (default: the newest)")
    ap.add_argument("--add", action="append", default=[], help="one more package to pin")
    ap.add_argument("--drop", action="append", default=[], help="a package to leave out")
    ap.add_argument("--store", default=str(HERE.parent / "cache"), help="the store (apt index)")
    ap.add_argument("--stdout", action="store_true", help="print the recipe, write no file")
    args = ap.parse_args(argv)
    try:
        out = HERE / "runtime" / f"{args.version}.toml"
        if out.exists() and not args.stdout:
            raise CmbuildError(f"recipe {args.version} exists and is immutable", where=str(out))
        versions = available_versions(HERE, "runtime")
        base_version = args.base or (max(versions, key=_version_key) if versions else None)
        if base_version is None:
            raise CmbuildError("no base recipe: give --from")
        base = load_runtime_recipe(HERE, base_version)
        names = [p.name for p in base.packages if p.name not in args.drop] + \
            [n for n in args.add if n not in {p.name for p in base.packages}]
        store = Store(args.store)
        pkgs = [debian.lookup(store, n, suite=base.suite, arch=base.architecture) for n in names]
        text = render(args.version, base.suite, base.architecture, base.libsystemd,
                      base.busybox_applets, pkgs,
                      f"Pinned from Debian {base.suite}/{base.architecture}.")
        _check_closure(store, base, pkgs)
        if args.stdout:
            sys.stdout.write(text)
        else:
            out.write_text(text)
            print(f"wrote {out}", file=sys.stderr)
        return 0
    except CmbuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _check_closure(store: Store, base: RuntimeRecipe, pkgs: list[debian.DebPackage]) -> None:
    """Download the new pins and check that crun's libraries are all among them."""
    from cmbuild import elf
    from cmbuild.recipes import PackagePin
    from cmbuild.stages.runtime import CRUN, prepare_tree
    new = base.model_copy(update={"packages": [PackagePin(name=p.name, version=p.version,
                                                          sha256=p.sha256) for p in pkgs]})
    with store.tmpdir("pin-") as tmp:
        prepare_tree(store, new, tmp / "tree")
        libs = elf.closure([CRUN], tmp / "tree")
        print("crun needs: " + ", ".join(sorted({p.rsplit('/', 1)[-1] for p in libs})),
              file=sys.stderr)


def _version_key(v: str) -> tuple[int | str, ...]:
    return tuple(int(x) if x.isdigit() else x for x in v.replace("-", ".").split("."))


if __name__ == "__main__":
    sys.exit(main())
