"""The one metrics sink: flat, namespaced keys (`irl/val_loss`, `ppo/kl`) appended as JSON lines.

Every stage logs through a `MetricsSink` into `<stage dir>/metrics.jsonl`. One line per call:
`{"step": int, "time": float, "<namespace>/<name>": value, ..., "<tag>": str, ...}`. Tags
(strings such as `method` and `seed`) identify which model a line belongs to. Reading it back
is one `pandas.read_json(path, lines=True)`.

A run resumed from a checkpoint at step k replays steps k, k+1, ...: `MetricsSink.rewind(k)`
(and `drop_rows` for other step-keyed logs such as `samples.jsonl`) first removes the rows those
steps already wrote, so the log holds each step once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_path

log = logging.getLogger("fairl.metrics")


def drop_rows(path: Path, step: int, key: str | None = None) -> int:
    """Remove the rows of steps >= `step` from the JSON-lines log at `path` (only the rows
    holding `key`, a metric name or a namespace, when given; several runs can share one log).
    Rewritten atomically, so a kill leaves the old or the new file. A line that is not a JSON
    object is the torn end of a killed write: it is dropped too, with a warning. Returns the
    number of lines dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped, torn = [], 0, 0
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            row = None
        if not isinstance(row, dict):
            torn += 1
        elif _at_or_after(row, step) and (key is None or _holds(row, key)):
            dropped += 1
        else:
            kept.append(line.decode() + "\n")
    if torn:
        log.warning(
            "%s: dropping %d line(s) that are not JSON objects (a write cut short)", path, torn
        )
    if dropped or torn:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(kept))
    return dropped + torn


def _at_or_after(row: dict, step: int) -> bool:
    s = row.get("step")
    return isinstance(s, (int, float)) and not isinstance(s, bool) and s >= step


def _holds(row: dict, key: str) -> bool:
    return any(k == key or k.startswith(key + "/") for k in row)


class MetricsSink:
    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._fh = None
        self._t0 = time.time()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", buffering=1)

    def log(self, step: int, metrics: dict[str, Any], **tags: Any) -> None:
        if self._fh is None:
            return
        row: dict[str, Any] = {"step": int(step), "time": round(time.time() - self._t0, 3)}
        row.update({k: v for k, v in tags.items()})
        for k, v in metrics.items():
            v = float(v) if hasattr(v, "item") or isinstance(v, (int, float)) else v
            row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        self._fh.write(json.dumps(row) + "\n")

    def rewind(self, step: int, key: str | None = None) -> None:
        """Drop the logged rows of steps >= `step` (holding `key`, if given: see `drop_rows`)
        before a run resumed from a checkpoint at `step` logs them again."""
        if self._fh is None:
            return
        self._fh.close()
        drop_rows(self.path, step, key)
        self._fh = open(self.path, "a", buffering=1)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
