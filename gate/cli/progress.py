"""A spinner on stderr for waits a person would otherwise stare at in silence.

    with spinner("starting the daemon"):
        wait_until_ready()

Nothing is drawn for the first second (most waits end before that, and a flash of
spinner is noise), nor ever when stderr is not a terminal, so scripts, pipes and
`--json` output see no control characters. The line is erased when the wait ends.

The drawing runs in a thread because the CLI's waits are plain blocking calls (HTTP,
time.sleep, a subprocess); the thread never outlives the `with` block. No library: click
has a progress bar but no spinner, and the candidates (rich, yaspin, halo) would add a
dependency for thirty lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["DELAY", "Spinner", "spinner"]

DELAY = 1.0  # seconds before anything is drawn
_INTERVAL = 0.1
_FRAMES_UTF8 = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_FRAMES_ASCII = "|/-\\"


class Spinner:
    def __init__(self, message: str, stream: TextIO, *, delay: float = DELAY) -> None:
        self.message = message
        self._stream = stream
        self._delay = delay
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        encoding = (getattr(stream, "encoding", None) or "ascii").lower().replace("-", "")
        self._frames = _FRAMES_UTF8 if encoding == "utf8" else _FRAMES_ASCII
        self.drawn = False

    def start(self) -> None:
        if _is_terminal(self._stream):
            self._thread = threading.Thread(target=self._run, name="spinner", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.drawn:
            self._write("\r\x1b[K")  # erase the spinner's line

    def _run(self) -> None:
        started = time.monotonic()
        if self._done.wait(self._delay):
            return
        frame = 0
        while not self._done.is_set():
            elapsed = time.monotonic() - started
            self._write(f"\r{self._frames[frame]} {self.message} ({elapsed:.0f}s)\x1b[K")
            self.drawn = True
            frame = (frame + 1) % len(self._frames)
            self._done.wait(_INTERVAL)

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):  # the terminal went away: nothing to draw on
            self._done.set()


@contextmanager
def spinner(
    message: str, *, delay: float = DELAY, stream: TextIO | None = None
) -> Iterator[Spinner]:
    """Draw a spinner with `message` on stderr (a terminal only) after `delay` seconds."""
    s = Spinner(message, stream or sys.stderr, delay=delay)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False
