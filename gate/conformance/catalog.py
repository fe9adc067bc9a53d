"""Every case, registered: `select` picks the ones a run asks for, `all_cases` lists them
all (for --list and the spec's generated table)."""

from __future__ import annotations

import gate.conformance.cases  # noqa: F401  (imported to register every case)
from gate.conformance.registry import CASES, Case, Level, Role

__all__ = ["all_cases", "select"]


def _sort_key(case_id: str) -> tuple[str, tuple[int, ...], int]:
    role, section, number = case_id.split("/")
    return role, tuple(int(p) for p in section.split(".")), int(number)


def select(role: Role, *, strict: bool = False, only: str | None = None) -> list[Case]:
    """The cases to run for `role`, in id order: the MUSTs (and SHOULDs with `strict`),
    narrowed by `only`, a comma-separated list of sections (`3.2`) or case numbers
    (`5.4/2`, run whatever its level). A selector that matches no case is a ValueError."""
    mine = [c for c in CASES.values() if c.role is role]
    if only is None:
        chosen = [c for c in mine if strict or c.level is Level.MUST]
    else:
        chosen = []
        for selector in (s.strip() for s in only.split(",") if s.strip()):
            selector = selector.removeprefix(f"{role.value}/")
            if "/" in selector:  # one case, named: run it whatever its level
                named = [c for c in mine if c.id == f"{role.value}/{selector}"]
            else:  # a section: its MUSTs, and its SHOULDs with --strict
                named = [c for c in mine if c.section == selector]
            if not named:
                raise ValueError(f"no {role.value} case matches {selector!r}")
            hits = [c for c in named if "/" in selector or strict or c.level is Level.MUST]
            chosen += [c for c in hits if c not in chosen]
    return sorted(chosen, key=lambda c: _sort_key(c.id))


def all_cases() -> list[Case]:
    return sorted(CASES.values(), key=lambda c: _sort_key(c.id))
