"""The run directory's `main.log`: what the run showed on the console, kept with its results.

Hydra's job log only receives records of Python's root logger, and a run reports mostly through
other channels: fedspeech prints one progress line per stage and round, Flower logs through its
own handler (not propagated, so the console does not show it twice) and Ray forwards the client
actors' output to this process's stdout. So `main.log` stayed empty. `run_log` copies every line
written to `sys.stdout` / `sys.stderr` (and Flower's handler) into it, colour codes stripped, while
the console keeps showing everything as before. Output of child processes that write to the file
descriptors directly (a `flwr run` SuperLink) is not copied: their own logs name where it goes.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

#: ANSI colour/style codes (Flower's console handler colours its level names)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_NAME = "main.log"


class _Tee:
    """A text stream that writes to `console` and, without colour codes, to `log` until
    `detach` (threads such as Ray's log monitor may still write after the run has ended)."""

    def __init__(self, console: TextIO, log: TextIO) -> None:
        self.console = console
        self._log: TextIO | None = log
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        self.console.write(text)
        with self._lock:
            if self._log is not None:
                self._log.write(_ANSI.sub("", text))
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        with self._lock:
            if self._log is not None:
                self._log.flush()

    def detach(self) -> None:
        """Stop copying into the log (the console keeps everything)."""
        with self._lock:
            self._log = None

    def close(self) -> None:
        """Closing a copy of the console must not close the console: between Hydra multirun
        jobs something closed the stream it had been given, and with it the real stderr."""
        self.detach()

    @property
    def closed(self) -> bool:
        return self.console.closed

    def __getattr__(self, name: str):  # noqa: ANN204 - isatty, fileno, encoding: the console's
        return getattr(self.console, name)


@contextmanager
def run_log(run_dir: Path) -> Iterator[Path]:
    """Copy the console (stdout, stderr, Flower's log) into `run_dir/main.log` while inside."""
    path = Path(run_dir) / LOG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    flower_handlers = [h for h in logging.getLogger("flwr").handlers
                       if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    with path.open("a", encoding="utf-8", buffering=1) as log:   # line-buffered, appended to Hydra's
        saved = sys.stdout, sys.stderr, [h.stream for h in flower_handlers]
        tees = [_Tee(sys.stdout, log), _Tee(sys.stderr, log)]
        sys.stdout, sys.stderr = tees
        for handler in flower_handlers:
            tees.append(_Tee(handler.stream, log))
            handler.setStream(tees[-1])
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = saved[0], saved[1]
            for handler, stream in zip(flower_handlers, saved[2]):
                handler.setStream(stream)
            for tee in tees:                # before the file closes: some may still be held
                tee.detach()
