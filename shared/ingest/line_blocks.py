"""CSV raw lines: one block per batch (raw_line_blocks, migration 0006), and which are stored.

A line is read once because the file offset that covers it commits with it; when lines do
repeat (a replaced file, a re-appended day) their quotes collide on the quotes' primary key,
which says whether the identical line is stored already (quotes.raw_hash).
"""
from __future__ import annotations

import io
from typing import Any, Sequence

from shared.batch.copy_format import (
    COPY_CHUNK_BYTES,
    INT8,
    LINE_BLOCK_COLUMNS,
    QUOTE_HASH_BYTES,
    STORED_HASH_PREFIX,
    binary_copy,
    binary_row,
    int4_array,
)
from shared.batch.types import LineBlock

_COPY_LINE_BLOCK = (f"COPY raw_line_blocks ({', '.join(LINE_BLOCK_COLUMNS)}) "
                    "FROM STDIN WITH (FORMAT binary)")

# Staged quotes whose key is stored already, and whether the stored one came from the same
# raw line (then that line is stored too). Hashes as quotes keep them: the first
# QUOTE_HASH_BYTES of the line's SHA-256, here in hex.
_STAGED_KEYS_STORED = (
    f"SELECT encode(s.raw_hash, 'hex'), {STORED_HASH_PREFIX} = s.raw_hash FROM stage_quotes s "
    "JOIN quotes q ON q.asset_id = s.asset_id AND q.source = s.source "
    "AND q.observed_at = s.observed_at"
)


class StoredLines:
    """Which of a line source's staged lines are stored already (after a quote collision).

    Used only when the quotes went through staging: the stored quotes with the staged keys say
    which lines are stored (the same raw hash means the identical line). Another hash (a
    corrected value) means the line may still be stored from an earlier correction, which only
    the file's raw line blocks can tell (one read of their hashes, only for such lines). When
    the quotes' COPY went straight in, `hashes` stays None: every quote was new, so none of
    their lines can be stored (the same line always parses to the same key).
    """

    def __init__(self, source: str, file_key: str) -> None:
        self.source, self.file_key = source, file_key
        self.hashes: set[str] | None = None

    def find(self, cursor: Any) -> None:
        """Collect the hex hashes of staged lines already stored (run before the INSERT)."""
        cursor.execute(_STAGED_KEYS_STORED)
        stored: set[str] = set()
        corrected: list[str] = []
        for hex_hash, same in cursor.fetchall():
            (stored.add if same else corrected.append)(hex_hash)
        if corrected:
            # A line's hash covers its file's key, so only that file's blocks can hold it.
            wanted = set(corrected)
            cursor.execute(
                "SELECT line_hashes FROM raw_line_blocks WHERE source = %s AND file_key = %s",
                (self.source, self.file_key),
            )
            for hashes, in cursor:
                hashes = bytes(hashes)
                found = {hashes[i:i + QUOTE_HASH_BYTES].hex()
                         for i in range(0, len(hashes), 32)} & wanted
                stored.update(found)
        self.hashes = stored


def copy_line_block(
    cursor: Any, source: str, run_id: int, block: LineBlock, stored: set[str] | None,
    repeated_rejects: set[str],
) -> int:
    """Store a batch's raw lines as one raw_line_blocks row; returns how many lines it holds.

    Left out: lines found stored already (`stored`, hex hashes as quotes keep them; None
    when none can be, see StoredLines), a line repeated within the batch after its first,
    and the line of a reject stored before at the same place (`repeated_rejects`,
    locations).
    """
    numbers: Sequence[int] = block.numbers
    payload, hashes = block.payload, block.hashes
    if stored is not None or repeated_rejects:
        texts = payload.split("\n")
        seen = set(stored or ())
        keep: list[int] = []
        for index, number in enumerate(numbers):
            digest = hashes[index * 32:index * 32 + QUOTE_HASH_BYTES].hex()
            if digest in seen or f"{block.file_key}:{number}" in repeated_rejects:
                continue
            seen.add(digest)
            keep.append(index)
        numbers = [numbers[i] for i in keep]
        payload = "\n".join([texts[i] for i in keep])
        hashes = b"".join([hashes[i * 32:(i + 1) * 32] for i in keep])
    if not numbers:
        return 0
    # Binary COPY: the lines and hashes go in as they are, with nothing for the server to
    # parse or unescape (text COPY spent ~1 s per million lines on that alone).
    row = binary_row(
        source.encode(), block.file_key.encode(), int4_array(numbers), payload.encode(),
        hashes, INT8.pack(run_id),
    )
    cursor.copy_expert(_COPY_LINE_BLOCK, io.BytesIO(binary_copy(row)), COPY_CHUNK_BYTES)
    return len(numbers)
