"""Traceability between the Allium specs and the tests.

The obligations come from `allium plan` (one ``rule_success`` obligation per rule,
one ``invariant`` obligation per invariant). A rule or invariant is *traced* when
its name appears as a word in a test module under tests/ (a test name or a
docstring naming it). A rule whose declaration is directly preceded by a
``-- DEFERRED: <reason>`` comment is exempt, and must give a reason.

    .venv/bin/python -m tests.trace          # the report, per spec file
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
TESTS = ROOT / "tests"
_DECL = re.compile(r"^\s*(rule|invariant)\s+([A-Za-z_]\w*)", re.M)
_DEFERRED = re.compile(r"^\s*--\s*DEFERRED:\s*(.*)$")


@dataclass(frozen=True)
class Obligation:
    spec: str
    kind: str  # "rule" | "invariant"
    name: str
    deferred: str | None  # the reason, when deferred


def allium() -> str:
    found = shutil.which("allium") or str(Path.home() / ".cargo" / "bin" / "allium")
    if not Path(found).exists():
        raise RuntimeError("allium is not installed: `make spec-check` installs it (cargo install allium-cli)")
    return found


def _deferred_reasons(text: str) -> dict[str, str]:
    """name -> reason, for declarations directly preceded by a DEFERRED comment."""
    lines = text.splitlines()
    reasons = {}
    for i, line in enumerate(lines):
        m = re.match(r"^\s*(?:rule|invariant)\s+([A-Za-z_]\w*)", line)
        if m and i > 0:
            d = _DEFERRED.match(lines[i - 1])
            if d:
                reasons[m.group(1)] = d.group(1).strip()
    return reasons


def obligations() -> list[Obligation]:
    tool = allium()
    out = []
    for spec in sorted(SPECS.glob("*.allium")):
        plan = json.loads(subprocess.run([tool, "plan", str(spec)], capture_output=True, text=True,
                                         check=True, timeout=60).stdout)
        reasons = _deferred_reasons(spec.read_text())
        seen = set()
        for ob in plan["obligations"]:
            if ob["category"] == "rule_success":
                kind = "rule"
            elif ob["category"] == "invariant":
                kind = "invariant"
            else:
                continue
            name = ob["source_construct"].rsplit(".", 1)[-1]
            if (kind, name) in seen:
                continue
            seen.add((kind, name))
            out.append(Obligation(spec.name, kind, name, reasons.get(name)))
    return out


def test_text() -> str:
    return "\n".join(p.read_text() for p in sorted(TESTS.rglob("*.py")) if p.name != "trace.py")


def untraced(obs: list[Obligation] | None = None) -> list[Obligation]:
    text = test_text()
    return [ob for ob in (obs or obligations())
            if ob.deferred is None and not re.search(rf"\b{re.escape(ob.name)}\b", text)]


def main() -> int:
    obs = obligations()
    missing = untraced(obs)
    by_spec: dict[str, list[Obligation]] = {}
    for ob in obs:
        by_spec.setdefault(ob.spec, []).append(ob)
    print(f"{'spec':<24} {'rules':>5} {'invariants':>10} {'deferred':>8} {'untraced':>8}")
    for spec, items in by_spec.items():
        print(f"{spec:<24} {sum(o.kind == 'rule' for o in items):>5} {sum(o.kind == 'invariant' for o in items):>10}"
              f" {sum(o.deferred is not None for o in items):>8} {sum(o in missing for o in items):>8}")
    for ob in missing:
        print(f"UNTRACED {ob.spec} {ob.kind} {ob.name}")
    for ob in obs:
        if ob.deferred is not None:
            print(f"DEFERRED {ob.spec} {ob.kind} {ob.name}: {ob.deferred}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
