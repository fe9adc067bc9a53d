"""Structured logging: logfmt lines on stderr, JSON lines in a file for tools.

Both carry the same fields: time, level, logger, message, and whatever a caller put
in `extra=`. The file rotates (10 MiB x 5) so a long-running daemon cannot fill a disk.

When stderr is a terminal a person is reading it: it gets warnings and errors only (and
the few lines a caller marks with `extra={"console": True}`, such as "shutting down"),
as short lines (time, level, message, fields), so the first screen of `gate serve` is its
banner; the log file still keeps every line at the configured level. `GATE_LOG=debug`
shows everything there too.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import pathlib
import sys
from typing import Any, Final, TextIO

import msgspec

__all__ = ["LOG_FILENAME", "plain_line", "setup_logging", "timestamp"]

LOG_FILENAME: Final = "gate.log"
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
_CONSOLE_FLAG: Final = "console"  # extra={"console": True}: shown on a terminal too
_json = msgspec.json.Encoder(enc_hook=repr)  # a stray object in `extra` must never break logging


def timestamp(record: logging.LogRecord) -> str:
    """A record's time as the log file writes it (UTC, ISO 8601, milliseconds)."""
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": timestamp(record),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and not key.startswith("_") and key != _CONSOLE_FLAG:
            fields[key] = value
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _json.encode(_fields(record)).decode()


class LogfmtFormatter(logging.Formatter):
    """One line per record; tracebacks only when asked for (they stay in the JSON file)."""

    def __init__(self, *, tracebacks: bool) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        exc = fields.pop("exc", None)
        line = " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())
        return f"{line}\n{exc}" if exc and self.tracebacks else line


class TerminalFormatter(logging.Formatter):
    """For a person at a terminal: local time, the level unless it is info, the message,
    then the fields; a traceback only when asked for."""

    def __init__(self, *, tracebacks: bool) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        for key in ("ts", "logger"):
            fields.pop(key)
        level, message, exc = fields.pop("level"), fields.pop("msg"), fields.pop("exc", None)
        stamp = dt.datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        parts = [stamp, message if level == "info" else f"{level}: {message}"]
        if fields:
            parts.append(" ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items()))
        line = "  ".join(parts)
        return f"{line}\n{exc}" if exc and self.tracebacks else line


class _WithTraceback(logging.Filter):
    """At debug level: a warning or error logged while an exception is being handled
    carries that exception's traceback, though the call did not ask for it (Gate logs
    engine, peer and request failures as one line; debugging them needs where they rose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None and record.levelno >= logging.WARNING:
            current = sys.exc_info()
            if current[0] is not None:
                record.exc_info = current
        return True


class _TerminalFloor(logging.Filter):
    """Lets through what is at `level` or above, and what is marked for the console."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or bool(getattr(record, _CONSOLE_FLAG, False))


def _logfmt_value(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' "=\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup_logging(
    level: str,
    log_dir: pathlib.Path | None,
    *,
    stream: TextIO | None = None,
    console_level: str | None = None,
) -> pathlib.Path | None:
    """Configure the root logger; return the log file's path (None when file logging is off).

    `console_level` raises the floor for stderr alone (a daemon in the background keeps
    only warnings in its output file; the log file has everything at `level`)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level.upper())

    stream = stream or sys.stderr
    console = logging.StreamHandler(stream)
    debug = root.level <= logging.DEBUG
    if debug:
        console.addFilter(_WithTraceback())
    if _is_terminal(stream):
        console.setFormatter(TerminalFormatter(tracebacks=debug))
        floor = logging.DEBUG if debug else logging.WARNING
        console.addFilter(_TerminalFloor(max(floor, _level(console_level or "debug"))))
    else:
        console.setFormatter(LogfmtFormatter(tracebacks=debug))
        if console_level is not None:
            console.setLevel(console_level.upper())
    root.addHandler(console)

    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = log_dir / LOG_FILENAME
    file_handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"
    )
    file_handler.setFormatter(JsonFormatter())
    if debug:
        file_handler.addFilter(_WithTraceback())
    root.addHandler(file_handler)
    # Libraries that are chatty at INFO would drown Gate's own lines.
    for noisy in ("hypercorn.access", "gate.http.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


def plain_line(record: dict[str, Any]) -> str:
    """A log record (as the file or `get_logs` has it) as one line for a person: time,
    level, logger, message, then every other field (the keys, the reason, the peer)."""
    stamp = f"{record['ts']} " if "ts" in record else ""
    line = (
        f"{stamp}{record.get('level', '?'):7} {record.get('logger', '?')}: {record.get('msg', '')}"
    )
    rest = {k: v for k, v in record.items() if k not in ("ts", "level", "logger", "msg")}
    if rest:
        line += "  " + " ".join(f"{k}={_logfmt_value(v)}" for k, v in rest.items())
    return line


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a stream without a file, or closed
        return False


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name.upper()]


LEVELS: Final = ("debug", "info", "warning", "error", "critical")


def read_log(path: pathlib.Path, *, level: str = "info", limit: int = 100) -> list[dict[str, Any]]:
    """The last `limit` records at `level` or above from a JSON-lines log file."""
    from collections import deque

    floor = LEVELS.index(level)
    records: deque[dict[str, Any]] = deque(maxlen=limit)
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                record = msgspec.json.decode(line)
            except msgspec.DecodeError:
                continue  # a line cut short by a crash
            level_of = record.get("level") if isinstance(record, dict) else None
            if level_of in LEVELS and LEVELS.index(level_of) >= floor:
                records.append(record)
    return list(records)
