"""How results are shown: text for people, JSON and JUnit XML for machines, and the
Markdown list of cases that spec/CONFORMANCE.md carries."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from gate.conformance.registry import Case, Level, Outcome, Result

__all__ = [
    "as_json",
    "as_junit",
    "as_markdown",
    "as_text",
    "listing",
    "listing_json",
    "passed",
]

_MARK = {Outcome.PASS: "PASS", Outcome.FAIL: "FAIL", Outcome.SKIP: "SKIP"}


def passed(results: Sequence[Result]) -> bool:
    """Every case that ran passed (a skip says why it did not run; it is no failure)."""
    return all(r.outcome is not Outcome.FAIL for r in results)


def as_text(results: Sequence[Result]) -> str:
    lines = []
    for r in results:
        level = "" if r.case.level is Level.MUST else " [SHOULD]"
        lines.append(f"{_MARK[r.outcome]}  {r.case.id}{level}  {r.case.title}: {r.detail}")
        if r.outcome is Outcome.FAIL:
            lines.append(f"      requirement: {r.case.requirement}")
            lines += [f"      | {line}" for line in r.evidence]
    counts = {o: sum(1 for r in results if r.outcome is o) for o in Outcome}
    lines.append(
        f"{counts[Outcome.PASS]} passed, {counts[Outcome.FAIL]} failed, "
        f"{counts[Outcome.SKIP]} skipped, of {len(results)} cases"
    )
    return "\n".join(lines)


def as_json(results: Sequence[Result]) -> str:
    return json.dumps(
        [
            {
                **_case_fields(r.case),
                "outcome": r.outcome.value,
                "detail": r.detail,
                "evidence": r.evidence,
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
        indent=2,
    )


def _case_fields(case: Case) -> dict[str, object]:
    return {
        "id": case.id,
        "role": case.role.value,
        "level": case.level.value,
        "title": case.title,
        "requirement": case.requirement,
        "trusted": case.trusted,
    }


def as_junit(results: Sequence[Result], name: str = "gate conformance") -> str:
    root = ET.Element("testsuites")
    suite = ET.SubElement(
        root,
        "testsuite",
        name=name,
        tests=str(len(results)),
        failures=str(sum(1 for r in results if r.outcome is Outcome.FAIL)),
        skipped=str(sum(1 for r in results if r.outcome is Outcome.SKIP)),
        time=f"{sum(r.seconds for r in results):.3f}",
    )
    for r in results:
        role, section, _ = r.case.id.split("/")
        testcase = ET.SubElement(
            suite,
            "testcase",
            classname=f"{role}.§{section}",
            name=f"{r.case.id} {r.case.title}",
            time=f"{r.seconds:.3f}",
        )
        if r.outcome is Outcome.FAIL:
            failure = ET.SubElement(testcase, "failure", message=f"{r.case.id}: {r.detail}")
            failure.text = "\n".join([f"requirement: {r.case.requirement}", *r.evidence])
        elif r.outcome is Outcome.SKIP:
            ET.SubElement(testcase, "skipped", message=r.detail)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def listing(cases: Sequence[Case]) -> str:
    """The cases, one a line, as `--list` prints them."""
    return "\n".join(
        f"{c.id:<16} {c.level.value:<6} {'trusted' if c.trusted else '':<7} {c.title}"
        for c in cases
    )


def listing_json(cases: Sequence[Case]) -> str:
    """The cases as `--list --json` prints them: each with the fields of its results."""
    return json.dumps([_case_fields(c) for c in cases], indent=2)


def as_markdown(cases: Sequence[Case]) -> str:
    """The list of cases for spec/CONFORMANCE.md (generated: a test checks it is current)."""
    out = []
    for role in dict.fromkeys(c.role for c in cases):
        mine = [c for c in cases if c.role is role]
        out += [
            f"#### {role.value.capitalize()} cases ({len(mine)})",
            "",
            "| id | level | needs | checks | requirement (spec/protocol.md) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for c in mine:
            needs = (
                "trusted key"
                if c.trusted
                else ("--front" if c.section == "7.4" and role.value == "relay" else "")
            )
            quote = c.requirement.replace("|", "\\|")
            out.append(f"| `{c.id}` | {c.level.value} | {needs} | {c.title} | {quote} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"
