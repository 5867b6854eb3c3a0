"""`fairl sweep CONFIG`: every combination of the values in `sweep.grid` (and `--grid`), each an
ordinary run, then one comparison report over them.

    <run.root>/<run.name>/
        shared/<stage>/          the stages upstream of every swept key, run once
        points/<point>/<stage>/  each point's own stages (the shared ones linked in)
        comparison-re_rlhf/      when the points run re-rlhf: re_rlhf.md, re_rlhf.json,
                                 re_rlhf.png (toxicity per category against the KL, per reward)
        comparison/              report.md, comparison.json; for one numeric key sweep.png;
                                 for irl.subtype cross_subtype.png; for a model-size key
                                 (train_expert.base_model, world.hidden_size) model_size.png

A point is named after its values (`irl.pair_mix=0.1`, joined by `,` for several keys). A key
changes its own section's stage and every stage after it; the sections every stage reads (run,
world, ground_truth, prompts) change them all. So a sweep over `irl.*` trains the expert and
makes the pairs once. Every stage skips when its published output matches its config, so an
interrupted sweep resumes where it stopped, and finished points are not recomputed. Points run
as `fairl run` processes: in turn, or `sweep.parallel` at once.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.artifacts import atomic_dir
from pipeline.config import STAGES, ExperimentConfig, load_config
from pipeline.errors import ConfigError, FairlError
from pipeline.evaluate.compare import compare_runs
from pipeline.evaluate.metrics import t_interval
from pipeline.figures import DPI, pyplot, save_figure
from pipeline.policy.models import parameter_count
from pipeline.policy.report import rare_category, report

log = logging.getLogger("fairl.sweep")
GLOBAL_SECTIONS = ("run", "world", "ground_truth", "prompts")  # read by every stage
PLOTTED = (
    ("test/starc", "test STARC (Eq. 4) ↓"),
    ("train/starc", "training STARC (Eq. 4) ↓"),
    ("test/f1", "test F1 ↑"),
    ("test/auc", "test AUC ↑"),
)

# A sweep over one of these is a model-size experiment (Appendix E): model_size.png.
MODEL_SIZE_KEYS = ("train_expert.base_model", "world.hidden_size", "world.layers")
SIZE_PLOTTED = (("test/accuracy", "test accuracy ↑"), ("test/starc", "test STARC (Eq. 4) ↓"))


def parse_grid(items: list[str]) -> dict[str, list]:
    """`--grid key=v1,v2,...` (values read as YAML, as for --set) -> {key: [v1, v2, ...]}."""
    import yaml

    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(
                f"--grid {item!r} is not key=v1,v2,...", hint="e.g. --grid irl.lr=1e-3,3e-3"
            )
        try:
            grid[key.strip()] = [_value(yaml.safe_load(v)) for v in values.split(",")]
        except yaml.YAMLError as e:
            raise ConfigError(
                f"--grid {item!r}: a value is not YAML ({str(e).splitlines()[0]})",
                hint="values are split at every comma: sweep lists or mappings in the config's "
                "sweep.grid instead",
            ) from e
    return grid


def _value(v):
    """A number YAML 1.1 reads as text (`1e-3`: no dot) as the number it is."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def point_name(values: dict[str, object]) -> str:
    """The directory name of a point: `key=value` joined by `,` (a `/` in a value becomes `--`)."""
    return ",".join(
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()
    ).replace("/", "--")


def first_affected(keys: list[str]) -> int:
    """The index in STAGES of the first stage a swept key changes."""
    fixed = [
        k for k in keys if k.split(".")[0] == "sweep" or k in ("run.root", "run.name", "run.stages")
    ]
    if fixed:
        raise ConfigError(
            f"cannot sweep {fixed}: the sweep sets them", hint="sweep settings of the stages"
        )
    sections = {k.split(".")[0] for k in keys}
    if sections & set(GLOBAL_SECTIONS):
        return 0
    hits = [STAGES.index(s) for s in sections if s in STAGES]
    if len(hits) < len(sections):
        bad = sorted(sections - set(STAGES) - set(GLOBAL_SECTIONS))
        raise ConfigError(
            f"sweep keys in unknown sections: {bad}", hint="sweep config keys, e.g. irl.lr"
        )
    return min(hits)


def expand(cfg: ExperimentConfig, config: Path, overrides: list[str], grid: dict[str, list]):
    """(name, overrides, config) of every point, each validated before anything runs."""
    if not grid:
        raise ConfigError(
            "nothing to sweep: sweep.grid is empty",
            hint="add sweep.grid to the config or --grid key=v1,v2",
        )
    root = cfg.run.root / cfg.run.name
    points = []
    seen: dict[str, dict] = {}
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo, strict=True))
        name = point_name(values)
        if name in seen:
            raise ConfigError(
                f"two points of the sweep share the directory name {name!r}: {seen[name]} and "
                f"{values}",
                hint="list each value once (1e-3 and 0.001 are one value; a / in a value is "
                "written --)",
            )
        seen[name] = values
        extra = [f"{k}={json.dumps(v)}" for k, v in values.items()]
        extra += [f"run.root={root / 'points'}", f"run.name={name}", "sweep.grid={}"]
        points.append((name, overrides + extra, load_config(config, overrides + extra)))
    return points


