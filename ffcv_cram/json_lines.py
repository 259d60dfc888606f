"""Reading the trainer's JSON-lines logs back (log.jsonl, steps.jsonl): for resuming a run and for
plotting it. A last line without its newline is one a running trainer is appending, or a killed
one left half written: it is left out. A damaged line elsewhere is refused with one line."""
from __future__ import annotations

import json
import os

from .config import UsageError


def read_json_lines(path: str, required: tuple[str, ...] = ()) -> list[dict]:
    """The records in `path` ([] when absent), each holding the keys in `required`."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        pieces = f.read().split("\n")
    records = []
    for number, piece in enumerate(pieces[:-1], 1):  # pieces[-1]: after the last newline
        if not piece.strip():
            continue
        try:
            record = json.loads(piece)
        except json.JSONDecodeError:
            record = None
        missing = [key for key in required if key not in record] if isinstance(record, dict) else None
        if missing is None or missing:
            what = "not a JSON object" if missing is None else f"no {', '.join(missing)}"
            raise UsageError(f"{path} line {number}: {what}; the file is damaged (delete it or "
                             "the damaged line)")
        records.append(record)
    return records
