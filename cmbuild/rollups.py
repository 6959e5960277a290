"""A local input loop for rollups apps: no node, no chain, no Docker.

``cmbuild advance`` sends an advance-state input to the app's template snapshot, ``cmbuild
inspect`` an inspect-state query, as a Cartesi node would, through the real emulator
(``cartesi-machine --load --cmio-advance-state`` / ``--cmio-inspect-state``), and shows what the
app did: accepted, rejected or exception, the notices, vouchers and reports (decoded), the
cycles used and the machine's root hash after the input.

State accumulates as on a node: each input applies to the state the previous one left.
``.cartesi/rollups/`` holds that state::

    machine/        the stored machine after the last accepted input (absent: the template)
    state.json      the template it grew from, the next input index, the outputs so far
    last-output-proof.json   the proof of the last accepted output (resumes the outputs tree)
    inputs.jsonl    every input sent, in order (``cmbuild inputs replay`` sends them again)

A rejected input leaves the state as it was (the machine is not stored), as the node rolls it
back. After an exception the app has given up: no further input is taken until
``cmbuild inputs reset``. A new snapshot (the template changed) starts again from it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .abi import Metadata, decode_output, encode_advance, parse_hex
from .errors import CmbuildError
from .machines import cartesi as cm
from .pipeline import Context, NotBuilt

STATE_DIR = Path(".cartesi") / "rollups"
_YIELD = re.compile(r"^(Manual|Automatic) yield (\S+) ")
_CYCLES = re.compile(r"^Cycles: (\d+)$", re.M)


@dataclass
class Result:
    kind: str                       # "advance" | "inspect"
    status: str                     # "accepted" | "rejected" | "exception" | "halted" | ...
    input_index: int | None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)       # 0x-hex
    exception: str | None = None                           # the payload of /exception, as printed
    cycles: int | None = None
    root_hash: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def template(ctx: Context) -> tuple[str, Path]:
    """The current configuration's template snapshot (its digest and directory)."""
    if ctx.project.rollups is None:
        raise CmbuildError("this project is not a rollups app: cartesi.toml has no [rollups] table",
                           hint="add [rollups] to cartesi.toml (see the README's \"Rollups apps\")")
    try:
        rec = ctx.record("snapshot")
    except NotBuilt as e:
        rec, why = None, f"stage '{e.stage}' is not built"
    else:
        why = "the snapshot of the current configuration is not built"
    if rec is None:
        raise CmbuildError(f"no template snapshot: {why}", hint="run `cmbuild snapshot` first")
    return rec.output, ctx.store.object_path(rec.output)


