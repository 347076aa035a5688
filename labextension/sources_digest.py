"""The digest of the sidebar's sources, kept next to the prebuilt extension.

``python sources_digest.py`` prints it; ``--write`` stores it in the prebuilt
extension's folder (the build does this last); ``--check`` exits 1 when the prebuilt
extension is missing or was built from other sources (then ``jlpm build`` is due).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: The files the build reads, relative to this folder.
SOURCES = ("package.json", "tsconfig.json", "yarn.lock", "install.json", "src", "style")
#: Where the build puts the prebuilt extension, and the digest it was built from.
BUILT = HERE.parent / "htcml_jupyter" / "labextension"
STAMP = BUILT / "sources.sha256"


def digest(base: Path = HERE) -> str:
    """SHA-256 over the path and bytes of every source file, in path order."""
    files: list[Path] = []
    for name in SOURCES:
        path = base / name
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir()
                     else [path])
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(base).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def is_current() -> bool:
    """True when the prebuilt extension exists and was built from these sources."""
    try:
        stamp = STAMP.read_text().strip()
    except OSError:
        return False
    return (BUILT / "package.json").is_file() and stamp == digest()


def main(argv: list[str]) -> int:
    if argv[1:] == ["--write"]:
        STAMP.write_text(digest() + "\n")
        return 0
    if argv[1:] == ["--check"]:
        if is_current():
            return 0
        print(f"the prebuilt extension in {BUILT} is missing or older than its sources in "
              f"{HERE}: run `jlpm install && jlpm build` there (scripts/setup-env does)",
              file=sys.stderr)
        return 1
    print(digest())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
