"""Every rule and invariant of specs/*.allium is named by a test, or deferred with a reason.

The obligations come from `allium plan` (tests/trace.py): one per rule, one per
invariant. A rule or invariant is traced when its name appears as a word in a module
under tests/ (a test's name or docstring). A declaration directly preceded by a line
``-- DEFERRED: <reason>`` is exempt, and the reason must not be empty. This module
deliberately names no rule: it must not trace anything itself.

    .venv/bin/python -m tests.trace     # the per-file report
"""

from __future__ import annotations

import re

from tests import trace

_DECLARATION = re.compile(r"^\s*(?:rule|invariant)\s+[A-Za-z_]\w*")


def test_every_rule_and_invariant_is_named_by_a_test() -> None:
    obligations = trace.obligations()
    assert obligations, "allium plan derived no obligations from specs/"
    missing = trace.untraced(obligations)
    assert not missing, (
        f"{len(missing)} spec rules/invariants are named by no test under tests/ (add the name to the "
        "docstring of the test that checks it, or write one; `python -m tests.trace` reports per file):\n"
        + "\n".join(f"  {ob.spec}: {ob.kind} {ob.name}" for ob in missing))


def test_deferred_markers_give_a_reason_and_sit_on_a_declaration() -> None:
    problems = []
    for spec in sorted(trace.SPECS.glob("*.allium")):
        lines = spec.read_text().splitlines()
        for number, line in enumerate(lines, start=1):
            marker = trace._DEFERRED.match(line)  # the one definition of the marker
            if marker is None:
                continue
            if not marker.group(1).strip():
                problems.append(f"{spec.name}:{number}: DEFERRED without a reason")
            if number >= len(lines) or not _DECLARATION.match(lines[number]):
                problems.append(f"{spec.name}:{number}: DEFERRED is not directly above a rule or invariant, "
                                "so it exempts nothing")
    assert not problems, "\n".join(problems)
    for ob in trace.obligations():
        assert ob.deferred is None or ob.deferred.strip(), f"{ob.spec}: {ob.kind} {ob.name} deferred without a reason"
