"""The one metrics sink: flat, namespaced keys (`irl/val_loss`, `ppo/kl`) appended as JSON lines.

Every stage logs through a `MetricsSink` into `<stage dir>/metrics.jsonl`. One line per call:
`{"step": int, "time": float, "<namespace>/<name>": value, ..., "<tag>": str, ...}`. Tags
(strings such as `method` and `seed`) identify which model a line belongs to. Reading it back
is one `pandas.read_json(path, lines=True)`.

With `trackers` (run.report_to), every line also goes to those experiment trackers
(accelerate's `TensorBoardTracker`, `WandBTracker`, `TrackioTracker`), its numeric values under
`<tag>=<value>/.../<key>` so the models of one stage stay apart (`method=me/seed=0/irl/val_loss`).

A run resumed from a checkpoint at step k replays steps k, k+1, ...: `MetricsSink.rewind(k)`
(and `drop_rows` for other step-keyed logs such as `samples.jsonl`) first removes the rows those
steps already wrote, so the log holds each step once.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.artifacts import atomic_path
from pipeline.errors import ConfigError

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


def start_trackers(names: Sequence[str], run_name: str, logging_dir: Path) -> list:
    """accelerate's trackers of `names` (tensorboard, wandb, trackio), started; tensorboard writes
    under `logging_dir/run_name`. A tracker whose package is missing is a ConfigError."""
    from accelerate import tracking  # heavy, needed only with a tracker

    classes = {
        "tensorboard": (tracking.TensorBoardTracker, "tensorboard"),
        "wandb": (tracking.WandBTracker, "wandb"),
        "trackio": (tracking.TrackioTracker, "trackio"),
    }
    out = []
    for name in names:
        cls, package = classes[name]
        try:
            t = cls(run_name, str(logging_dir)) if cls.requires_logging_directory else cls(run_name)
            t.start()
        except ImportError as e:
            raise ConfigError(
                f"run.report_to {name}: {e}", hint=f"pip install {package}, or drop it"
            ) from None
        out.append(t)
    return out


class MetricsSink:
    def __init__(
        self,
        path: Path | None,
        trackers: Sequence[str] = (),
        run_name: str = "fairl",
        logging_dir: Path | None = None,
    ):
        self.path = Path(path) if path else None
        self._fh = None
        self._t0 = time.time()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", buffering=1)
        self._trackers = (
            start_trackers(trackers, run_name, Path(logging_dir or "tracking")) if trackers else []
        )

    def log(self, step: int, metrics: dict[str, Any], track: bool = True, **tags: Any) -> None:
        """One line of `metrics` at `step`, tagged; to the trackers too unless `track` is
        false (values a library already sent them)."""
        if self._trackers and track:
            prefix = "".join(f"{k}={v}/" for k, v in tags.items())
            values = {
                prefix + k: float(v)
                for k, v in metrics.items()
                if (hasattr(v, "item") or isinstance(v, (int, float))) and not isinstance(v, bool)
                and math.isfinite(float(v))
            }  # fmt: skip
            for t in self._trackers:
                t.log(values, step=int(step))
        if self._fh is None:
            return
        row: dict[str, Any] = {"step": int(step), "time": round(time.time() - self._t0, 3)}
        row.update({k: v for k, v in tags.items()})
        for k, v in metrics.items():
            v = float(v) if hasattr(v, "item") or isinstance(v, (int, float)) else v
            row[k] = None if isinstance(v, float) and not math.isfinite(v) else v
        self._fh.write(json.dumps(row) + "\n")

    def tagged(self, **tags: Any) -> _Tagged:
        """This sink with `tags` added to every row it logs (one sink, not a second one)."""
        return _Tagged(self, tags)

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
        for t in self._trackers:
            t.finish()
        self._trackers = []

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Tagged:
    def __init__(self, sink: MetricsSink, tags: dict[str, Any]):
        self.sink, self.tags = sink, tags

    def log(self, step: int, metrics: dict[str, Any], track: bool = True, **tags: Any) -> None:
        self.sink.log(step, metrics, track, **self.tags, **tags)


def stage_sink(run, trackers: Sequence[str], run_name: str, jsonl: bool = True) -> MetricsSink:
    """A stage's sink (`run`: its artifacts.StageRun): `metrics.jsonl` in the stage (unless
    `jsonl` is false) and, on the main rank, the trackers, logging as `<run_name>-<stage>` into
    the stage's `tracking/` directory."""
    main = run.is_main
    return MetricsSink(
        run.path("metrics.jsonl") if jsonl and main else None,
        trackers if main else (),
        f"{run_name}-{run.stage}",  # no '/': wandb and trackio refuse it in a name
        run.work_dir / "tracking",
    )
