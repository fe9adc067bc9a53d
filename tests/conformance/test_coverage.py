"""Every numbered MUST of spec/protocol.md is checked by a conformance case, or has a
written reason in gate.conformance.uncovered; every case quotes the spec verbatim."""

from __future__ import annotations

import re
from pathlib import Path

from gate.conformance import all_cases
from gate.conformance.uncovered import REASONS

SPEC = Path(__file__).resolve().parents[2] / "spec" / "protocol.md"


def _norm(text: str) -> str:
    return " ".join(text.split())


def bullets() -> list[tuple[str, str]]:
    """(section, text) of each numbered requirement bullet."""
    text = SPEC.read_text()
    found = re.findall(r"^- \*\*§([\d.]+)\*\*(.*?)(?=^\S|^\s*$|^- )", text, re.M | re.S)
    return [(section, _norm(body)) for section, body in found]


def must_sentences() -> list[tuple[str, str, str]]:
    """(section, the sentence, its bullet) for each sentence with MUST in a bullet."""
    out = []
    for section, body in bullets():
        for sentence in re.split(r"(?<=[.;:)])\s+(?=[A-Z(`])", body):
            if "MUST" in sentence:
                out.append((section, sentence, body))
    return out


def covered_by_cases() -> set[str]:
    """The MUST sentences whose text a case quotes (in part)."""
    covered = set()
    for _, sentence, body in must_sentences():
        for case in all_cases():
            at = body.find(case.requirement)
            if at < 0:
                continue
            start = body.find(sentence)
            if start < at + len(case.requirement) and at < start + len(sentence):
                covered.add(sentence)
    return covered


def test_the_spec_has_the_musts_this_test_expects():
    sentences = must_sentences()
    assert len(sentences) > 60
    assert any("FRAME_TOO_LARGE" in s for _, s, _ in sentences)


def test_every_case_quotes_the_spec_verbatim():
    text = _norm(SPEC.read_text())
    stale = [f"{c.id}: {c.requirement}" for c in all_cases() if c.requirement not in text]
    assert not stale, "cases whose quote is not in spec/protocol.md:\n" + "\n".join(stale)


def test_every_must_is_covered_by_a_case_or_has_a_reason():
    covered = covered_by_cases()
    uncovered = [
        f"§{section}: {sentence}"
        for section, sentence, _ in must_sentences()
        if sentence not in covered and not any(key in sentence for key in REASONS)
    ]
    assert not uncovered, (
        "MUSTs no case covers and gate/conformance/uncovered.py gives no reason for:\n"
        + "\n".join(uncovered)
    )


def test_every_reason_is_for_a_must_no_case_covers():
    covered = covered_by_cases()
    sentences = [s for _, s, _ in must_sentences()]
    gone = [key for key in REASONS if not any(key in s for s in sentences)]
    assert not gone, "reasons for MUST sentences that are not in the spec:\n" + "\n".join(gone)
    needless = [key for key in REASONS if all(s in covered for s in sentences if key in s)]
    assert not needless, "reasons for MUSTs a case covers:\n" + "\n".join(needless)


def test_there_are_at_least_60_cases_and_every_id_is_stable_and_unique():
    cases = all_cases()
    assert len(cases) >= 60
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        role, section, number = c.id.split("/")
        assert role == c.role.value and section == c.section and number.isdigit()


def test_the_case_list_in_conformance_md_is_current():
    from spec.generate import conformance_doc

    doc = SPEC.parent / "CONFORMANCE.md"
    text = doc.read_text()
    assert "<!-- cases: generated" in text
    assert conformance_doc(text) == text, "stale: run `python -m spec.generate` (or make spec)"
