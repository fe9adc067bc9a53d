"""The suite's selection and reports, without a network: what --cases, --strict, --list,
--json and --junit give."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from gate.cli.conformance import conformance
from gate.conformance import Level, Outcome, Result, Role, all_cases, select
from gate.conformance.report import as_json, as_junit, as_markdown, as_text, passed


def test_the_default_run_is_the_musts_and_strict_adds_the_shoulds():
    musts = select(Role.NODE)
    every = select(Role.NODE, strict=True)
    assert all(c.level is Level.MUST for c in musts)
    assert {c.id for c in every} - {c.id for c in musts} == {
        c.id for c in all_cases() if c.role is Role.NODE and c.level is Level.SHOULD
    }


def test_cases_selects_sections_and_single_cases():
    chosen = [c.id for c in select(Role.NODE, only="3.2,5.4/2")]
    assert chosen == [c.id for c in all_cases() if c.id.startswith("node/3.2/")] + ["node/5.4/2"]
    # A case named alone runs whatever its level; a section's SHOULDs need --strict.
    should = next(c for c in all_cases() if c.role is Role.NODE and c.level is Level.SHOULD)
    assert [c.id for c in select(Role.NODE, only=should.id)] == [should.id]
    assert should not in select(Role.NODE, only=should.section)
    with pytest.raises(ValueError, match=r"42\.1"):
        select(Role.NODE, only="42.1")


def results() -> list[Result]:
    first, second, third = select(Role.RELAY)[:3]
    return [
        Result(first, Outcome.PASS, "connected"),
        Result(second, Outcome.FAIL, "error 200; expected 100", ["s: sent 48 54", "s: received x"]),
        Result(third, Outcome.SKIP, "needs --front"),
    ]


def test_a_failure_shows_its_id_requirement_and_evidence():
    text = as_text(results())
    failed = results()[1]
    assert f"FAIL  {failed.case.id}" in text
    assert f"requirement: {failed.case.requirement}" in text
    assert "| s: sent 48 54" in text
    assert text.endswith("1 passed, 1 failed, 1 skipped, of 3 cases")
    assert not passed(results()) and passed([results()[0], results()[2]])


def test_json_and_junit_carry_the_same():
    cases = json.loads(as_json(results()))
    assert [c["outcome"] for c in cases] == ["pass", "fail", "skip"]
    assert cases[1]["evidence"] == ["s: sent 48 54", "s: received x"]
    suite = ET.fromstring(as_junit(results())).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    failure = suite.findall("testcase")[1].find("failure")
    assert failure is not None and results()[1].case.id in failure.get("message", "")
    assert "s: sent 48 54" in (failure.text or "")


def test_list_prints_the_cases_without_a_target():
    runner = CliRunner()
    listed = runner.invoke(conformance, ["--list", "--role", "relay"])
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.output.splitlines()] == [
        c.id for c in select(Role.RELAY)
    ]
    markdown = runner.invoke(conformance, ["--list", "--markdown", "--strict"])
    assert markdown.output == as_markdown(select(Role.NODE, strict=True))


def test_list_as_json_for_machines():
    runner = CliRunner()
    listed = runner.invoke(conformance, ["--list", "--json", "--role", "relay"])
    assert listed.exit_code == 0, listed.output
    cases = json.loads(listed.output)
    assert [c["id"] for c in cases] == [c.id for c in select(Role.RELAY)]
    assert {"level", "title", "requirement", "trusted"} <= set(cases[0])
    both = runner.invoke(conformance, ["--list", "--json", "--markdown"])
    assert both.exit_code == 2 and "--markdown goes with --list alone" in both.output


def test_identity_takes_a_pem_raw_bytes_or_hex(tmp_path):
    from gate.cli.conformance import _identity
    from gate.identity import NodeIdentity

    key = NodeIdentity.generate()
    files = {
        "key.pem": key.to_pem(None),
        "key.raw": key.secret_key_bytes,
        "key.hex": key.secret_key_bytes.hex().encode() + b"\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert _identity(tmp_path / name) == key, name
    (tmp_path / "bad").write_bytes(b"not a key")
    with pytest.raises(SystemExit) as exited:
        _identity(tmp_path / "bad")
    assert exited.value.code == 2