def sweep(config: Path, overrides: list[str], grid_items: list[str], force: bool = False) -> Path:
    cfg = load_config(config, overrides)
    grid = {k: [_value(v) for v in vs] for k, vs in cfg.sweep.grid.items()}
    grid.update(parse_grid(grid_items))
    first_affected(list(grid))  # refuse keys that cannot be swept before anything runs
    points = expand(cfg, config, overrides, grid)
    stages = points[0][2].stages_to_run()
    cut = first_affected(list(grid))
    if not any(STAGES.index(s) >= cut for s in stages):
        raise ConfigError(
            f"the swept keys {list(grid)} change only stages the config does not run ({stages})",
            hint="add the swept key's section to the config, or sweep a key of a stage it runs",
        )
    shared = [s for s in stages if STAGES.index(s) < cut]
    own = [s for s in stages if STAGES.index(s) >= cut]
    root = cfg.run.root / cfg.run.name
    log.info(
        "sweep: %d points of %s; shared stages %s, per point %s",
        len(points),
        ", ".join(grid),
        shared or "none",
        own,
    )
    if shared:
        stages_set = "run.stages=" + json.dumps(shared)
        shared_run = [f"run.root={root}", "run.name=shared", stages_set, "sweep.grid={}"]
        _fairl_run(config, [*overrides, *shared_run], force)
    for _, _, point_cfg in points:
        point_dir = point_cfg.run.root / point_cfg.run.name
        point_dir.mkdir(parents=True, exist_ok=True)
        for stage in shared:  # the point reads the shared stage through a link
            link = point_dir / stage
            target = Path("..") / ".." / "shared" / stage
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)

    def run_point(point) -> str:
        name, point_overrides, _ = point
        logfile = root / "points" / f"{name}.log" if cfg.sweep.parallel > 1 else None
        _fairl_run(config, point_overrides + ["run.stages=" + json.dumps(own)], force, logfile)
        return name

    with ThreadPoolExecutor(max_workers=cfg.sweep.parallel) as pool:
        for done in pool.map(run_point, points):
            log.info("sweep: point %s done", done)
    runs = [p.run.root / p.run.name for _, _, p in points]
    if "re_rlhf" in stages and len(runs) > 1:  # the policies of every point side by side
        compare_re_rlhf([n for n, _, _ in points], runs, root / "comparison-re_rlhf")
    if "evaluate" not in stages or len(runs) < 2:
        if len(runs) < 2 or "re_rlhf" not in stages:
            log.info("sweep: no comparison (%s)", "one point" if len(runs) < 2 else "no evaluate")
        else:
            log.info("sweep: re-rlhf comparison in %s", root / "comparison-re_rlhf")
        return root / "points"
    out = root / "comparison"
    compare_runs(runs, out, require_same_test=False)
    if list(grid) == ["irl.subtype"]:
        plot_subtype_heatmap(grid["irl.subtype"], runs, out / "cross_subtype.png")
    elif len(grid) == 1 and next(iter(grid)) in MODEL_SIZE_KEYS:
        plot_model_size(runs, out / "model_size.png")
    elif len(grid) == 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in next(iter(grid.values()))
    ):
        key = next(iter(grid))
        plot_sweep(key, next(iter(grid.values())), runs, out / "sweep.png")
    return out


def _fairl_run(
    config: Path, overrides: list[str], force: bool, logfile: Path | None = None
) -> None:
    """One `fairl run` process (the same interpreter), its output to the terminal or `logfile`."""
    cmd = [sys.executable, "-m", "cli.main", "run", str(config)]
    for o in overrides:
        cmd += ["--set", o]
    if force:
        cmd.append("--force")
    # this checkout's pipeline in the child too, wherever the sweep was started from
    root = str(Path(__file__).resolve().parents[2])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    out = open(logfile, "w") if logfile else None  # noqa: SIM115 (closed below)
    try:
        r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env)
    finally:
        if out:
            out.close()
    if r.returncode != 0:
        raise FairlError(
            f"a sweep run failed (exit {r.returncode}): {' '.join(cmd)}",
            hint=(f"see {logfile}; " if logfile else "")
            + "fix it and run the sweep again: finished points are kept",
        )


