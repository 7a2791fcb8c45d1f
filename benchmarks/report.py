"""The run's outputs: the table with its failed phases, the JSON file, and the document's generated block."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from deepfake_platform.files import write_text_atomic


def with_failed_phases(table: str, errors: dict[str, str]) -> str:
    """`table`, followed by a line naming each failed phase and why (when any failed)."""
    if not errors:
        return table
    return table + "\n\nFailed phases: " + "; ".join(f"{name}: {why}" for name, why in errors.items())


def write_json(path: str | Path, summary: dict[str, float], info: dict[str, str], settings: dict[str, Any],
               errors: dict[str, str]) -> None:
    """The summary figures, machine, settings and errors as JSON at `path`."""
    # null, not NaN, for a figure that was not measured: NaN is not JSON.
    figures: dict[str, Any] = {key: None if math.isnan(value) else value for key, value in summary.items()}
    figures.update(machine=info, settings=settings, errors=errors)
    write_text_atomic(path, json.dumps(figures, indent=2, allow_nan=False) + "\n")


def write_doc_block(path: str | Path, table: str, name: str) -> None:
    """Replace the generated block `name` of the Markdown file at `path` by `table`."""
    write_text_atomic(path, update_doc(Path(path).read_text(), table, name))


def update_doc(text: str, block: str, name: str) -> str:
    """`text` with the generated block `name` (between its start/end markers) replaced by `block`."""
    start, end = f"<!-- benchmark:{name}:start -->", f"<!-- benchmark:{name}:end -->"
    if start not in text or end not in text:
        raise ValueError(f"the document has no {start} ... {end} markers; add them where the table belongs.")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{block.strip()}\n{end}{tail}"
