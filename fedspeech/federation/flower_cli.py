"""Where Flower's commands (`flwr`, `flower-superlink`, ...) are: the ones installed beside this
Python first, so a run uses the Flower it imports even when another one is on PATH."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def flower_command(name: str) -> str:
    """The path of Flower's `name` command; a clear error when it is not installed."""
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        raise FileNotFoundError(f"Flower's `{name}` command is not installed next to {sys.executable} "
                                "nor on PATH")
    return exe
