"""``cmbuild``: doit with cmbuild's task loader. ``cmbuild snapshot`` == ``doit snapshot``.

Options before the task: ``-c/--config FILE`` (default ./cartesi.toml, or $CMBUILD_CONFIG) and
``--allow-unpinned`` (build a ref without a digest, saying which digest was used).
"""

from __future__ import annotations

import os
import sys

from doit.cmd_base import ModuleTaskLoader
from doit.doit_cmd import DoitMain

DOIT_COMMANDS = {"list", "info", "clean", "forget", "ignore", "dumpdb", "help", "strace",
                 "reset-dep", "auto", "tabcompletion"}
USAGE = """usage: cmbuild [-c cartesi.toml] [--allow-unpinned] [--remote R|--no-remote] [--push|--no-push]
               [TASK|doit-command] [args]
       cmbuild init [IMAGE] [--rollups[=builtin|image]]
                                write cartesi.toml (and dodo.py, for plain doit) here
       cmbuild push REGISTRY/REPOSITORY[:TAG]
                                publish the snapshot as an OCI artifact; prints its digest
       cmbuild fetch REGISTRY/REPOSITORY@sha256:... DIR
                                fetch a published machine, verified; prints its template hash

remote stage cache: --remote REGISTRY/REPOSITORY ($CMBUILD_REMOTE), --no-remote,
          --push / --no-push ($CMBUILD_REMOTE_PUSH=1/0); default: [cache] in cartesi.toml

tasks:    snapshot (default), build, run (= boot), hash [--json], lock, audit [--stage S],
          verify [--repair], app (= squashfs + config), and one per stage: pull, unpack,
          squashfs, config, init, runtime, kernel, drive-<name> for each extra [drives.<name>]
commands: list, info TASK, help, ...   (cmbuild X is doit X with cmbuild's tasks)
"""


TEMPLATE = """# cmbuild project (see the configuration reference in cmbuild's README)
[image]
{image}
# digest = "sha256:..."   # `cmbuild lock` pins a registry ref

[runtime]
version = "0.1.0"
compression = "none"

[machine]
ram_length = "128Mi"
# env = {{ KEY = "value" }}
{rollups}"""
ROLLUPS_TABLE = """
# a rollups app: the runtime layer answers the Rollup HTTP API at $ROLLUP_HTTP_SERVER_URL,
# and the snapshot is the template that waits for the first input
[rollups]
server = "{server}"   # "builtin"; "image" when the image brings Cartesi's guest tools
"""
ROLLUPS_HINT = """
# a rollups app? add:  [rollups]   (see "Rollups apps" in cmbuild's README)
"""
DODO = "# doit in this folder builds cartesi.toml\nfrom cmbuild.dodo import *  # noqa: F401,F403\n"


def _guess_rollups(image: str) -> str | None:
    """For a local image: "image" when it already brings Cartesi's guest tools (its command
    runs rollup-init, or its Env names ROLLUP_HTTP_SERVER_URL), else None (undecided)."""
    import tempfile
    from pathlib import Path

    from .errors import CmbuildError
    from .oci.pull import pull
    from .store import Store
    try:
        with tempfile.TemporaryDirectory(prefix="cmbuild-init-") as t:
            store = Store(Path(t))
            rec = store.read_json(pull(store, ref=None, digest=None, path=Path(image),
                                       allow_unpinned=True, progress=False))
            cfg = store.read_json(rec["config"])
    except CmbuildError:   # not an image we can read: no guess
        return None
    c = (cfg or {}).get("config") or {}
    words = " ".join([*(c.get("Entrypoint") or []), *(c.get("Cmd") or []), *(c.get("Env") or [])])
    return "image" if ("rollup-init" in words or "ROLLUP_HTTP_SERVER_URL" in words) else None


