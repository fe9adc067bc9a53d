"""Changing a TOML document in place, so a person's gate.toml keeps its comments and layout.

An edit of gate.toml is a function on plain dicts and lists (what tomllib reads). Its
result is carried over into the tomlkit document the file was parsed into, one change
at a time (`apply_changes`): a value that did not change keeps its text and comments,
a changed value keeps its place and trailing comment, an element added to or removed
from an array or an array of tables leaves its neighbours as they were, and a new key
goes after the last key of its table (not after the comments that lead to the next
section). Writing the whole table out again, as TOML writers do, would drop every
comment and turn `[[providers.engines]]` blocks into inline tables.
"""

from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.items import AoT, Array, Comment, InlineTable, Item, Table

__all__ = ["apply_changes", "parse", "render"]


def parse(text: str) -> tomlkit.TOMLDocument:
    return tomlkit.parse(text)


def render(document: tomlkit.TOMLDocument) -> str:
    return tomlkit.dumps(document)


def apply_changes(document: tomlkit.TOMLDocument, data: dict[str, Any]) -> None:
    """Make `document` equal to `data` (plain values), changing only what differs."""
    _merge_table(document, data, depth=0)


def _merge_table(target: Any, data: dict[str, Any], depth: int) -> None:
    """`target`: the document, a Table or an InlineTable."""
    for key in [k for k in target if k not in data]:
        del target[key]
    for key, value in data.items():
        if key not in target:
            _insert(target, key, value, depth)
            continue
        old = target[key]
        if _plain(old) == value:
            continue
        if isinstance(value, dict) and isinstance(old, Table | InlineTable):
            _merge_table(old, value, depth + 1)
        elif isinstance(value, list) and isinstance(old, AoT | Array):
            if not _merge_list(old, value, depth + 1):
                target[key] = _new_item(value, depth + 1, like=old)
        else:
            target[key] = _new_item(value, depth + 1, like=old)


def _merge_list(old: AoT | Array, new: list[Any], depth: int) -> bool:
    """Turn `old` into `new` by deleting and appending elements, so the others keep their
    text and comments; an array of tables as long as before or longer has its changed
    tables merged in place. False when `old` cannot hold `new` (an array of tables given
    other values): the caller replaces the whole list."""
    if isinstance(old, AoT):
        if not all(isinstance(v, dict) for v in new):
            return False
        if len(new) >= len(old):
            for table, value in zip(old, new, strict=False):
                _merge_table(table, value, depth)
            for value in new[len(old) :]:
                old.append(_new_table(old, value))
            return True
    # The elements of `old` that, in order, begin `new` stay; the rest go, and what `new`
    # has beyond them is appended.
    kept: set[int] = set()
    for index, value in enumerate(old):
        if len(kept) < len(new) and new[len(kept)] == _plain(value):
            kept.add(index)
    for index in reversed(range(len(old))):
        if index not in kept:
            del old[index]
    for value in new[len(kept) :]:
        old.append(
            _new_table(old, value) if isinstance(old, AoT) else _new_item(value, depth, None)
        )
    return True


def _insert(target: Any, key: str, value: Any, depth: int) -> None:
    """A new key: after the last key/value of its table, before the blank lines and
    comments that lead to what follows (tomlkit appends after them)."""
    item = _new_item(value, depth + 1, like=None)
    container: Container | None = (
        target
        if isinstance(target, Container)
        else target.value
        if isinstance(target, Table)
        else None
    )
    if container is not None and not isinstance(item, Table | AoT):
        body = container.body
        last = max(
            (i for i, (name, old) in enumerate(body) if name is not None and not _is_table(old)),
            default=None,
        )
        if last is not None and last + 1 < len(body):
            # tomlkit has no public insert; `_insert_at` is what its own `append` uses.
            container._insert_at(last + 1, key, item)
            return
    target[key] = item


def _new_item(value: Any, depth: int, like: Item | None) -> Item:
    """A value as a tomlkit item. Below a section a table is written inline (`aliases =
    { ... }`, as the README writes them), unless it replaces a table written as one."""
    if isinstance(value, dict) and depth >= 2 and not isinstance(like, Table):
        inline = tomlkit.inline_table()
        inline.update(value)
        return inline
    item: Item = tomlkit.item(value)
    return item


def _new_table(tables: AoT, value: dict[str, Any]) -> Table:
    """A table to append to `tables`, followed by a blank line when the last one is (the
    blank line before the next section belongs to the table above it)."""
    table = tomlkit.item(value)
    assert isinstance(table, Table)
    body = tables[-1].value.body if len(tables) else []
    if body and body[-1][0] is None and not isinstance(body[-1][1], Comment):
        table.add(tomlkit.nl())
    return table


def _is_table(item: Any) -> bool:
    return isinstance(item, Table | AoT)


def _plain(value: Any) -> Any:
    return value.unwrap() if hasattr(value, "unwrap") else value
