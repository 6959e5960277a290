"""``cmbuild advance``, ``cmbuild inspect`` and ``cmbuild inputs``: the local input loop of a
rollups app (:mod:`cmbuild.rollups`) on the command line. Results go to standard output (``--json``
for scripts), messages to standard error."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import CmbuildError


def _payload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text", help="the payload as UTF-8 text")
    p.add_argument("--hex", help="the payload as 0x-hex")
    p.add_argument("--file", help="the payload: this file's bytes")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cmbuild", add_help=True)
    sub = top.add_subparsers(dest="command", required=True)
    adv = sub.add_parser("advance", help="send an advance-state input")
    _payload_args(adv)
    adv.add_argument("--sender", dest="msg_sender", help="msg_sender (0x + 20 bytes)")
    adv.add_argument("--app", dest="app_contract", help="app_contract (0x + 20 bytes)")
    adv.add_argument("--chain-id", dest="chain_id", type=int)
    adv.add_argument("--block", dest="block_number", type=int)
    adv.add_argument("--timestamp", dest="block_timestamp", type=int)
    adv.add_argument("--prev-randao", dest="prev_randao", type=lambda s: int(s, 0))
    ins = sub.add_parser("inspect", help="send an inspect-state query")
    _payload_args(ins)
    inp = sub.add_parser("inputs", help="the input loop's state")
    isub = inp.add_subparsers(dest="action", required=True)
    isub.add_parser("reset", help="start again from the template snapshot")
    rep = isub.add_parser("replay", help="start again from the template and send a file of inputs")
    rep.add_argument("file", help="JSON lines: {\"advance\": {\"text\"|\"hex\"|\"file\": ...}, \"metadata\": {...}} "
                                  "or {\"inspect\": {...}} (cmbuild writes .cartesi/rollups/inputs.jsonl so)")
    rep.add_argument("--json", action="store_true")
    return top


def main(args: list[str], cfg: str | None, allow_unpinned: bool) -> int:
    from . import rollups
    from .tasks import config_path, open_context
    ns = _parser().parse_args(args)
    try:
        ctx = open_context(config_path(cfg), allow_unpinned=allow_unpinned)
        if ns.command == "advance":
            meta = {k: getattr(ns, k) for k in ("msg_sender", "app_contract", "chain_id", "block_number",
                                                 "block_timestamp", "prev_randao")}
            result = rollups.advance(ctx, rollups.payload_from(ns.hex, ns.text, ns.file), meta)
            rollups.show(result, ns.json)
            return 0 if result.status == "accepted" else 1
        if ns.command == "inspect":
            result = rollups.inspect(ctx, rollups.payload_from(ns.hex, ns.text, ns.file))
            rollups.show(result, ns.json)
            return 0 if result.status == "accepted" else 1
        lines: list[str] = []
        if ns.action == "replay":   # read first: the file may be the loop's own inputs.jsonl
            try:
                lines = Path(ns.file).read_text().splitlines()
            except OSError as e:
                raise CmbuildError(f"cannot read the inputs: {e.strerror}", where=ns.file) from None
        rollups.State(ctx).reset()
        if ns.action == "reset":
            print("cmbuild: the input loop starts again from the template snapshot", file=sys.stderr)
            return 0
        worst = 0
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as e:
                raise CmbuildError(f"line {n} is not JSON: {e}", where=ns.file) from None
            kind = "advance" if "advance" in entry else "inspect" if "inspect" in entry else None
            if kind is None:
                raise CmbuildError(f"line {n} has neither \"advance\" nor \"inspect\"", where=ns.file)
            spec = entry[kind]
            payload = rollups.payload_from(spec.get("hex"), spec.get("text"), spec.get("file"))
            if kind == "advance":
                meta = {k: v for k, v in (entry.get("metadata") or {}).items() if k != "input_index"}
                result = rollups.advance(ctx, payload, meta)
            else:
                result = rollups.inspect(ctx, payload)
            rollups.show(result, ns.json)
            worst = worst or (0 if result.status == "accepted" else 1)
        return worst
    except CmbuildError as e:
        print(f"cmbuild: error: {e}", file=sys.stderr)
        return 2