def plot_sweep(key: str, values: list, runs: list[Path], path: Path) -> Path:
    """Each plotted metric against the swept value, per method: the mean over seeds with the
    band of their range (the paper's Figure 4 for irl.pair_mix)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    values = [values[i] for i in order]
    metrics = [json.loads((runs[i] / "evaluate" / "metrics.json").read_text()) for i in order]
    methods = list(dict.fromkeys(m for mx in metrics for m in mx["methods"]))
    fig, axes = pyplot().subplots(1, len(PLOTTED), figsize=(4.0 * len(PLOTTED), 3.6))
    n_seeds = max(len(a["seeds"]) for mx in metrics for a in mx["methods"].values())
    for ax, (k, label) in zip(axes, PLOTTED, strict=True):
        for i, m in enumerate(methods):
            xs, mean, lo, hi = [], [], [], []
            for v, mx in zip(values, metrics, strict=True):
                seeds = [r.get(k) for r in mx["models"].values() if r["method"] == m]
                seeds = [s for s in seeds if s is not None]
                if seeds:
                    xs.append(v)
                    mean.append(np.mean(seeds))
                    lo.append(min(seeds))
                    hi.append(max(seeds))
            if xs:
                ax.plot(xs, mean, marker="o", ms=3, color=f"C{i % 10}", label=m)
                ax.fill_between(xs, lo, hi, color=f"C{i % 10}", alpha=0.15, lw=0)
        ax.set_xlabel(key)
        ax.set_ylabel(label)
        ax.set_ylim(0.0, 2.0 if "starc" in k else 1.0)  # the metric's whole range
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"sweep over {key} (mean over {n_seeds} seed(s), band: their range; full axes)",
        fontsize=10,
    )
    return save_figure(fig, path)


def model_size_points(runs: list[Path]) -> list[dict]:
    """Per run, its expert's parameter count and each method's per-seed test accuracy and STARC
    (sorted by size): the data of Appendix E's Figure 5."""
    points = []
    for run in runs:
        mx = json.loads((run / "evaluate" / "metrics.json").read_text())
        per_method: dict[str, dict[str, list[float]]] = {}
        for row in mx["models"].values():
            m = per_method.setdefault(row["method"], {k: [] for k, _ in SIZE_PLOTTED})
            for k, _ in SIZE_PLOTTED:
                if row.get(k) is not None:
                    m[k].append(row[k])
        params = parameter_count(run / "train_expert" / "model")
        points.append({"run": run.name, "params": params, "methods": per_method})
    return sorted(points, key=lambda p: p["params"])


def plot_model_size(runs: list[Path], path: Path) -> Path:
    """Paper Figure 5: test accuracy and STARC against the base model's size, per method the mean
    over seeds with its 95% confidence interval (Student t). Axes span each metric's range."""
    points = model_size_points(runs)
    methods = list(dict.fromkeys(m for p in points for m in p["methods"]))
    fig, axes = pyplot().subplots(1, len(SIZE_PLOTTED), figsize=(4.6 * len(SIZE_PLOTTED), 3.8))
    x = np.arange(len(points))
    n_seeds = 0
    for ax, (k, label), span in zip(axes, SIZE_PLOTTED, ((0.0, 1.0), (0.0, 2.0)), strict=True):
        for i, m in enumerate(methods):
            mean, lo, hi = [], [], []
            for p in points:
                vals = p["methods"].get(m, {}).get(k, [])
                n_seeds = max(n_seeds, len(vals))
                mu, ci = t_interval(vals)
                mean.append(np.nan if mu is None else mu)
                lo.append(np.nan if ci is None else mu - ci[0])
                hi.append(np.nan if ci is None else ci[1] - mu)
            off = (i - (len(methods) - 1) / 2) * 0.06  # side by side, so the bars do not hide
            ax.errorbar(
                x + off, mean, yerr=[lo, hi], marker="o", ms=3, capsize=3, color=f"C{i % 10}",
                label=m,
            )  # fmt: skip
        ax.set_xticks(x, [f"{p['params'] / 1e6:.2f}M" for p in points])
        ax.set_xlabel("base model parameters")
        ax.set_ylabel(label)
        ax.set_ylim(*span)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"Model size (mean over {n_seeds} seeds, bars: 95% CI; axes span the metric's range)",
        fontsize=10,
    )
    return save_figure(fig, path)


def _or_nan(v) -> float:
    return np.nan if v is None else v


