"""Untrusted CSV_DIR: which entries may be read, opening them safely, reading bounded lines.

Only regular files directly in the folder are read. Symbolic links are never followed, even
to a file inside the folder (a link is a file-level reject): that rules out reading anything
outside CSV_DIR without resolving paths, which would race with changes to the folder. Each
file is opened with O_NOFOLLOW | O_NONBLOCK relative to the folder's own descriptor and
checked with fstat on the opened descriptor, so a FIFO never blocks the run and an entry
swapped for a link, FIFO or directory between listing and opening is caught.
"""
from __future__ import annotations

import errno
import functools
import itertools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from shared.bounds import LINE_MAX_BYTES

# readline() is asked for one byte more than a line may hold: a piece that long without a
# newline is an oversize line (the rest of it is skipped, never held in memory).
PIECE_BYTES = LINE_MAX_BYTES + 1
# How much of an oversize line is kept as its raw text and in its reject.
PREVIEW_BYTES = 1024
OVERSIZE_MARK = " [cut]"
_OPEN_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
               | getattr(os, "O_CLOEXEC", 0))
LINK = "a symbolic link (links are not followed)"
_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)
VANISHED = "file vanished before it could be read"


class FileProblem(Exception):
    """A CSV entry that cannot be read; str(exc) is a short reason without paths."""


@dataclass(frozen=True)
class CsvEntry:
    """A *.csv entry of the folder: its name as listed, a safe key, and why it is refused."""

    name: str  # as the OS gave it (undecodable bytes as surrogates): for opening only
    key: str  # printable UTF-8: checkpoints, locations, messages
    problem: str | None = None


def safe_name(name: str) -> str:
    """A file name as printable UTF-8: bad bytes and control characters as \\x escapes."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def _kind_problem(mode: int) -> str | None:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return LINK
    for test, kind in _KINDS:
        if test(mode):
            return f"not a regular file ({kind})"
    return "not a regular file"


def _os_problem(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return VANISHED
    if isinstance(exc, PermissionError):
        return "permission denied"
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link
        return LINK
    return f"cannot be read ({exc.strerror or type(exc).__name__})"


def list_entries(directory: Path, skip_name: str | None = None) -> list[CsvEntry]:
    """The folder's *.csv entries by name (hidden ones and `skip_name` left out), each judged.

    Nothing is opened here: an entry's type comes from lstat, which does not follow links.
    """
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries = []
    for name in sorted(names):
        if not name.endswith(".csv") or name.startswith(".") or name == skip_name:
            continue
        key = safe_name(name)
        problem: str | None = None
        if _undecodable(name):
            problem = "file name is not valid UTF-8"
        elif key != name:
            problem = "file name contains control characters"
        else:
            try:
                problem = _kind_problem(os.lstat(directory / name).st_mode)
            except OSError as exc:
                problem = _os_problem(exc)
        entries.append(CsvEntry(name, key, problem))
    return entries


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def open_entry(directory: Path, entry: CsvEntry) -> BinaryIO:
    """Open a listed entry for reading, or raise FileProblem (nothing followed, nothing blocks)."""
    if entry.problem is not None:
        raise FileProblem(entry.problem)
    try:
        folder = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise FileProblem(f"folder {_os_problem(exc)}") from None
    try:
        fd = os.open(entry.name, _OPEN_FLAGS, dir_fd=folder)
    except OSError as exc:
        raise FileProblem(_os_problem(exc)) from None
    finally:
        os.close(folder)
    try:
        problem = _kind_problem(os.fstat(fd).st_mode)
        if problem is not None:
            raise FileProblem(problem)
        # Regular files ignore O_NONBLOCK; clear it anyway so reads behave as documented.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def preview(piece: bytes) -> str:
    """The start of an oversize line as storable text, marked as cut."""
    return storable(piece[:PREVIEW_BYTES].decode("utf-8", "replace")) + OVERSIZE_MARK


def storable(text: str) -> str:
    """`text` without NUL, which PostgreSQL text cannot hold (shown as U+FFFD, as bad bytes)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


class LineScanner:
    """Reads a file's lines from `offset`, at most LINE_MAX_BYTES each, flagging bad ones.

    `read(n)` returns up to n non-blank lines as (line number, text) and the reasons of the
    lines that cannot be used as read: longer than LINE_MAX_BYTES (kept as a cut preview, the
    rest skipped), invalid UTF-8 (bad bytes shown as U+FFFD) or a NUL byte. `offset` always
    ends on a line boundary after a read.
    """

    def __init__(self, handle: BinaryIO, offset: int, line_no: int) -> None:
        self.handle, self.offset, self.line_no = handle, offset, line_no
        self._pieces: Iterator[bytes] = iter(functools.partial(handle.readline, PIECE_BYTES), b"")
        self._skipping = False

    def read(self, limit: int) -> tuple[list[tuple[int, str]], dict[int, str]]:
        """Up to `limit` non-blank lines and the reject reasons of flagged ones, by line."""
        lines: list[tuple[int, str]] = []
        flagged: dict[int, str] = {}
        while len(lines) < limit:
            chunk = list(itertools.islice(self._pieces, limit - len(lines)))
            if not chunk:
                break
            block = b"".join(chunk)
            self.offset += len(block)
            # The common case in C: no NUL, no oversize piece, valid UTF-8. One decode per
            # chunk; splitting on "\n" only keeps other separators inside their line.
            if not self._skipping and b"\x00" not in block and max(map(len, chunk)) < PIECE_BYTES:
                try:
                    decoded = block.decode("utf-8")
                except UnicodeDecodeError:
                    pass
                else:
                    texts = decoded.split("\n")
                    if texts[-1] == "":
                        texts.pop()  # the chunk ended with a newline
                    start = self.line_no + 1
                    self.line_no += len(texts)
                    # The usual chunk has no carriage return and no blank line: numbered in C.
                    if "\r" not in decoded and "" not in texts and not any(
                            map(str.isspace, texts)):
                        lines.extend(zip(range(start, self.line_no + 1), texts))
                        continue
                    for line_no, text in enumerate(texts, start):
                        text = text.rstrip("\r")
                        if text and not text.isspace():
                            lines.append((line_no, text))
                    continue
            self._scan(chunk, lines, flagged)
        while self._skipping:  # end on a line boundary: the checkpoint's offset
            piece = self.handle.readline(PIECE_BYTES)
            self.offset += len(piece)
            self._skipping = bool(piece) and not piece.endswith(b"\n")
        return lines, flagged

    def _scan(self, chunk: list[bytes], lines: list[tuple[int, str]],
              flagged: dict[int, str]) -> None:
        """Piece by piece: continuation of an oversize line, an oversize start, or a line."""
        for piece in chunk:
            if self._skipping:
                self._skipping = not piece.endswith(b"\n")
                continue
            self.line_no += 1
            if len(piece) == PIECE_BYTES and not piece.endswith(b"\n"):
                self._skipping = True
                flagged[self.line_no] = f"line longer than {LINE_MAX_BYTES} bytes"
                lines.append((self.line_no, preview(piece)))
                continue
            body = piece[:-1] if piece.endswith(b"\n") else piece
            reason: str | None = None
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = body.decode("utf-8", "replace")
                reason = f"invalid UTF-8 (byte {exc.start + 1} of the line)"
            if "\x00" in text:
                text = storable(text)
                reason = reason or "NUL byte in the line"
            text = text.rstrip("\r")
            if reason is None and (not text or text.isspace()):
                continue
            if reason is not None:
                flagged[self.line_no] = reason
            lines.append((self.line_no, text))
