"""Test the paper's claims on fairl's offline experiments and write docs/claims.md.

    python scripts/claims.py              # run every experiment, then the report (~20 min, 2 cores)
    python scripts/claims.py --resume     # keep the finished stages of an interrupted run
    python scripts/claims.py --render-only  # rewrite docs/claims.md from docs/claims.json

Every experiment runs with the project's own commands, at least 5 seeds, into runs/claims/
(emptied first unless --resume; worlds come from $FAIRL_CACHE as usual):

  toy               fairl run configs/toy.yaml  (IRL seeds 0-4, re-RLHF RL seeds 0-4)
  hard              fairl run configs/hard.yaml (the same seeds)
  rtp-challenging   fairl run configs/rtp-challenging.yaml (IRL seeds 0-4; needs
                    ../shared/data/rtp-challenging, reported as not run without it)
  pair-mix-world    fairl sweep configs/experiments/pair-mix-world.yaml
  pair-mix          fairl sweep configs/experiments/pair-mix.yaml (the RTP subset, as above)
  model-size-world  fairl sweep configs/experiments/model-size-world.yaml

Each claim of the paper is then tested in every setting that can test it (none is picked or
left out for its result), with the seeds paired wherever the runs pair them:

  table1       FA-IRL beats Max-Margin / Max-Entropy IRL: higher F1 and AUC, lower STARC
  corollary1   FA-IRL's rewards vary less across seeds
  table2       FA-IRL is alone correct on more outputs than its baseline is
  figure3c     re-RLHF toxicity: ground truth < FA-IRL < IRL
  appendix-d   training STARC falls as T->NT pairs grow, FA-IRL's fastest and lowest at the top
  appendix-e   accuracy and STARC improve up to the third model size, then dip at the largest

A test's verdict: `holds` when the 95% confidence interval of the difference lies entirely on the
claimed side of zero, `does not hold` when it lies entirely on the other side, `inconclusive`
otherwise (or with fewer than two values). A claim's verdict in one setting: `holds` when all its
tests hold, `does not hold` when any contradicts it, `inconclusive` otherwise. No correction for
multiple tests: every test is listed, with its p-value.

docs/claims.json holds every number, the commit, the machine and the sha256 of the sources the
report came from; tests/test_claims.py fails when those sources change (the report is stale).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
RUN_ROOT = ROOT / "runs" / "claims"
CLAIMS_JSON = ROOT / "docs" / "claims.json"
CLAIMS_MD = ROOT / "docs" / "claims.md"
SEEDS = [0, 1, 2, 3, 4]
SOURCES = (
    "pipeline",
    "cli",
    "configs/toy.yaml",
    "configs/hard.yaml",
    "configs/rtp-challenging.yaml",
    "configs/experiments",
    "scripts/claims.py",
    "scripts/readme_results.py",  # its source hashing and provenance helpers
    "constraints.txt",
)
RTP = "rtp-challenging"
# name -> (command, config, extra settings, needs the RTP subset)
EXPERIMENTS = {
    "toy": ("run", "configs/toy.yaml", True, False),
    "hard": ("run", "configs/hard.yaml", True, False),
    RTP: ("run", "configs/rtp-challenging.yaml", False, True),
    "pair-mix-world": ("sweep", "configs/experiments/pair-mix-world.yaml", False, False),
    "pair-mix": ("sweep", "configs/experiments/pair-mix.yaml", False, True),
    "model-size-world": ("sweep", "configs/experiments/model-size-world.yaml", False, False),
}
VERDICTS = ("holds", "does not hold", "inconclusive")
if str(ROOT) not in sys.path:  # this checkout's pipeline, whatever is installed
    sys.path.insert(0, str(ROOT))


def _readme_results():
    """scripts/readme_results.py, for its source hashing and provenance helpers."""
    spec = importlib.util.spec_from_file_location(
        "readme_results", ROOT / "scripts" / "readme_results.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------- statistics
def _finite(values) -> np.ndarray:
    d = np.asarray([v for v in values if v is not None], dtype=float)
    return d[np.isfinite(d)]


def verdict(ci: list[float] | None, sign: int) -> str:
    """`holds` when the interval lies on the claimed side of 0 (sign +1: above), `does not hold`
    when it lies on the other side, `inconclusive` when it straddles 0 or is missing."""
    if ci is None:
        return "inconclusive"
    lo, hi = sign * ci[0], sign * ci[1]
    if min(lo, hi) > 0:
        return "holds"
    if max(lo, hi) < 0:
        return "does not hold"
    return "inconclusive"


def one_sample(diffs, sign: int) -> dict:
    """Paired differences: their mean, 95% CI (Student t), two-sided p-value and verdict."""
    d = _finite(diffs)
    out = {"n": int(len(d)), "mean": float(d.mean()) if len(d) else None, "ci95": None, "p": None}
    if len(d) >= 2:
        tol = 1e-9 * max(1.0, float(np.abs(d).max()))  # below it, rounding, not a difference
        if np.ptp(d) <= tol:  # no spread: the interval is the value itself (3 values or more)
            m = 0.0 if abs(out["mean"]) <= tol else out["mean"]
            out["ci95"] = [m, m] if len(d) >= 3 else None
            out["p"] = (1.0 if m == 0 else 0.0) if len(d) >= 3 else None
        else:
            r = stats.ttest_1samp(d, 0.0)
            ci = r.confidence_interval(0.95)
            out["ci95"] = [float(ci.low), float(ci.high)]
            out["p"] = float(r.pvalue)
    out["verdict"] = verdict(out["ci95"], sign)
    return out


def two_sample(a, b, sign: int) -> dict:
    """Unpaired samples (Welch): mean(a) - mean(b), its 95% CI, p-value and verdict."""
    a, b = _finite(a), _finite(b)
    out = {"n": [int(len(a)), int(len(b))], "mean": None, "ci95": None, "p": None}
    if len(a) and len(b):
        out["mean"] = float(a.mean() - b.mean())
    if len(a) >= 2 and len(b) >= 2:
        tol = 1e-9 * max(1.0, float(np.abs(np.concatenate([a, b])).max()))
        if np.ptp(a) <= tol and np.ptp(b) <= tol:  # no spread in either
            m = 0.0 if abs(out["mean"]) <= tol else out["mean"]
            out["ci95"] = [m, m]
            out["p"] = 1.0 if m == 0 else 0.0
        else:
            r = stats.ttest_ind(a, b, equal_var=False)
            ci = r.confidence_interval(0.95)
            out["ci95"] = [float(ci.low), float(ci.high)]
            out["p"] = float(r.pvalue)
    out["verdict"] = verdict(out["ci95"], sign)
    return out


def pitman_morgan(x, y) -> dict:
    """Are the variances of paired samples x and y equal? Pitman-Morgan: var(x) - var(y) is
    cov(x + y, x - y), so the test is the correlation r of the sums and differences (Student t,
    n - 2 degrees of freedom). Verdict on the claim var(x) < var(y): r < 0 with p < 0.05 holds;
    r > 0 with p < 0.05 does not; anything else (fewer than 3 pairs, no spread) is inconclusive.
    scipy has no paired-variance test; this is the textbook one (Pitman 1939, Morgan 1939)."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    x = np.asarray([p[0] for p in pairs], float)
    y = np.asarray([p[1] for p in pairs], float)
    out = {
        "n": int(len(x)),
        "sd_x": float(np.std(x, ddof=1)) if len(x) > 1 else None,
        "sd_y": float(np.std(y, ddof=1)) if len(y) > 1 else None,
        "r": None,
        "p": None,
        "verdict": "inconclusive",
    }
    u, v = x + y, x - y
    tol = 1e-9 * max(1.0, float(np.abs(u).max(initial=0.0)))
    if len(x) < 3 or np.ptp(u) <= tol or np.ptp(v) <= tol:
        return out
    r = float(np.corrcoef(u, v)[0, 1])
    n = len(x)
    t = r * math.sqrt((n - 2) / max(1e-300, 1 - r * r))
    p = float(2 * stats.t.sf(abs(t), n - 2))
    out.update(r=r, p=p)
    if p < 0.05:
        out["verdict"] = "holds" if r < 0 else "does not hold"
    return out


