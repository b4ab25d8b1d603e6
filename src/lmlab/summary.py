"""summary.json: one JSON object per run directory, mapping each finished stage to its key metrics.

Stages write their own entry and leave the others alone, so a report or a
later stage can read every number from one place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lmlab.io import write_json


def read_summary(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def update_summary(path: str | Path, stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Set `stage`'s entry (atomically) and return the whole summary."""
    data = read_summary(path)
    data[stage] = metrics
    write_json(path, data)
    return data