def init_project(args: list[str]) -> int:
    """``cmbuild init [IMAGE] [--rollups[=builtin|image]]``: a cartesi.toml (IMAGE: a registry
    ref, or a path to an OCI layout or docker-save tarball) and a one-line dodo.py, never
    overwriting either. ``--rollups`` makes it a rollups app (``[rollups]``); a local image
    that already runs Cartesi's guest tools gets ``server = "image"``."""
    from pathlib import Path
    here = Path.cwd()
    flags = [a for a in args if a.startswith("--")]
    rest = [a for a in args if not a.startswith("--")]
    image = rest[0] if rest else "ghcr.io/you/app:1.0"
    server = None
    for f in flags:
        if f == "--rollups":
            server = "builtin"
        elif f in ("--rollups=builtin", "--rollups=image"):
            server = f.split("=", 1)[1]
        else:
            print(f"cmbuild: error: unknown option {f} (init takes IMAGE and --rollups[=builtin|image])",
                  file=sys.stderr)
            return 2
    local = Path(image).exists()
    if server == "builtin" and local and _guess_rollups(image) == "image":
        server = "image"
        print("cmbuild: the image runs Cartesi's guest tools itself: [rollups] server = \"image\"",
              file=sys.stderr)
    line = (f'path = "{image}"' if local else f'ref = "{image}"')
    rollups = ROLLUPS_TABLE.format(server=server) if server else ROLLUPS_HINT
    wrote = []
    for name, text in (("cartesi.toml", TEMPLATE.format(image=line, rollups=rollups)), ("dodo.py", DODO)):
        target = here / name
        if target.exists():
            print(f"cmbuild: {name} exists; left as it is", file=sys.stderr)
            continue
        target.write_text(text)
        wrote.append(name)
    if wrote:
        print(f"cmbuild: wrote {', '.join(wrote)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cfg = None
    allow_unpinned = False
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt in ("-c", "--config") and args:
            cfg = args.pop(0)
        elif opt.startswith("--config="):
            cfg = opt.split("=", 1)[1]
        elif opt == "--allow-unpinned":
            allow_unpinned = True
        elif opt in ("--remote", "--no-remote", "--push", "--no-push") or opt.startswith("--remote="):
            from .remote import ENV_PUSH, ENV_REMOTE
            if opt == "--remote":
                if not args:
                    print("cmbuild: error: --remote needs REGISTRY/REPOSITORY", file=sys.stderr)
                    return 2
                os.environ[ENV_REMOTE] = args.pop(0)
            elif opt.startswith("--remote="):
                os.environ[ENV_REMOTE] = opt.split("=", 1)[1]
            elif opt == "--no-remote":
                os.environ[ENV_REMOTE] = "none"
            else:
                os.environ[ENV_PUSH] = "1" if opt == "--push" else "0"
        elif opt in ("-h", "--help"):
            print(USAGE)
            return 0
        else:
            args.insert(0, opt)
            break
    if args[:1] == ["init"]:
        return init_project(args[1:])
    if args[:1] in (["push"], ["fetch"]):
        from .ship import main as ship_main
        return ship_main(args, cfg)
    if args[:1] in (["advance"], ["inspect"], ["inputs"]):
        from .inputs_cli import main as inputs_main
        return inputs_main(args, cfg, allow_unpinned)
    if cfg:
        os.environ["CMBUILD_CONFIG"] = os.path.abspath(cfg)
    if allow_unpinned:
        os.environ["CMBUILD_ALLOW_UNPINNED"] = "1"
    run = None
    if args[:1] == ["run"]:
        rest = args[1:]
        cmd = None
        if "--" in rest:
            cmd, rest = rest[rest.index("--") + 1:], rest[:rest.index("--")]
            if not cmd:
                print("cmbuild: error: `cmbuild run --` needs a command after --", file=sys.stderr)
                return 2
        shell = "--shell" in rest
        rest = [a for a in rest if a != "--shell"]
        if shell and cmd is not None:
            print("cmbuild: error: give --shell or -- CMD, not both", file=sys.stderr)
            return 2
        if shell or cmd is not None:
            from .tasks import RunRequest
            run = RunRequest(cmd=cmd, shell=shell)
        args = ["run", "boot"] + rest
    elif args and args[0] not in DOIT_COMMANDS and not args[0].startswith("-"):
        args = ["run"] + args
    from .tasks import make_namespace
    namespace = make_namespace(cfg, argv=args, allow_unpinned=allow_unpinned, run=run)
    return DoitMain(ModuleTaskLoader(namespace), config_filenames=()).run(args)


if __name__ == "__main__":
    sys.exit(main())