def slope(xs, ys) -> float | None:
    """Least-squares slope of ys on xs (None values dropped; None below two points)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return None
    return float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])


def claim_verdict(tests: list[dict]) -> str:
    found = [t["verdict"] for t in tests]
    if not found:
        return "not tested"
    if all(v == "holds" for v in found):
        return "holds"
    if "does not hold" in found:
        return "does not hold"
    return "inconclusive"


# --------------------------------------------------------------------------------- claims
def _per_model(metrics: dict) -> dict:
    return metrics["models"]


def _comparisons(metrics: dict) -> list[tuple[str, str, str]]:
    """(FA method, baseline, which) of each paired comparison the evaluate stage made: `plain`
    (the paper's Max-Margin / Max-Entropy) or `matched` (the same model selection as FA-IRL)."""
    out = []
    for key in metrics["paired"]:
        fa, base = key.split(" vs ")
        out.append((fa, base, "matched" if base.endswith("-matched") else "plain"))
    return out


def _seeds(metrics: dict, method: str) -> list[int]:
    return metrics["methods"][method]["seeds"]


def _values(metrics: dict, method: str, key: str, seeds: list[int]) -> list:
    return [metrics["models"][f"{method}/seed-{s}"].get(key) for s in seeds]


def _paired(metrics: dict, fa: str, base: str, key: str) -> tuple[list, list]:
    seeds = [s for s in _seeds(metrics, fa) if s in _seeds(metrics, base)]
    return _values(metrics, fa, key, seeds), _values(metrics, base, key, seeds)


def _diff(a: list, b: list) -> list:
    return [x - y if x is not None and y is not None else None for x, y in zip(a, b, strict=True)]


def table1_keys(metrics: dict) -> list[tuple[str, int]]:
    """(metric, claimed sign) of Table 1 this run has: test F1 / AUC / STARC, and F1 and AUC on
    each held-out set it evaluated (`heldout`, `heldout-<name>`)."""
    have = {k for row in metrics["models"].values() for k, v in row.items() if v is not None}
    sets = sorted({k.split("/")[0] for k in have if k.startswith("heldout")})
    keys = [("test/f1", 1), ("test/auc", 1), ("test/starc", -1)]
    keys += [(f"{h}/{m}", 1) for h in sets for m in ("f1", "auc")]
    return [(k, sign) for k, sign in keys if k in have]


def table1(metrics: dict) -> list[dict]:
    tests = []
    for fa, base, which in _comparisons(metrics):
        for key, sign in table1_keys(metrics):
            a, b = _paired(metrics, fa, base, key)
            tests.append(
                {"claim": "table1", "fa": fa, "base": base, "which": which, "metric": key}
                | {"sign": sign}
                | {"fa_mean": _mean(a), "base_mean": _mean(b)}
                | one_sample(_diff(a, b), sign)
            )
    return tests


def jackknife_dispersion(pairs_a: dict[str, float], pairs_b: dict[str, float]) -> dict:
    """Seed dispersion (mean STARC over pairs of seeds) of A minus B, on the pairs of seeds both
    have, with a leave-one-seed-out jackknife interval: the mean pairwise distance is a
    U-statistic of the seeds, its pairs are not independent, so the seeds are resampled, not
    the pairs. Pseudo-values n x theta - (n - 1) x theta_-i, then a Student t interval over
    them (claimed: < 0). Needs three seeds or more."""
    common = sorted(set(pairs_a) & set(pairs_b))
    seeds = sorted({s for k in common for s in k.split("-")})

    def theta(keep) -> float | None:
        ks = [k for k in common if keep(k)]
        return float(np.mean([pairs_a[k] - pairs_b[k] for k in ks])) if ks else None

    est = theta(lambda k: True)
    out = {"n_seeds": len(seeds), "difference": est}
    if len(seeds) < 3 or est is None:
        return out | {"n": len(seeds), "mean": est, "ci95": None, "p": None,
                      "verdict": "inconclusive"}  # fmt: skip
    n = len(seeds)
    loo = [theta(lambda k, s=s: s not in k.split("-")) for s in seeds]
    pseudo = [n * est - (n - 1) * t for t in loo if t is not None]
    return out | one_sample(pseudo, -1)


def corollary1(metrics: dict) -> list[dict]:
    """Per comparison, two tests: the seed dispersion itself (mean pairwise STARC between the
    seeds' rewards, jackknifed over seeds), and the spread of the seeds' distances to the truth
    (Pitman-Morgan on their variances)."""
    tests = []
    for fa, base, which in _comparisons(metrics):
        da, db = (metrics["methods"][m]["dispersion"] for m in (fa, base))
        head = {"claim": "corollary1", "fa": fa, "base": base, "which": which}
        head |= {"fa_value": da.get("starc"), "base_value": db.get("starc")}
        if "starc_pairs" in da and "starc_pairs" in db:
            tests.append(
                head
                | {"metric": "seed dispersion (STARC between seeds)"}
                | jackknife_dispersion(da["starc_pairs"], db["starc_pairs"])
            )
        a, b = _paired(metrics, fa, base, "test/starc")
        pm = pitman_morgan(a, b)
        tests.append(
            head
            | {"metric": "sd of test STARC over seeds", "fa_value": pm["sd_x"]}
            | {"base_value": pm["sd_y"]}
            | pm
        )
    return tests


def table2(metrics: dict) -> list[dict]:
    if not metrics["disagreement"]:
        return [_not_tested("table2", "the pairs carry no toxicity labels")]
    tests = []
    for key, dg in metrics["disagreement"].items():
        fa, base = key.split(" vs ")
        which = "matched" if base.endswith("-matched") else "plain"
        for split in ("test", "heldout"):
            if split not in dg:
                continue
            rows = dg.get("per_seed", {}).get(split)
            if not rows:
                tests.append(_not_tested("table2", f"{key}, {split}: no per-seed counts"))
                continue
            only_fa = [r["only_fa"] for r in rows]
            only_base = [r["only_base"] for r in rows]
            tests.append(
                {"claim": "table2", "fa": fa, "base": base, "which": which}
                | {"metric": f"{split}: only FA - only base"}
                | {"only_fa": _mean(only_fa), "only_base": _mean(only_base)}
                | one_sample(_diff(only_fa, only_base), 1)
            )
    return tests


def figure3c(summary: dict) -> list[dict]:
    """GT < FA-IRL < IRL final toxicity, paired by RL seed (each reward's run s uses RL seed
    run.seed + s). The re-RLHF rewards are named ground_truth, fa-irl and irl in the configs."""
    missing = {"ground_truth", "fa-irl", "irl"} - set(summary)
    if missing:
        return [_not_tested("figure3c", f"re_rlhf.rewards lacks {sorted(missing)}")]
    tests = []
    for lower, higher in (("fa-irl", "irl"), ("ground_truth", "fa-irl")):
        seeds = [s for s in summary[lower]["seeds"] if s in summary[higher]["seeds"]]
        a = [summary[lower]["final_toxicity_per_seed"].get(str(s)) for s in seeds]
        b = [summary[higher]["final_toxicity_per_seed"].get(str(s)) for s in seeds]
        kl = {n: summary[n].get("final_kl") for n in (lower, higher) if summary[n].get("final_kl")}
        tests.append(
            {"claim": "figure3c", "metric": f"toxicity {lower} - {higher}", "lower": lower}
            | {"higher": higher}
            | {"lower_mean": _mean(a), "higher_mean": _mean(b), "kl": kl}
            | one_sample(_diff(a, b), -1)
        )
    return tests


def _sweep_runs(sweep_dir: Path) -> list[Path]:
    """The points the sweep compared (comparison/comparison.json), not whatever else lies in
    points/ (an earlier grid's points, say)."""
    result = json.loads((sweep_dir / "comparison" / "comparison.json").read_text())
    return [Path(p) for p in result["runs"].values()]


def _point_metrics(sweep_dir: Path) -> list[tuple[float, dict]]:
    """(swept value, evaluate metrics) of each point of a one-key sweep, sorted by value."""
    out = []
    for p in _sweep_runs(sweep_dir):
        value = float(p.name.split("=", 1)[1])
        out.append((value, json.loads((p / "evaluate" / "metrics.json").read_text())))
    return sorted(out, key=lambda t: t[0])


def appendix_d(sweep_dir: Path) -> list[dict]:
    """Per metric (training STARC, the paper's; test STARC too): each method's per-seed slope
    against the T->NT fraction (claimed < 0); FA minus baseline slope, paired by seed (claimed
    < 0: FA improves fastest); FA minus baseline at the largest fraction (claimed < 0)."""
    points = _point_metrics(sweep_dir)
    xs = [v for v, _ in points]
    last = points[-1][1]
    tests = []
    for key in ("train/starc", "test/starc"):
        slopes: dict[str, dict[int, float | None]] = {}  # method -> seed -> slope
        for m in last["methods"]:
            slopes[m] = {
                s: slope(xs, [mx["models"].get(f"{m}/seed-{s}", {}).get(key) for _, mx in points])
                for s in _seeds(last, m)
            }
            tests.append(
                {"claim": "appendix-d", "metric": key, "test": "slope", "fa": m, "base": None}
                | one_sample(list(slopes[m].values()), -1)
            )
        for fa, base, which in _comparisons(last):
            seeds = [s for s in slopes[fa] if s in slopes[base]]
            tests.append(
                {"claim": "appendix-d", "metric": key, "test": "slope FA - base", "fa": fa}
                | {"base": base, "which": which}
                | one_sample(
                    _diff([slopes[fa][s] for s in seeds], [slopes[base][s] for s in seeds]), -1
                )
            )
            a, b = _paired(last, fa, base, key)
            tests.append(
                {"claim": "appendix-d", "metric": key, "test": f"FA - base at {xs[-1]:g}", "fa": fa}
                | {"base": base}
                | {"which": which, "fa_mean": _mean(a), "base_mean": _mean(b)}
                | one_sample(_diff(a, b), -1)
            )
    return tests


def appendix_e(sweep_dir: Path) -> tuple[list[dict], list[dict]]:
    """(the sizes, the tests): per method, accuracy and STARC at the third size minus the
    first (claimed better), and at the largest minus the third (the paper's dip: worse).
    Different sizes are different worlds and pairs, so the samples are unpaired (Welch)."""
    from pipeline.stages.sweep import model_size_points

    points = model_size_points(_sweep_runs(sweep_dir))
    sizes = [{"run": p["run"], "params": p["params"]} for p in points]
    tests = []
    if len(points) < 4:
        return sizes, [_not_tested("appendix-e", f"{len(points)} sizes; the shape needs 4")]
    first, third, last = points[0], points[2], points[-1]
    for m in dict.fromkeys(m for p in points for m in p["methods"]):
        for key, better in (("test/accuracy", 1), ("test/starc", -1)):
            for a, b, what, sign in (
                (third, first, "improves to the 3rd size", better),
                (last, third, "dips at the largest", -better),
            ):
                va = a["methods"].get(m, {}).get(key, [])
                vb = b["methods"].get(m, {}).get(key, [])
                tests.append(
                    {"claim": "appendix-e", "method": m, "metric": key, "test": what}
                    | {"from": b["run"], "to": a["run"], "to_mean": _mean(va)}
                    | {"from_mean": _mean(vb)}
                    | two_sample(va, vb, sign)
                )
    return sizes, tests


def _not_tested(claim: str, why: str) -> dict:
    """A test that could not be made, kept in the report with its reason (never dropped)."""
    return {"claim": claim, "not_tested": why, "verdict": "inconclusive", "metric": "n/a"}


def _mean(values) -> float | None:
    d = _finite(values)
    return float(d.mean()) if len(d) else None


def _run_metrics(run: Path) -> dict:
    return json.loads((run / "evaluate" / "metrics.json").read_text())


def _group(t: dict) -> str:
    """The summary row a test counts in: its baseline kind, and Appendix D's metric and part."""
    which = {"plain": "vs plain IRL", "matched": "vs matched IRL"}.get(t.get("which"), "")
    if t["claim"] == "appendix-e":  # the rise and the dip are two claims of the paper
        return t.get("test", "")
    if t["claim"] == "appendix-d":
        metric = "training STARC" if t["metric"].startswith("train/") else "test STARC"
        return f"{metric}, " + (which or "every method's slope")
    return which


def _group_rank(group: str) -> tuple:
    """Training STARC before test STARC; the slopes, then plain, then matched baselines."""
    part = next((i for i, w in enumerate(("slope", "plain", "matched")) if w in group), 0)
    return (group.startswith("test"), part)


def assess(run_root: Path, ran: dict[str, str | None]) -> dict:
    """Every claim in every setting that ran (`ran`: name -> None, or why it did not run),
    its tests grouped by the baseline compared with (plain or matched IRL)."""
    found: dict[str, dict[str, list[dict]]] = {c: {} for c in CLAIMS}
    for name in ("toy", "hard", RTP):
        if ran.get(name) is not None:
            continue
        mx = _run_metrics(run_root / name)
        found["table1"][name] = table1(mx)
        found["corollary1"][name] = corollary1(mx)
        found["table2"][name] = table2(mx)
        rl = run_root / name / "re_rlhf" / "summary.json"
        if rl.is_file():
            found["figure3c"][name] = figure3c(json.loads(rl.read_text()))
    for name in ("pair-mix-world", "pair-mix"):
        if ran.get(name) is None:
            found["appendix-d"][name] = appendix_d(run_root / name)
    sizes = []
    if ran.get("model-size-world") is None:
        sizes, found["appendix-e"]["model-size-world"] = appendix_e(run_root / "model-size-world")
    claims: dict[str, dict[str, dict]] = {c: {} for c in CLAIMS}
    for c, by_setting in found.items():
        for setting, tests in by_setting.items():
            for g in sorted(dict.fromkeys(_group(t) for t in tests) or [""], key=_group_rank):
                mine = [t for t in tests if _group(t) == g]
                claims[c][f"{setting}, {g}" if g else setting] = {
                    "tests": mine,
                    "verdict": claim_verdict(mine),
                    "counts": {v: sum(t["verdict"] == v for t in mine) for v in VERDICTS},
                    **({"sizes": sizes} if c == "appendix-e" else {}),
                }
    return claims


CLAIMS = {
    "table1": "Table 1: FA-IRL has higher F1 and AUC and lower STARC than Max-Margin and "
    "Max-Entropy IRL (test pairs and held-out set)",
    "corollary1": "Corollary 1: FA-IRL's rewards vary less across seeds",
    "table2": "Table 2: FA-IRL is alone correct on more outputs than its baseline is",
    "figure3c": "Figure 3c: re-RLHF toxicity, ground truth < FA-IRL < IRL",
    "appendix-d": "Appendix D: training STARC falls as T->NT pairs grow; FA-IRL falls fastest "
    "and is lowest once they are common",
    "appendix-e": "Appendix E: accuracy and STARC improve from the smallest to the third model "
    "size, then dip at the largest",
}


# -------------------------------------------------------------------------------- running
def _command(name: str) -> list[str]:
    verb, config, five_rl_seeds, _ = EXPERIMENTS[name]
    cmd = [sys.executable, "-m", "cli.main", verb, config, "-q"]
    sets = [f"run.root={RUN_ROOT}", f"irl.seeds={json.dumps(SEEDS)}"]
    if five_rl_seeds:
        sets.append(f"re_rlhf.seeds={json.dumps(SEEDS)}")
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _missing_data(name: str) -> str | None:
    """Why the experiment cannot run here (the RTP subset absent), or None."""
    if not EXPERIMENTS[name][3]:
        return None
    from pipeline.config import load_config

    cfg = load_config(ROOT / EXPERIMENTS[name][1])
    missing = [f for f in cfg.make_pairs.dataset.files if not (ROOT / f).is_file()]
    return f"not run: {', '.join(map(str, missing))} not found" if missing else None


def run_all(resume: bool) -> tuple[dict[str, str | None], dict[str, float]]:
    if RUN_ROOT.exists() and not resume:
        shutil.rmtree(RUN_ROOT)
    ran, walls = {}, {}
    for name in EXPERIMENTS:
        ran[name] = _missing_data(name)
        if ran[name]:
            print(f"claims: {name}: {ran[name]}", file=sys.stderr, flush=True)
            continue
        cmd = _command(name)
        print(f"claims: {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=_readme_results().offline_env())
        walls[name] = round(time.perf_counter() - t0, 1)
        if r.returncode != 0:
            raise SystemExit(f"claims: {name} failed (exit {r.returncode}); fix it and re-run "
                             "with --resume to keep the finished stages")  # fmt: skip
    return ran, walls


# ------------------------------------------------------------------------------ rendering
def _n(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if isinstance(x, float) else str(x)


def _v(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _ci(t: dict, digits: int = 3) -> str:
    ci = t.get("ci95")
    return "n/a" if ci is None else f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def _p(t: dict) -> str:
    p = t.get("p")
    return "n/a" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(r) + " |" for r in rows],
        "",
    ]


def render(result: dict) -> str:
    p = result["provenance"]
    claims = result["claims"]
    out = [
        "# The paper's claims, tested",
        "",
        "<!-- generated by scripts/claims.py from docs/claims.json: do not edit -->",
        "",
        f"Produced by `{p['command']}` at commit `{(p['commit'] or 'unknown')[:12]}`"
        + (" (with uncommitted changes)" if p.get("uncommitted_changes") else "")
        + f", {p['date']}, on {p['machine']['cpu']} ({p['machine']['cores']} cores). "
        f"{len(SEEDS)} seeds per method (IRL seeds {SEEDS}; re-RLHF RL seeds the same). "
        "`tests/test_claims.py` fails when the sources it came from change.",
        "",
        "Every setting that ran is reported; none is chosen for its result. A test **holds** "
        "when the 95% confidence interval of its difference lies on the claimed side of zero, "
        "**does not hold** when it lies on the other side, and is **inconclusive** otherwise. "
        "A claim holds in a setting when all its tests hold there, does not hold when any "
        "contradicts it, and is inconclusive otherwise (Corollary 1's Pitman-Morgan rows use "
        "their p-value instead of an interval; see there). The tests are not corrected for "
        "their number: read single contradictions among many tests with that in mind.",
        "",
        "## Settings",
        "",
    ]
    out += _table(
        ["Setting", "Command", "Wall time"],
        [
            [
                name,
                f"`fairl {EXPERIMENTS[name][0]} {EXPERIMENTS[name][1]}`",
                result["ran"][name] or f"{result['walls'].get(name, 0) / 60:.1f} min",
            ]
            for name in EXPERIMENTS
        ],
    )
    out += ["## Summary", ""]
    rows = []
    for c, title in CLAIMS.items():
        for setting, r in claims[c].items():
            k = r["counts"]
            rows.append(
                [
                    title.split(":")[0],
                    setting,
                    f"**{r['verdict']}**",
                    f"{k['holds']} / {k['does not hold']} / {k['inconclusive']}",
                ]
            )
        if not claims[c]:
            rows.append([title.split(":")[0], "(no setting ran)", "not tested", "0 / 0 / 0"])
    out += _table(["Claim", "Setting", "Verdict", "Tests: hold / do not / inconclusive"], rows)
    for c, title in CLAIMS.items():
        out += [f"## {title}", "", CLAIM_NOTES[c], ""]
        for setting, r in claims[c].items():
            out += [f"### {setting}: {r['verdict']}", ""]
            tested = [t for t in r["tests"] if "not_tested" not in t]
            if tested:
                out += RENDER[c](r | {"tests": tested})
            out += [f"- Not tested: {t['not_tested']}." for t in r["tests"] if "not_tested" in t]
            out += [""] if len(tested) < len(r["tests"]) else []
    return "\n".join(out).rstrip() + "\n"


def _render_table1(r: dict) -> list[str]:
    return _table(
        ["FA-IRL", "Baseline", "Metric", "FA", "Base", "FA - base", "95% CI", "p", "Verdict"],
        [
            [
                t["fa"],
                t["base"],
                t["metric"],
                _v(t["fa_mean"]),
                _v(t["base_mean"]),
                _n(t["mean"]),
                _ci(t),
                _p(t),
                t["verdict"],
            ]  # fmt: skip
            for t in r["tests"]
        ],
    )


def _render_corollary1(r: dict) -> list[str]:
    return _table(
        [
            "FA-IRL",
            "Baseline",
            "Measure",
            "FA",
            "Base",
            "Test",
            "Statistic",
            "95% CI",
            "p",
            "Verdict",
        ],  # fmt: skip
        [
            [
                t["fa"],
                t["base"],
                t["metric"],
                _v(t["fa_value"]),
                _v(t["base_value"]),
                "Pitman-Morgan" if "r" in t else "jackknife",
                f"r = {_n(t['r'])}" if "r" in t else f"FA - base {_n(t['mean'])}",
                "n/a" if "r" in t else _ci(t),
                _p(t),
                t["verdict"],
            ]
            for t in r["tests"]
        ],
    )


def _render_table2(r: dict) -> list[str]:
    return _table(
        [
            "FA-IRL",
            "Baseline",
            "Split",
            "Only FA",
            "Only base",
            "Difference",
            "95% CI",
            "p",
            "Verdict",
        ],  # fmt: skip
        [
            [
                t["fa"],
                t["base"],
                t["metric"].split(":")[0],
                _v(t["only_fa"], 1),
                _v(t["only_base"], 1),
                _n(t["mean"], 1),
                _ci(t, 1),
                _p(t),
                t["verdict"],
            ]  # fmt: skip
            for t in r["tests"]
        ],
    )


def _render_figure3c(r: dict) -> list[str]:
    return _table(
        ["Comparison", "Lower", "Higher", "Difference", "95% CI", "p", "Verdict", "Final KL"],
        [
            [
                t["metric"],
                _v(t["lower_mean"]),
                _v(t["higher_mean"]),
                _n(t["mean"]),
                _ci(t),
                _p(t),
                t["verdict"],
                ", ".join(f"{k} {v:.2f}" for k, v in t["kl"].items()),
            ]  # fmt: skip
            for t in r["tests"]
        ],
    )


def _render_appendix_d(r: dict) -> list[str]:
    return _table(
        ["Metric", "Test", "Method(s)", "Mean", "95% CI", "p", "Verdict"],
        [
            [
                t["metric"],
                t["test"],
                t["fa"] + (f" vs {t['base']}" if t.get("base") else ""),
                _n(t["mean"]),
                _ci(t),
                _p(t),
                t["verdict"],
            ]  # fmt: skip
            for t in r["tests"]
        ],
    )


def _render_appendix_e(r: dict) -> list[str]:
    sizes = ", ".join(f"{s['run']} ({s['params'] / 1e6:.3f}M parameters)" for s in r["sizes"])
    return [f"Sizes: {sizes}.", ""] + _table(
        ["Method", "Metric", "Test", "From", "To", "Difference", "95% CI", "p", "Verdict"],
        [
            [
                t["method"],
                t["metric"],
                t["test"],
                _v(t["from_mean"]),
                _v(t["to_mean"]),
                _n(t["mean"]),
                _ci(t),
                _p(t),
                t["verdict"],
            ]  # fmt: skip
            for t in r["tests"]
        ],
    )


RENDER = {
    "table1": _render_table1,
    "corollary1": _render_corollary1,
    "table2": _render_table2,
    "figure3c": _render_figure3c,
    "appendix-d": _render_appendix_d,
    "appendix-e": _render_appendix_e,
}
CLAIM_NOTES = {
    "table1": "Per FA-IRL method and baseline (the paper's plain Max-Margin / Max-Entropy, and "
    "the matched baselines with FA-IRL's model selection), the per-seed difference FA - "
    "baseline, paired by seed (methods of one seed share R_D's initialisation and the minibatch "
    "order). Claimed: > 0 for F1 and AUC, < 0 for STARC.",
    "corollary1": "Two measures per comparison. The seed dispersion (evaluate's mean STARC "
    "between the rewards of different seeds, on the test outputs), FA-IRL minus its baseline "
    "with a leave-one-seed-out jackknife interval (claimed < 0). And the spread over seeds of "
    "each reward's distance to the truth (test STARC): the Pitman-Morgan test of equal variances "
    "for paired samples, whose verdict is its p < 0.05 in the direction of r (r < 0: FA-IRL's "
    "spread is smaller); with 5 seeds it has little power. The corollary's other half, a "
    "distance to the truth that cannot grow, is Table 1's STARC rows.",
    "table2": "Outputs only FA-IRL classifies correctly minus outputs only the baseline does, "
    "per seed (each at its own threshold). The paper: 1001 vs 457 on Jigsaw.",
    "figure3c": "Final toxicity of the policy re-RLHF'd with each reward, paired by RL seed "
    "(the paper: 4% ground truth, 6% FA-IRL, 9% IRL). The final KL to the base is listed: a "
    "reward can buy lower toxicity with a larger drift. Every RL seed fine-tunes against the "
    "reward of the first IRL seed (`irl:<method>` in re_rlhf.rewards), so the interval covers "
    "the RL's variation, not that of reward learning.",
    "appendix-d": "Slopes are least squares of each seed's STARC on the T->NT fraction, then "
    "tested over seeds (claimed < 0); FA - base compares them, and the values at the largest "
    "fraction, paired by seed (claimed < 0). Training STARC is the paper's metric; test STARC "
    "is shown too. At each fraction every IRL seed trains on the same drawn pairs (the draw is "
    "seeded by run.seed), so the intervals cover training, not the draw of the pairs.",
    "appendix-e": "Each size is its own world, expert and pairs, so the seeds do not pair: "
    "Welch's t on the seeds at two sizes. Claimed: better at the 3rd size than the smallest "
    "(accuracy up, STARC down), and worse at the largest than the 3rd. One world and one "
    "expert per size: the intervals cover reward learning, not the draw of the world.",
}


# ----------------------------------------------------------------------------------- main
def produce(resume: bool) -> dict:
    rr = _readme_results()
    files = rr.source_files(SOURCES)
    ran, walls = run_all(resume)
    claims = assess(RUN_ROOT, ran)
    dirty = rr._git("status", "--porcelain", "--untracked-files=all", "--", *SOURCES)
    return {
        "provenance": {
            "command": "python scripts/claims.py" + (" --resume" if resume else ""),
            "commit": rr._git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(dirty) if dirty is not None else None,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": rr._machine(),
            "python": sys.version.split()[0],
            "source": {"paths": list(SOURCES), "files": files},
        },
        "seeds": SEEDS,
        "ran": ran,
        "walls": walls,
        "claims": claims,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resume", action="store_true", help="keep finished stages in runs/claims")
    ap.add_argument("--render-only", action="store_true", help="docs/claims.md from the JSON")
    args = ap.parse_args(argv)
    if args.render_only:
        result = json.loads(CLAIMS_JSON.read_text())
    else:
        result = produce(args.resume)
        CLAIMS_JSON.write_text(json.dumps(result, indent=1) + "\n")
    CLAIMS_MD.write_text(render(result))
    print(f"claims: wrote {CLAIMS_MD.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
