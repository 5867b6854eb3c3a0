"""The one metrics sink: flat, namespaced keys (`irl/val_loss`, `ppo/kl`) appended as JSON lines.

Every stage logs through a `MetricsSink` into `<stage dir>/metrics.jsonl`. One line per call:
`{"step": int, "time": float, "<namespace>/<name>": value, ..., "<tag>": str, ...}`. Tags
(strings such as `method` and `seed`) identify which model a line belongs to. Reading it back
is one `pandas.read_json(path, lines=True)`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional


class MetricsSink:
    def __init__(self, path: Optional[Path]):
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

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "MetricsSink":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
