"""The case registry of the conformance suite: what a case is, how it reports, and
every case by its stable id.

The cases register themselves here when gate.conformance.catalog imports them: one at a
time with the `case` decorator, or as a table (`table`), a `Row` per case, where several
cases are one exchange with other data.

A case id is `ROLE/SECTION/N` (`node/3.2/1`): the role it checks, the section of
spec/protocol.md whose requirement it tests, and a number within that section that
never changes meaning once published (new cases take the next number). Each case
quotes the sentence of the spec it checks (`requirement`, a verbatim fragment: the
coverage test matches it against the spec's MUSTs) and says whether that is a MUST
(required) or a SHOULD (run with --strict).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CASES",
    "Case",
    "CaseFailed",
    "CaseSkipped",
    "Level",
    "Outcome",
    "Result",
    "Role",
    "Row",
    "case",
    "table",
]


class Role(enum.Enum):
    NODE = "node"
    RELAY = "relay"


class Level(enum.Enum):
    MUST = "MUST"
    SHOULD = "SHOULD"


class Outcome(enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"


class CaseFailed(Exception):
    """The target broke the requirement; `evidence` says what was sent and what came back."""

    def __init__(self, message: str, evidence: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.evidence = list(evidence)


class CaseSkipped(Exception):
    """The case cannot run here (no trusted identity, the target serves no model...)."""


# A case gets a gate.conformance.probe.Probe (not imported here: the probe reports
# through this module's exceptions).
CaseBody = Callable[[Any], Awaitable[str]]


@dataclass(frozen=True)
class Case:
    id: str
    role: Role
    level: Level
    title: str  # what the case does, in a few words
    requirement: str  # the spec's words it checks, quoted verbatim
    body: CaseBody = field(repr=False, compare=False)
    trusted: bool = False  # needs an identity the target trusts (--identity)
    timeout: float = 60.0  # the bound on the whole case, in seconds

    @property
    def section(self) -> str:
        return self.id.split("/")[1]


@dataclass(frozen=True)
class Result:
    case: Case
    outcome: Outcome
    detail: str  # pass: what was seen; fail: what went wrong; skip: why
    evidence: list[str] = field(default_factory=list)  # the exchange, bytes in hex
    seconds: float = 0.0


CASES: Final[dict[str, Case]] = {}
_ID: Final = re.compile(r"^(node|relay)/\d+(\.\d+)?/\d+$")


def case(
    id: str,
    title: str,
    requirement: str,
    *,
    level: Level = Level.MUST,
    trusted: bool = False,
    timeout: float = 60.0,
) -> Callable[[CaseBody], CaseBody]:
    """Register the decorated coroutine as case `id`."""
    if not _ID.match(id):
        raise ValueError(f"bad case id {id!r}")

    def register(body: CaseBody) -> CaseBody:
        if id in CASES:
            raise ValueError(f"case {id} registered twice")
        role = Role(id.split("/")[0])
        CASES[id] = Case(
            id, role, level, title, " ".join(requirement.split()), body, trusted, timeout
        )
        return body

    return register


@dataclass(frozen=True)
class Row:
    """One case of a table: its id, title, quoted requirement and flags as `case` takes
    them, and the data its table's steps run with. What `send` and `expect` hold is the
    table's own (bytes, a function of the probe, an error code...), said where the table
    is; `pieces` and `finish` say how `send` goes out, where a table uses them."""

    id: str
    title: str
    requirement: str
    send: Any = None  # what the runner sends
    expect: Any = None  # what the target must answer
    pieces: int | None = None  # write `send` in pieces of this many bytes, each its own write
    finish: bool = False  # finish the sending half after `send`
    level: Level = Level.MUST
    trusted: bool = False
    timeout: float = 60.0

    @property
    def role(self) -> str:
        return self.id.split("/")[0]


RowSteps = Callable[[Any, Row], Awaitable[str]]


def table(rows: Iterable[Row], steps: RowSteps, *, roles: Iterable[str] = ()) -> None:
    """Register each row as a case whose body is `steps(probe, row)`. With `roles`, the
    rows' ids leave the role out (`3.4/1`) and each row is a case for every role."""
    roles = tuple(roles)
    for row in rows:
        for one in [dataclasses.replace(row, id=f"{r}/{row.id}") for r in roles] or [row]:
            case(
                one.id,
                one.title,
                one.requirement,
                level=one.level,
                trusted=one.trusted,
                timeout=one.timeout,
            )(_with_row(steps, one))


def _with_row(steps: RowSteps, row: Row) -> CaseBody:
    async def body(probe: Any) -> str:
        return await steps(probe, row)

    return body
