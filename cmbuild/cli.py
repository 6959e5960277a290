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
USAGE = """usage: cmbuild [-c cartesi.toml] [--allow-unpinned] [TASK|doit-command] [args]

tasks:    snapshot (default), build, run (= boot), hash [--json], lock, audit [--stage S],
          verify [--repair], and one per stage: pull, unpack, config, app, init, runtime, kernel
commands: list, info TASK, help, ...   (cmbuild X is doit X with cmbuild's tasks)
"""


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
        elif opt in ("-h", "--help"):
            print(USAGE)
            return 0
        else:
            args.insert(0, opt)
            break
    if cfg:
        os.environ["CMBUILD_CONFIG"] = os.path.abspath(cfg)
    if allow_unpinned:
        os.environ["CMBUILD_ALLOW_UNPINNED"] = "1"
    if args[:1] == ["run"]:
        args = ["run", "boot"] + args[1:]
    elif args and args[0] not in DOIT_COMMANDS and not args[0].startswith("-"):
        args = ["run"] + args
    from .tasks import make_namespace
    namespace = make_namespace(cfg, argv=args, allow_unpinned=allow_unpinned)
    return DoitMain(ModuleTaskLoader(namespace), config_filenames=()).run(args)


if __name__ == "__main__":
    sys.exit(main())
