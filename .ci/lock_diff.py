"""Markdown table of the installed versions that differ from a lock (the weekly newest-deps job)."""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def normalize(name: str) -> str:
    """A distribution name in its PEP 503 form (`Flask_Migrate` -> `flask-migrate`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """The `name==version` pins of a requirements file, by normalized name."""
    return {normalize(name): version for name, version in PIN.findall(text)}


def installed() -> dict[str, str]:
    """The distributions installed in this interpreter, by normalized name."""
    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions()
            if d.metadata["Name"]}


def differences(locked: dict[str, str],
                current: dict[str, str]) -> list[tuple[str, str, str]]:
    """(name, locked, installed) for each locked package whose installed version differs."""
    return sorted((name, version, current.get(name, "not installed"))
                  for name, version in locked.items() if current.get(name) != version)


def markdown(lock: str, rows: list[tuple[str, str, str]]) -> str:
    """The job summary's table (or a line saying nothing moved)."""
    if not rows:
        return f"## Newest allowed versions\nEvery package is at its version in `{lock}`.\n"
    lines = [f"## Newest allowed versions: {len(rows)} differ from `{lock}`", "",
             "| package | locked | newest allowed |", "|---|---|---|"]
    lines += [f"| {name} | {old} | {new} |" for name, old, new in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Print the table for the lock named on the command line."""
    lock = argv[1] if len(argv) > 1 else "requirements/dev.txt"
    rows = differences(parse_lock(Path(lock).read_text()), installed())
    print(markdown(lock, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