class State:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.dir = ctx.project_dir / STATE_DIR
        self.template_digest, self.template_dir = template(ctx)
        doc: dict[str, Any] = {}
        try:
            doc = json.loads((self.dir / "state.json").read_text())
        except (OSError, ValueError):
            pass
        if doc.get("template") != self.template_digest:
            if doc:
                print("cmbuild: the template snapshot changed: the input loop starts again from it",
                      file=sys.stderr)
            self.reset()
            doc = {}
        self.next_index: int = int(doc.get("next_index", 0))
        self.outputs: int = int(doc.get("outputs", 0))
        self.stopped: str | None = doc.get("stopped")

    @property
    def machine(self) -> Path:
        m = self.dir / "machine"
        return m if m.is_dir() else self.template_dir

    @property
    def last_output_proof(self) -> Path | None:
        p = self.dir / "last-output-proof.json"
        return p if p.is_file() else None

    def reset(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.next_index, self.outputs, self.stopped = 0, 0, None
        self._save()

    def _save(self) -> None:
        doc = {"template": self.template_digest, "next_index": self.next_index,
               "outputs": self.outputs, "stopped": self.stopped}
        tmp = self.dir / "state.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.dir / "state.json")

    def log(self, entry: dict[str, Any]) -> None:
        with open(self.dir / "inputs.jsonl", "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")


def _run(cmd: list[str], timeout: float) -> tuple[int, str, str]:
    try:
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        raise CmbuildError(f"the machine did not finish the input within {timeout:g} s",
                           hint="raise [machine].timeout if the app needs longer") from None
    return p.returncode, p.stdout, p.stderr


def _collect(tmp: Path, index: int | None, pattern_outputs: str, pattern_reports: str) -> tuple[list, list]:
    def key(p: Path) -> int:
        return int(re.findall(r"\d+", p.name)[-1 if "report" in p.name else 0])
    outputs = [{**decode_output(data), "abi": "0x" + data.hex()}
               for data in (p.read_bytes() for p in sorted(tmp.glob(pattern_outputs), key=key))]
    reports = ["0x" + p.read_bytes().hex() for p in sorted(tmp.glob(pattern_reports), key=key)]
    return outputs, reports


def _status(stderr: str) -> str:
    reasons = [m.group(2) for m in map(_YIELD.match, stderr.splitlines()) if m and m.group(1) == "Manual"]
    if "cmio exception with payload" in stderr:
        return "exception"
    if re.search(r"^Halted", stderr, re.M):
        return "halted"
    last = reasons[-1] if reasons else None
    return {"rx-accepted": "accepted", "rx-rejected": "rejected"}.get(last or "", last or "stopped")


def advance(ctx: Context, payload: bytes, meta: dict[str, Any] | None = None) -> Result:
    """Send one advance-state input to the current state; keep the new state when accepted."""
    state = State(ctx)
    if state.stopped:
        raise CmbuildError(f"the app stopped at input {state.next_index - 1} ({state.stopped}); "
                           "it takes no more inputs", hint="`cmbuild inputs reset` starts again from the template")
    # metadata defaults count up with the input, deterministically (a replay gives the same
    # inputs, hence the same outputs and hashes)
    m = Metadata(input_index=state.next_index, block_number=state.next_index + 1,
                 block_timestamp=1_700_000_000 + 12 * state.next_index)
    for k, v in (meta or {}).items():
        if v is not None:
            setattr(m, k, v)
    i = state.next_index
    cm.require_cartesi_machine("`cmbuild advance`")
    with tempfile.TemporaryDirectory(prefix="advance-", dir=ctx.store.root / "tmp") as t:
        tmp = Path(t)
        (tmp / f"input-{i}.bin").write_bytes(encode_advance(m, payload))
        opts = [f"input:{tmp}/input-%i.bin", f"input_index_begin:{i}", f"input_index_end:{i + 1}",
                f"output:{tmp}/output-%o-input-%i.bin",
                f"rejected_output:{tmp}/rejected-output-%o-input-%i.bin",
                f"report:{tmp}/input-%i-report-%o.bin",
                f"output_proof:{tmp}/output-%o-input-%i-proof.json", "format:json",
                "outputs_merkle_root:", "outputs_merkle_root_proof:"]
        if state.last_output_proof is not None:
            opts.append(f"last_output_proof:{state.last_output_proof}")
        cmd = [cm.EXECUTABLE, f"--load={state.machine}", "--revert-mode=none",
               "--cmio-advance-state=" + ",".join(opts), f"--store={tmp}/machine", "--final-hash"]
        _rc, _out, err = _run(cmd, ctx.project.machine.timeout)
        status = _status(err)
        _check(_rc, status, err, cmd)
        pattern = "output-*-input-*.bin" if status == "accepted" else "rejected-output-*-input-*.bin"
        outputs, reports = _collect(tmp, i, pattern, f"input-{i}-report-*.bin")
        parsed = cm.parse_hash(err)
        # a rejected input is rolled back: the state keeps the root hash it had
        result = Result("advance", status, i, outputs, reports,
                        root_hash=parsed["hashes"][-1][1] if parsed["hashes"] and status != "rejected" else None,
                        cycles=_cycles(err))
        if status == "exception":
            m2 = re.search(r'cmio exception with payload: "(.*)"', err)
            result.exception = m2.group(1) if m2 else None
        state.log({"advance": {"hex": "0x" + payload.hex()}, "metadata": asdict(m), "status": status})
        if status == "accepted":
            _adopt(state, tmp, len(outputs))
            state.next_index = i + 1
        elif status == "rejected":
            state.next_index = i + 1              # the index is spent; the state rolls back
        else:
            _adopt(state, tmp, 0)
            state.next_index, state.stopped = i + 1, status
        state._save()
        return result


def _adopt(state: State, tmp: Path, new_outputs: int) -> None:
    """Make the machine stored in ``tmp`` the current state (atomically enough: the old one is
    removed only once the new one is in place)."""
    new = state.dir / "machine.new"
    shutil.rmtree(new, ignore_errors=True)
    shutil.move(str(tmp / "machine"), new)
    old = state.dir / "machine.old"
    shutil.rmtree(old, ignore_errors=True)
    if (state.dir / "machine").exists():
        os.rename(state.dir / "machine", old)
    os.rename(new, state.dir / "machine")
    shutil.rmtree(old, ignore_errors=True)
    if new_outputs:
        proofs = sorted(tmp.glob("output-*-input-*-proof.json"), key=lambda p: int(p.name.split("-")[1]))
        shutil.copyfile(proofs[-1], state.dir / "last-output-proof.json")
        state.outputs += new_outputs


def _check(rc: int, status: str, err: str, cmd: list[str]) -> None:
    if rc != 0 and status not in ("exception", "halted"):
        raise CmbuildError(f"{cm.EXECUTABLE} failed (exit code {rc}): {cm.emulator_error(err)}",
                           where=" ".join(cmd[:2]))


def _cycles(err: str) -> int | None:
    """Cycles the input took: the emulator prints the machine's cycle counter at the yield it
    was loaded at and at each later one."""
    found = [int(c) for c in _CYCLES.findall(err)]
    return found[-1] - found[0] if len(found) >= 2 else None


def inspect(ctx: Context, payload: bytes) -> Result:
    """Send an inspect-state query to the current state (which it never changes)."""
    state = State(ctx)
    cm.require_cartesi_machine("`cmbuild inspect`")
    with tempfile.TemporaryDirectory(prefix="inspect-", dir=ctx.store.root / "tmp") as t:
        tmp = Path(t)
        (tmp / "query.bin").write_bytes(payload)
        cmd = [cm.EXECUTABLE, f"--load={state.machine}", "--revert-mode=none",
               f"--cmio-inspect-state=query:{tmp}/query.bin,report:{tmp}/query-report-%o.bin"]
        _rc, _out, err = _run(cmd, ctx.project.machine.timeout)
        status = _status(err)
        _check(_rc, status, err, cmd)
        _outputs, reports = _collect(tmp, None, "no-outputs-in-inspect", "query-report-*.bin")
        state.log({"inspect": {"hex": "0x" + payload.hex()}, "status": status})
        return Result("inspect", status, None, [], reports, cycles=_cycles(err))


def payload_from(hex_: str | None, text: str | None, file: str | None) -> bytes:
    given = [x for x in (hex_, text, file) if x is not None]
    if len(given) != 1:
        raise CmbuildError("give the payload once: --hex 0x..., --text STRING or --file PATH")
    if hex_ is not None:
        return parse_hex(hex_, "--hex")
    if text is not None:
        return text.encode()
    try:
        return Path(file).read_bytes()  # type: ignore[arg-type]
    except OSError as e:
        raise CmbuildError(f"cannot read the payload: {e.strerror}", where=file) from None


def show(result: Result, json_out: bool) -> None:
    """The result on standard output: JSON, or lines for people."""
    if json_out:
        print(json.dumps(result.to_json(), sort_keys=True))
        return
    head = f"{result.kind} #{result.input_index}" if result.input_index is not None else result.kind
    print(f"{head}: {result.status}" + (f" ({result.cycles} cycles)" if result.cycles else ""))
    for o in result.outputs:
        extra = "".join(f" {k}={o[k]}" for k in ("destination", "value") if k in o)
        print(f"  {o['type']}{extra} payload={_show_bytes(o['payload'])}")
    for r in result.reports:
        print(f"  report payload={_show_bytes(r)}")
    if result.exception is not None:
        print(f"  exception payload={result.exception}")
    if result.root_hash:
        print(f"  root hash: {result.root_hash}")
    elif result.status == "rejected":
        print("  rolled back: the state is as it was before this input")


def _show_bytes(hex_: str) -> str:
    raw = bytes.fromhex(hex_[2:])
    try:
        text = raw.decode("utf-8")
        if text.isprintable():
            return f"{hex_} ({text!r})"
    except UnicodeDecodeError:
        pass
    return hex_
