"""Log output: GATE_LOG=debug adds the traceback of the error a warning is about."""

from __future__ import annotations

import io
import json
import logging

from gate.logs import setup_logging


def _log_a_handled_failure() -> None:
    try:
        raise ConnectionError("engine went away")
    except ConnectionError as exc:
        logging.getLogger("gate.test").warning("provider unavailable", extra={"error": str(exc)})


def test_debug_logging_adds_the_traceback_of_a_handled_error(tmp_path):
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        for level, expected in (("info", False), ("debug", True)):
            out = io.StringIO()
            path = setup_logging(level, tmp_path / level, stream=out)
            _log_a_handled_failure()
            for handler in root.handlers:
                handler.flush()
            shown = out.getvalue()
            assert "provider unavailable" in shown
            assert ("Traceback" in shown) is expected, shown
            assert path is not None
            record = json.loads(path.read_text().splitlines()[-1])
            assert ("ConnectionError: engine went away" in record.get("exc", "")) is expected
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        root.setLevel(saved[0])
        for handler in saved[1]:
            root.addHandler(handler)
