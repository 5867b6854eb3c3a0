"""`fairl compare RUN_DIR...`: one comparison report over runs that evaluated the same test pairs.

A run directory is `<run.root>/<run.name>/` with a published `evaluate/` stage (and the `irl/`
stage it read). The runs are comparable when their irl stages split the same test pairs (the
same prompt, chosen and rejected texts): the check hashes the test rows of each run's
`irl/pairs.parquet`, so runs made by hand, by a sweep or on other machines compare alike. What
differs between their configs is read from the stage manifests (each stage records the config it
ran with), flattened to `stage:section.key` and listed where the runs disagree.

Writes, to the output directory (published atomically, like a stage):

    comparison.json   runs, what differs, per metric and method: mean, std, seeds per run
    report.md         the same as tables
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from pipeline.artifacts import ForeignDirectory, atomic_dir, write_json
from pipeline.config import STAGES, method_label
from pipeline.errors import DataError, MissingArtifactError

METRICS = (
    ("test/f1", "test F1 ↑"),
    ("test/auc", "test AUC ↑"),
    ("test/starc", "test STARC (Eq. 4) ↓"),
    ("train/starc", "training STARC (Eq. 4) ↓"),  # the paper's Figure 4
)


GROUND_TRUTH = ("chosen_score", "rejected_score", "chosen_toxic", "rejected_toxic")


def test_pairs_digest(run: Path) -> str:
    """sha256 of the run's test pairs: prompt, chosen and rejected texts and the ground truth on
    them (scores and labels where the pairs have them), order-free. The same texts scored by
    another ground truth are other test data: STARC and F1 would measure different things."""
    df = pd.read_parquet(run / "irl" / "pairs.parquet")
    cols = ["prompt", "chosen", "rejected"] + [c for c in GROUND_TRUTH if c in df.columns]
    test = df.loc[df["split"] == "test", cols].astype(object)
    rows = sorted(
        json.dumps([None if pd.isna(v) else v for v in row], default=float)
        for row in test.itertuples(index=False)
    )
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def flat_config(run: Path) -> dict[str, object]:
    """Every stage manifest's config of the run, flattened to `stage:dotted.key` -> value."""
    out: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if not prefix.endswith(":") else f"{prefix}{k}", v)
        else:
            out[prefix] = value

    for stage in STAGES:
        manifest = run / stage / "manifest.json"
        if manifest.is_file():
            walk(f"{stage}:", json.loads(manifest.read_text())["config"])
    return out


