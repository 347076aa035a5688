"""Where htcml_jupyter keeps its files on the submit side."""

from __future__ import annotations

import os
from pathlib import Path


def htcml_home() -> Path:
    """The folder for map folders and the pool's client files (``$HTCML_HOME``, default
    ``~/.htcml``)."""
    env = os.environ.get("HTCML_HOME")
    return Path(env).expanduser() if env else Path.home() / ".htcml"


def default_map_root() -> Path:
    """The folder under which each map gets its own folder."""
    return htcml_home() / "maps"