def plot_subtype_heatmap(trained: list[str], runs: list[Path], path: Path) -> Path:
    """Paper Figure 3, left: per method, the test AUC (mean over seeds) on each subtype's outputs
    (against the non-toxic ones) of a reward trained on one subtype's pairs (a row each)."""
    metrics = [json.loads((r / "evaluate" / "metrics.json").read_text()) for r in runs]
    methods = list(dict.fromkeys(m for mx in metrics for m in mx["methods"]))
    found = {
        k.removeprefix("test/auc_")
        for mx in metrics
        for a in mx["methods"].values()
        for k in a["mean"]
        if k.startswith("test/auc_")
    }
    # the trained subtypes first, in the rows' order, so the diagonal is in-subtype
    evaluated = [t for t in trained if t in found] + sorted(found - set(trained))
    cols = min(4, len(methods))
    rows = -(-len(methods) // cols)
    fig, axes = pyplot().subplots(
        rows,
        cols,
        figsize=(2.2 + 1.2 * len(evaluated) * cols, 0.9 + 0.8 * len(trained) * rows),
        squeeze=False,
    )
    for ax, m in zip(axes.flat, methods):
        grid = np.array(
            [
                [
                    _or_nan(mx["methods"].get(m, {}).get("mean", {}).get(f"test/auc_{e}"))
                    for e in evaluated
                ]
                for mx in metrics
            ],
            float,
        )
        im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
        for i in range(len(trained)):
            for j in range(len(evaluated)):
                if not np.isnan(grid[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{grid[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if grid[i, j] < 0.6 else "black",
                    )
        ax.set_xticks(range(len(evaluated)), evaluated, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(trained)), trained, fontsize=7)
        ax.set_title(m, fontsize=8)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    fig.subplots_adjust(wspace=0.6)  # room for the next panel's subtype names
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="test AUC")
    n_seeds = max(len(a["seeds"]) for mx in metrics for a in mx["methods"].values())
    fig.suptitle(
        "Cross-subtype generalisation: test AUC of a reward trained on (rows), evaluated on "
        f"(columns); mean over {n_seeds} seed(s)",
        fontsize=10,
    )
    # saved without save_figure's tight_layout, which cannot place a colorbar shared by axes
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    pyplot().close(fig)
    return path


def compare_re_rlhf(names: list[str], runs: list[Path], out: Path) -> Path:
    """re_rlhf.md and .json in `out`, published atomically (replacing an earlier one): each
    point's re-rlhf table (per reward, toxicity overall and per category, KL to the base, mean
    [95% CI] over RL seeds), and re_rlhf.png: toxicity against the KL to the base, per reward
    across the points (a sweep over re_rlhf.trl.beta traces each reward's curve, so rewards are
    compared at matched KL). Returns the .md."""
    with atomic_dir(out) as tmp:
        _compare_re_rlhf(names, runs, tmp)
    return out / "re_rlhf.md"


def _compare_re_rlhf(names: list[str], runs: list[Path], out: Path) -> None:
    summaries = {
        n: json.loads((r / "re_rlhf" / "summary.json").read_text()) for n, r in zip(names, runs)
    }
    rewards = {k: v["reward"] for s in summaries.values() for k, v in s.items()}
    rare = rare_category(rewards)
    parts = ["# re-rlhf across the sweep", ""]
    for n, s in summaries.items():
        parts += [f"## {n}", "", *report(s, n, rare).splitlines()[2:], ""]
    (out / "re_rlhf.md").write_text("\n".join(parts) + "\n")
    (out / "re_rlhf.json").write_text(json.dumps({"rare": rare, "points": summaries}, indent=1))
    first = next(iter(summaries.values()))
    cats = sorted(
        k.removeprefix("initial_toxicity/")
        for k in next(iter(first.values()))
        if k.startswith("initial_toxicity/")
    )
    if rare in cats:
        cats = [rare] + [c for c in cats if c != rare]
    panels = [("toxicity", "toxicity")] + [
        (f"toxicity/{c}", c + (" (rare)" if c == rare else "")) for c in cats
    ]
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for i, name in enumerate(dict.fromkeys(k for s in summaries.values() for k in s)):
            pts = [
                s[name]
                for s in summaries.values()
                if name in s and s[name].get(f"final_{key}") is not None
            ]
            pts.sort(key=lambda p: p.get("final_kl") or 0.0)
            x = [p.get("final_kl") or 0.0 for p in pts]
            y = [p[f"final_{key}"] for p in pts]
            yerr = [
                [
                    p[f"final_{key}"] - (p[f"final_{key}_ci95"] or [p[f"final_{key}"]] * 2)[0]
                    for p in pts
                ],
                [
                    (p[f"final_{key}_ci95"] or [p[f"final_{key}"]] * 2)[1] - p[f"final_{key}"]
                    for p in pts
                ],
            ]
            ax.errorbar(
                x, y, yerr=yerr, marker="o", ms=3, capsize=2, color=f"C{i % 10}", label=name
            )
        ax.set_xlabel("KL to the base LM")
        ax.set_ylabel(f"held-out rate: {label}")
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
        "re-rlhf: toxicity against KL, per reward across the sweep (mean, bars: 95% CI)",
        fontsize=10,
    )
    save_figure(fig, out / "re_rlhf.png")