def config_differences(configs: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    """Keys whose values differ between runs (a key a run lacks counts as None): key -> run ->
    value. Upstream hashes (a stage's config names its input's fingerprint) are left out: they
    differ whenever anything upstream does, which the keys themselves say."""
    keys = sorted(set().union(*configs.values()))
    diff = {}
    for key in keys:
        values = {name: cfg.get(key) for name, cfg in configs.items()}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            if all(isinstance(v, str) and len(v) == 64 for v in values.values()):
                continue  # a fingerprint of an upstream stage
            diff[key] = values
    return diff


def _names(runs: list[Path]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same run name under different roots: say which root
        names = [f"{r.parent.name}/{r.name}" for r in runs]
    if len(set(names)) < len(names):
        names = [str(r) for r in runs]
    return names


def compare_runs(runs: list[Path], out: Path, require_same_test: bool = True) -> Path:
    """The comparison report of `runs` in `out` (module docstring). Refuses runs that are not
    comparable (unless `require_same_test` is False: a sweep over the pairs themselves, whose
    report then says so), or lack a published evaluate stage, before writing anything."""
    if len(runs) < 2:
        raise DataError("compare needs two or more run directories", hint="fairl compare RUN RUN")
    check_output(out, runs)
    names = _names(runs)
    metrics, digests = {}, {}
    for name, run in zip(names, runs, strict=True):
        path = run / "evaluate" / "metrics.json"
        if not path.is_file() or not (run / "irl" / "pairs.parquet").is_file():
            raise MissingArtifactError(
                f"{run} has no published evaluate and irl stages",
                hint=f"run `fairl irl` and `fairl evaluate` for it first (looked for {path})",
            )
        metrics[name] = json.loads(path.read_text())
        digests[name] = test_pairs_digest(run)
    same_test = len(set(digests.values())) == 1
    if not same_test and require_same_test:
        groups: dict[str, list[str]] = {}
        for name, d in digests.items():
            groups.setdefault(d, []).append(name)
        raise DataError(
            "the runs did not evaluate the same test pairs: "
            + "; ".join(", ".join(g) for g in groups.values()),
            hint="compare runs made from the same pairs and split (make_pairs and the irl split "
            "settings); their metrics are not comparable otherwise",
        )
    diff = config_differences({n: flat_config(r) for n, r in zip(names, runs, strict=True)})
    table = {
        key: {
            m: {
                n: {
                    "mean": mx["methods"][m]["mean"].get(key),
                    "std": mx["methods"][m]["std"].get(key),
                    "seeds": mx["methods"][m]["seeds"],
                }
                for n, mx in metrics.items()
                if m in mx["methods"]
            }
            for m in dict.fromkeys(m for mx in metrics.values() for m in mx["methods"])
        }
        for key, _ in METRICS
    }
    result = {
        "runs": dict(zip(names, map(str, runs), strict=True)),
        "test_pairs_sha256": next(iter(digests.values())) if same_test else digests,
        "n_test": metrics[names[0]]["data"]["n_test"],
        "differences": diff,
        "metrics": table,
    }
    with atomic_dir(out) as tmp:
        write_json(tmp / "comparison.json", result)
        (tmp / "report.md").write_text(render(result))
    return out


def check_output(out: Path, runs: list[Path]) -> None:
    """Publishing the report replaces `out` wholesale: refuse a directory that is not an earlier
    comparison (no comparison.json) or that holds, or is, one of the compared runs."""
    out = Path(out)
    hint = "choose an --out directory of its own (new, or an earlier comparison's)"
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ForeignDirectory(f"{out} is not a directory fairl can replace", hint=hint)
    for run in runs:
        r, o = Path(run).resolve(), out.resolve()
        if r == o or o in r.parents:
            raise ForeignDirectory(
                f"--out {out} holds the run {run}: writing it would delete it", hint=hint
            )
    if out.is_dir() and any(out.iterdir()) and not (out / "comparison.json").is_file():
        raise ForeignDirectory(
            f"{out} is not empty and holds no comparison.json: fairl will not replace it", hint=hint
        )


def _cell(c: dict | None) -> str:
    if c is None or c["mean"] is None:
        return "n/a"
    std = f" ± {c['std']:.3f}" if c["std"] is not None else ""
    return f"{c['mean']:.3f}{std}"


def render(result: dict) -> str:
    names = list(result["runs"])
    out = [
        "# fairl comparison",
        "",
        (
            f"{len(names)} runs, the same {result['n_test']} test pairs "
            f"(sha256 {result['test_pairs_sha256'][:12]})."
            if isinstance(result["test_pairs_sha256"], str)
            else f"{len(names)} runs **on different test pairs**: their metrics measure different "
            "things, compare them with care."
        )
        + " Mean ± std over each run's seeds.",
        "",
        "| Run | Directory |",
        "|---|---|",
        *[f"| {n} | `{p}` |" for n, p in result["runs"].items()],
        "",
        "## What differs",
        "",
    ]
    if result["differences"]:
        out += [
            "| Setting | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            *[
                f"| `{key}` | " + " | ".join(f"`{json.dumps(v[n])}`" for n in names) + " |"
                for key, v in result["differences"].items()
            ],
            "",
        ]
    else:
        out += ["Nothing in the stage configs: the runs differ only in what was not recorded.", ""]
    for key, label in METRICS:
        out += [
            f"## {label[0].upper()}{label[1:]}",
            "",
            "| Method | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            *[
                f"| {method_label(m)} | " + " | ".join(_cell(by_run.get(n)) for n in names) + " |"
                for m, by_run in result["metrics"][key].items()
            ],
            "",
        ]
    return "\n".join(out)
