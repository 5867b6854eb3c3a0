"""Regenerate every number, table and figure of the README that comes from a run.

    python scripts/readme_results.py                  # everything, then README.md (~10 min)
    python scripts/readme_results.py --only toy       # one result; the others are kept as they are
    python scripts/readme_results.py --render-only    # rewrite README.md from docs/results/*.json

Each result is produced by the project's own commands, into a run root of its own
(`runs/readme/<name>/`, with an empty `FAIRL_CACHE` under `runs/readme/cache/<name>/`, so its
numbers and times are what a fresh clone gets):

  toy              `fairl run configs/toy.yaml` (the world is built first, timed on its own)
  rtp-challenging  `fairl run configs/rtp-challenging.yaml` (needs ../shared/data/rtp-challenging)
  hard             `fairl run configs/hard.yaml` (timed), then `python scripts/check_world.py
                   configs/hard.yaml` on that run (its world_check line)
  dr-irl           `fairl sweep configs/experiments/dr-irl-world.yaml` (timed)
  bench            `python scripts/bench_irl.py` (the README quotes its full workload)
  theorem1         the measured widths that `tests/test_theorem1.py` prints

and written to `docs/results/<name>.json` (the numbers the README shows, the command, the git
commit, the machine, and the sha256 of every source file the result depends on), with the
figures the README shows copied beside it. The README's generated blocks, between
`<!-- results:NAME -->` and `<!-- /results:NAME -->`, are then rewritten by `render_blocks`.
A result whose JSON was made from the current sources is kept unless `--rerun` is given;
`tests/test_readme_results.py` fails when the README, the JSON files, the figures or the
sources disagree. Times depend on the machine: they are recorded with its CPU model and load.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "results"
RUN_ROOT = ROOT / "runs" / "readme"
README = ROOT / "README.md"
NAMES = ("toy", "rtp-challenging", "hard", "flywheel", "dr-irl", "bench", "theorem1")

# The files each result depends on (directories are walked). A change in any of them makes the
# result stale: the test then fails until the result is regenerated.
SOURCES = {
    "toy": ("pipeline", "cli", "configs/toy.yaml", "constraints.txt"),
    "rtp-challenging": ("pipeline", "cli", "configs/rtp-challenging.yaml", "constraints.txt"),
    "hard": ("pipeline", "cli", "configs/hard.yaml", "scripts/check_world.py", "constraints.txt"),
    "flywheel": ("pipeline", "cli", "configs/hard.yaml", "constraints.txt"),
    "dr-irl": ("pipeline", "cli", "configs/experiments/dr-irl-world.yaml", "constraints.txt"),
    "bench": ("pipeline", "scripts/bench_irl.py", "constraints.txt"),
    "theorem1": ("pipeline", "tests/test_theorem1.py", "constraints.txt"),
}
THEOREM1_TEST = (
    "tests/test_theorem1.py::test_failure_constraints_never_enlarge_the_max_margin_feasible_set"
)
TABLE_KEYS = (
    ("f1", "F1 ↑"),
    ("auc", "AUC ↑"),
    ("starc", "STARC (Eq. 4) ↓"),
    ("accuracy", "Accuracy ↑"),
    ("pairwise_accuracy", "Pairwise acc ↑"),
)
_BLOCK = re.compile(r"<!-- results:([\w.-]+) -->(.*?)<!-- /results:\1 -->", re.S)
_MARKER = re.compile(r"<!-- (/?)results:([\w.-]+) -->")
if str(ROOT) not in sys.path:  # this checkout's pipeline, whatever is installed
    sys.path.insert(0, str(ROOT))


def _errors():
    from pipeline import errors

    return errors


# ------------------------------------------------------------------------------ sources
def source_files(paths, root: Path = ROOT) -> dict[str, str]:
    """sha256 of every file under `paths`, by path relative to `root`. Content, not a commit id:
    the results regenerated before a commit match the sources of that commit. Caches and
    hidden files (`__pycache__`, `*.pyc`, editor swap files) are left out."""
    out = {}
    for p in paths:
        top = root / p
        files = [top] if top.is_file() else sorted(f for f in top.rglob("*") if f.is_file())
        for f in files:
            rel = f.relative_to(root)
            if (
                any(part == "__pycache__" or part.startswith(".") for part in rel.parts)
                or f.suffix == ".pyc"
            ):
                continue
            out[rel.as_posix()] = hashlib.sha256(f.read_bytes()).hexdigest()
    return dict(sorted(out.items()))


def stale_files(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """Files added, removed or changed since `recorded`, each with what happened."""
    return (
        [f"{f} (changed)" for f in current if f in recorded and recorded[f] != current[f]]
        + [f"{f} (new)" for f in current if f not in recorded]
        + [f"{f} (removed)" for f in recorded if f not in current]
    )


def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def _provenance(name: str, command: str, files: dict[str, str]) -> dict:
    paths = list(SOURCES[name])
    dirty = _git("status", "--porcelain", "--untracked-files=all", "--", *paths)
    return {
        "command": command,
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": bool(dirty) if dirty is not None else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "python": platform.python_version(),
        "source": {"paths": paths, "files": files},
    }


# ------------------------------------------------------------------------------ running
def offline_env(cache: Path | None = None) -> dict:
    """The environment of a child fairl process: offline, this checkout's pipeline, and, given
    `cache`, its own FAIRL_CACHE (scripts/claims.py uses it without one)."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MPLBACKEND": "Agg",
        "PYTHONPATH": str(ROOT),
    }
    if cache is not None:
        env.update({"FAIRL_CACHE": str(cache), "HF_DATASETS_CACHE": str(cache / "hf-datasets")})
    return env


def _env(name: str) -> dict:
    return offline_env(RUN_ROOT / "cache" / name)


def _call(cmd: list[str], env: dict, what: str) -> tuple[str, float]:
    """Run one command in the repository root; its stderr streams through (progress)."""
    print(f"readme_results: {what}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise _errors().FairlError(
            f"{what} failed (exit {r.returncode}): {' '.join(cmd)}",
            hint="fix the error above, then run scripts/readme_results.py "
            "again; the other results are kept",
        )
    return r.stdout, wall


def _fresh(name: str) -> None:
    """Remove this script's own run directory and cache of `name` (both under runs/readme/)."""
    for d in (RUN_ROOT / name, RUN_ROOT / "cache" / name):
        if d.is_symlink() or (d.exists() and RUN_ROOT.resolve() not in d.resolve().parents):
            raise _errors().FairlError(
                f"{d} is not a directory of scripts/readme_results.py",
                hint=f"move it; {RUN_ROOT} holds this script's runs only",
            )
        if d.exists():
            shutil.rmtree(d)


def require_dataset_files(config: Path) -> None:
    """A dataset config's files must exist before anything runs (rtp-challenging: ../shared)."""
    errors = _errors()
    from pipeline.config import load_config

    cfg = load_config(config)
    missing = (
        [str(f) for f in cfg.make_pairs.dataset.files if not (ROOT / f).is_file()]
        if cfg.make_pairs.source == "dataset"
        else []
    )
    if missing:
        raise errors.DataError(
            f"{config.name} reads {', '.join(missing)}, which does not exist",
            hint="the RealToxicityPrompts subset lives beside the project in ../shared/data (see "
            "../shared/data/README.md); without it, regenerate the other results with "
            "--only toy bench theorem1",
        )


def _copy_figure(src: Path, dest_name: str) -> dict:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    dest = RESULTS_DIR / dest_name
    shutil.copyfile(src, dest)
    return {
        "path": dest.relative_to(ROOT).as_posix(),
        "sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
    }


def _methods_table(metrics: dict) -> dict:
    from pipeline.config import method_label

    return {
        m: {
            "label": method_label(m),
            "seeds": a["seeds"],
            "mean": {k: a["mean"].get(f"test/{k}") for k, _ in TABLE_KEYS},
            "std": {k: a["std"].get(f"test/{k}") for k, _ in TABLE_KEYS},
        }
        for m, a in metrics["methods"].items()
    }


def _fairl_run(name: str, config: str) -> tuple[Path, dict, dict]:
    """`fairl run <config>` from an empty cache, in runs/readme/. Returns the run directory,
    the timings and the resolved config."""
    from pipeline.config import load_config

    cfg = load_config(ROOT / config)
    _fresh(name)
    env = _env(name)
    timing = {}
    if cfg.world is not None:  # the world's build, timed on its own (imports included)
        _, timing["world_build_s"] = _call(
            [
                sys.executable,
                "-c",
                "from pathlib import Path; from pipeline.config import "
                f"load_config; from pipeline.world.build import get_world; "
                f"get_world(load_config(Path({config!r})).world)",
            ],
            env,
            f"{name}: world",
        )
    _, timing["run_s"] = _call(
        [
            sys.executable,
            "-m",
            "cli.main",
            "run",
            config,
            "--set",
            f"run.root={RUN_ROOT.relative_to(ROOT)}",
        ],
        env,
        name,
    )
    return RUN_ROOT / cfg.run.name, timing, cfg


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _steps(section) -> int:
    return section.ppo.steps if section.algorithm == "ppo" else section.trl.steps


def produce_toy() -> dict:
    # this process reads the world below: the same cache, offline, as the run
    os.environ.update({k: v for k, v in _env("toy").items() if k != "PYTHONPATH"})
    run_dir, timing, cfg = _fairl_run("toy", "configs/toy.yaml")
    from pipeline.data.prompts import select_prompts

    te, mp = cfg.train_expert, cfg.make_pairs
    ev = _load(run_dir / "train_expert" / "eval.json")
    pairs = _load(run_dir / "make_pairs" / "summary.json")
    metrics = _load(run_dir / "evaluate" / "metrics.json")
    rr = _load(run_dir / "re_rlhf" / "summary.json")
    return {
        "timing": timing,
        "config": {
            "ground_truth": cfg.ground_truth.kind,
            "algorithm": te.algorithm,
            "prompt_toxicity_min": te.prompt_toxicity_min,
            "steps": _steps(te),
            "pairs_toxicity_min": mp.prompt_toxicity_min,
            "methods": list(cfg.irl.methods),
            "seeds": list(cfg.irl.seeds),
            "re_rlhf_rewards": dict(cfg.re_rlhf.rewards),
            "re_rlhf_algorithm": cfg.re_rlhf.algorithm,
            "re_rlhf_steps": _steps(cfg.re_rlhf),
        },
        "train_expert": {
            "n_train_prompts": len(select_prompts(cfg, "train", te.prompt_toxicity_min)),
            "n_eval_prompts": ev["n_eval_prompts"],
            "base_toxicity_rate": ev["base"]["toxicity_rate"],
            "expert_toxicity_rate": ev["expert"]["toxicity_rate"],
            "expert_kl_to_base": ev["expert"].get("kl_to_base"),
        },
        "make_pairs": {k: pairs[k] for k in ("pairs", "toxic_rate_chosen", "toxic_rate_rejected")},
        "evaluate": _methods_table(metrics),
        "paired": metrics["paired"],
        "re_rlhf": rr,
        "figures": {
            "re_rlhf_curves": _copy_figure(
                run_dir / "re_rlhf" / "curves.png", "toy-re-rlhf-curves.png"
            )
        },
    }


def produce_rtp() -> dict:
    require_dataset_files(ROOT / "configs/rtp-challenging.yaml")
    run_dir, timing, cfg = _fairl_run("rtp-challenging", "configs/rtp-challenging.yaml")
    pairs = _load(run_dir / "make_pairs" / "summary.json")
    metrics = _load(run_dir / "evaluate" / "metrics.json")
    return {
        "timing": timing,
        "config": {
            "methods": list(cfg.irl.methods),
            "seeds": list(cfg.irl.seeds),
            "head": cfg.irl.head,
            "encoder": cfg.irl.embed.encoder,
        },
        "make_pairs": {k: pairs[k] for k in ("pairs", "n_train", "n_test")},
        "evaluate": _methods_table(metrics),
        "paired": metrics["paired"],
        "figures": {
            "metric_bars": _copy_figure(
                run_dir / "evaluate" / "metric_bars.png", "rtp-challenging-metric_bars.png"
            )
        },
    }


def produce_hard() -> dict:
    """`fairl run configs/hard.yaml` from an empty cache (timed: issue 9 asks for at most 10
    minutes on 2 cores), then check_world.py on the same run root, which reuses every stage."""
    os.environ.update({k: v for k, v in _env("hard").items() if k != "PYTHONPATH"})
    run_dir, timing, cfg = _fairl_run("hard", "configs/hard.yaml")
    out, _ = _call(  # its stdout: what it measured (the pipeline's own output goes to stderr)
        [
            sys.executable,
            "scripts/check_world.py",
            "configs/hard.yaml",
            "--set",
            f"run.root={RUN_ROOT.relative_to(ROOT)}",
        ],
        _env("hard"),
        "hard: check_world",
    )
    last = [line for line in out.splitlines() if line.startswith("world_check ")]
    if not last:
        raise _errors().FairlError(
            "scripts/check_world.py printed no `world_check` line",
            hint="its last line is the machine-readable summary",
        )
    metrics = _load(run_dir / "evaluate" / "metrics.json")
    sets = ["heldout"] + [f"heldout-{n}" for n in cfg.evaluate.heldout_sets]
    return {
        "timing": timing,
        "config": {
            "methods": list(cfg.irl.methods),
            "seeds": list(cfg.irl.seeds),
            "re_rlhf_seeds": list(cfg.re_rlhf.seeds),
            "re_rlhf_rewards": dict(cfg.re_rlhf.rewards),
        },
        "check_world": out.rstrip("\n").splitlines(),
        "world_check": {k: float(v) for k, v in re.findall(r"(\w+)=(\S+)", last[-1])},
        "heldout_auc": {
            m: {k: a["mean"].get(f"{k}/auc") for k in sets} for m, a in metrics["methods"].items()
        },
        "evaluate": _methods_table(metrics),
        "paired": metrics["paired"],
        "re_rlhf": _load(run_dir / "re_rlhf" / "summary.json"),
        "figures": {
            "re_rlhf_curves": _copy_figure(
                run_dir / "re_rlhf" / "curves.png", "hard-re-rlhf-curves.png"
            )
        },
    }


FLYWHEEL_CYCLES = 3
FLYWHEEL_SEEDS = (0, 1, 2)  # seed k: audit.seed 100k, refine.seed k, in flywheel[-seed<k>]/


def _flywheel_args(k: int) -> list[str]:
    if k == 0:
        return ["--re-rlhf"]  # re-RLHF with the first seed's last version
    return ["--out", f"flywheel-seed{k}", "--set", f"audit.seed={100 * k}",
            "--set", f"refine.seed={k}"]  # fmt: skip


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("reward", "fresh_probes")}


def produce_flywheel() -> dict:
    """`fairl flywheel` on the hard result's run (its irl stage; run `--only hard` first if it
    is missing), timed: audit -> oracle triage -> refine, three times, then the per-version
    report; once per flywheel seed (other probes, another correction init), the first with
    --re-rlhf."""
    run_dir = RUN_ROOT / "hard"
    if not (run_dir / "irl" / "manifest.json").is_file():
        raise _errors().FairlError(
            f"{run_dir} has no irl stage", hint="produce the hard result first (--only hard)"
        )
    seeds, walls = {}, {}
    for k in FLYWHEEL_SEEDS:
        fw = run_dir / ("flywheel" if k == 0 else f"flywheel-seed{k}")
        if fw.exists():
            shutil.rmtree(fw)
        cmd = [sys.executable, "-m", "cli.main", "flywheel", "configs/hard.yaml", "--cycles",
               str(FLYWHEEL_CYCLES), "--oracle", "ground_truth", "--set",
               f"run.root={RUN_ROOT.relative_to(ROOT)}", *_flywheel_args(k)]  # fmt: skip
        _, walls[k] = _call(cmd, _env("hard"), f"flywheel seed {k}")
        report = _load(fw / "report" / "flywheel.json")
        seeds[k] = report
    first, fw0 = seeds[FLYWHEEL_SEEDS[0]], run_dir / "flywheel"
    return {
        "timing": {"run_s": walls[0], "seed_run_s": {str(k): w for k, w in walls.items()}},
        "versions": [_metrics(r) for r in first["versions"]],
        "fresh_probes": {
            str(k): [r["fresh_probes"] for r in rep["versions"]] for k, rep in seeds.items()
        },
        "seeds": {
            str(k): {
                "first": _metrics(r["versions"][0]),
                "last": _metrics(r["versions"][-1]),
            }
            for k, r in seeds.items()
        },
        "re_rlhf": first["re_rlhf"],
        "figures": {"flywheel": _copy_figure(fw0 / "report" / "flywheel.png", "flywheel.png")},
    }


DR_IRL_CONFIG = "configs/experiments/dr-irl-world.yaml"


def produce_dr_irl() -> dict:
    """`fairl sweep` of the DR-IRL comparison from an empty cache, timed: each point's re-rlhf
    summaries, the category counts of the irl pairs, and the toxicity-against-KL figure."""
    _fresh("dr-irl")
    root = RUN_ROOT / "dr-irl"
    cmd = [sys.executable, "-m", "cli.main", "sweep", DR_IRL_CONFIG, "-q", "--set",
           f"run.root={root.relative_to(ROOT)}"]  # fmt: skip
    _, wall = _call(cmd, _env("dr-irl"), "dr-irl")
    run_dir = root / "dr-irl-world"
    comparison = _load(run_dir / "comparison-re_rlhf" / "re_rlhf.json")
    cats = _load(run_dir / "shared" / "irl" / "categories" / "categories.json")
    return {
        "timing": {"run_s": wall},
        "rare": comparison["rare"],
        "points": comparison["points"],
        "eval_completions": _n_completions(run_dir),
        "categories": {
            c: {k: v[k] for k in ("carrying", "resampled", "total", "routing_accuracy")}
            for c, v in cats["categories"].items()
        },
        "figures": {
            "re_rlhf": _copy_figure(run_dir / "comparison-re_rlhf" / "re_rlhf.png", "dr-irl.png")
        },
    }


def _n_completions(run_dir: Path) -> int:
    """The held-out completions of one measurement (prompts x re_rlhf.eval_samples)."""
    points = sorted((run_dir / "points").iterdir())
    curves = _load(next(p for p in points if p.is_dir()) / "re_rlhf" / "curves.json")
    run = next(iter(next(iter(curves.values()))["seeds"].values()))
    return int(run["points"][0]["n"])


def produce_bench(quick: bool = False) -> dict:
    cmd = [sys.executable, "scripts/bench_irl.py"] + (["--quick"] if quick else [])
    out, wall = _call(cmd, _env("bench"), "bench")
    last = [line for line in out.splitlines() if line.startswith("bench_irl linear_speedup=")]
    if not last:
        raise _errors().FairlError(
            "scripts/bench_irl.py printed no `bench_irl linear_speedup=` line",
            hint="its last line is the machine-readable summary",
        )
    return {
        "quick": quick,
        "wall_s": wall,
        "output": out.rstrip("\n").splitlines(),
        "summary": {k: float(v) for k, v in re.findall(r"(\w+)=(\S+)", last[-1])},
    }


def produce_theorem1() -> dict:
    out, _ = _call(
        [sys.executable, "-m", "pytest", THEOREM1_TEST, "-s", "-q", "-p", "no:cacheprovider"],
        _env("theorem1"),
        "theorem1",
    )
    w = re.search(r"mean directional width: IRL ([\d.]+), FA-IRL ([\d.]+)", out)
    n = re.search(r"sampled feasible parameters: IRL (\d+), FA-IRL (\d+)", out)
    if not (w and n):
        raise _errors().FairlError(
            f"{THEOREM1_TEST} did not print the widths and counts",
            hint="it prints 'mean directional width: IRL a, FA-IRL b' and "
            "'sampled feasible parameters: IRL n, FA-IRL m'",
        )
    return {
        "width_irl": float(w[1]),
        "width_fa": float(w[2]),
        "feasible_irl": int(n[1]),
        "feasible_fa": int(n[2]),
    }


COMMANDS = {
    "toy": "fairl run configs/toy.yaml --set run.root=runs/readme",
    "rtp-challenging": "fairl run configs/rtp-challenging.yaml --set run.root=runs/readme",
    "hard": "fairl run configs/hard.yaml --set run.root=runs/readme; "
    "python scripts/check_world.py configs/hard.yaml --set run.root=runs/readme",
    "flywheel": f"fairl flywheel configs/hard.yaml --cycles {FLYWHEEL_CYCLES} --oracle "
    "ground_truth --set run.root=runs/readme --re-rlhf",
    "dr-irl": f"fairl sweep {DR_IRL_CONFIG} --set run.root=runs/readme/dr-irl",
    "bench": "python scripts/bench_irl.py",
    "theorem1": f"python -m pytest {THEOREM1_TEST} -s",
}


def produce(name: str, quick_bench: bool = False) -> dict:
    """Run `name` and return its result; refuses it if a source changed while it ran."""
    before = source_files(SOURCES[name])
    result = {
        "toy": produce_toy,
        "rtp-challenging": produce_rtp,
        "hard": produce_hard,
        "flywheel": produce_flywheel,
        "dr-irl": produce_dr_irl,
        "theorem1": produce_theorem1,
        "bench": lambda: produce_bench(quick_bench),
    }[name]()
    changed = stale_files(before, source_files(SOURCES[name]))
    if changed:
        raise _errors().FairlError(
            f"{name}: sources changed while it ran: {', '.join(changed)}",
            hint="run scripts/readme_results.py again on a quiet tree",
        )
    command = COMMANDS[name] + (" --quick" if name == "bench" and quick_bench else "")
    return {"name": name, "generated": _provenance(name, command, before), **result}


def load_results(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    return {p.stem: _load(p) for p in sorted(results_dir.glob("*.json"))}


def is_current(result: dict, root: Path = ROOT) -> bool:
    return not stale_files(
        result["generated"]["source"]["files"], source_files(SOURCES[result["name"]], root)
    )


# ------------------------------------------------------------------------------ rendering
_WORDS = dict(enumerate("zero one two three four five six seven eight nine ten".split()))


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}"


def _duration(s: float) -> str:
    s = round(s)
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def _measured_on(g: dict) -> str:
    m = g["machine"]
    threads = f", OMP_NUM_THREADS={m['omp_num_threads']}" if m.get("omp_num_threads") else ""
    return (
        f"on {m['cores']} cores ({m['cpu']}{threads}; load average "
        f"{m['load_average_1min']} at the start)"
    )


def _best(methods: dict, key: str, lower: bool, which=lambda m: True) -> dict:
    cands = [a for m, a in methods.items() if which(m) and a["mean"][key] is not None]
    return min(cands, key=lambda a: a["mean"][key] * (1 if lower else -1))


def _fill(text: str, bullet: bool = False) -> str:
    """One paragraph or list item, wrapped at the README's 100 columns."""
    return textwrap.fill(
        text,
        100,
        initial_indent="- " if bullet else "",
        subsequent_indent="  " if bullet else "",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _n(items) -> str:
    return _WORDS.get(len(items), str(len(items)))


PAIRED = (("test/f1", "F1", 1), ("test/auc", "AUC", 1), ("test/starc", "STARC", -1))


def _diff(d: dict) -> str:
    if d["mean"] is None:
        return "n/a"
    ci = f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else ""
    return f"{d['mean']:+.3f}{ci}, {d['wins']}/{d['n']}"


def _verdict(d: dict, sign: int) -> str:
    """better / worse when the 95% CI of FA - baseline excludes zero, else "no difference"."""
    if d["ci95"] is None:
        return "untested"
    lo, hi = (sign * x for x in d["ci95"])
    return "better" if min(lo, hi) > 0 else "worse" if max(lo, hi) < 0 else "no difference"


def _render_paired(paired: dict | None) -> str:
    """FA-IRL against its baselines, paired by seed: a table, then where FA-IRL beats its
    matched baseline and where it does not (95% CI of the mean difference clear of zero)."""
    if paired is None:  # a result made before evaluate paired the seeds
        return "(This result predates the paired differences: run scripts/readme_results.py.)"
    rows = [
        "| FA-IRL vs baseline | "
        + " | ".join(f"{n} {'↑' if g > 0 else '↓'}" for _, n, g in PAIRED)
        + " |",
        "|---|---|---|---|",
    ]
    rows += [
        f"| {c} | " + " | ".join(_diff(d[k]) for k, _, _ in PAIRED) + " |"
        for c, d in paired.items()
    ]
    found: dict[str, list[str]] = {"better": [], "worse": [], "no difference": []}
    for c, d in paired.items():
        if "-matched" not in c:
            continue
        for k, n, g in PAIRED:
            v = _verdict(d[k], g)
            if v in found:
                found[v].append(f"{n} ({c.split(' vs ')[0]}, {d[k]['mean']:+.3f})")
    parts = [
        f"{label} its matched baseline on {', '.join(found[v])}"
        for v, label in (("better", "FA-IRL beats"), ("worse", "FA-IRL is worse than"))
        if found[v]
    ]
    if found["no difference"]:
        others = " other" if parts else ""
        parts.append(
            f"the 95% CI includes zero for the {len(found['no difference'])}{others} comparisons"
        )
    verdict = "; ".join(parts) if parts else "no matched baseline was trained"
    return (
        "\n".join(rows)
        + "\n\n"
        + _fill(
            "Mean of the per-seed differences FA - baseline [95% CI], and the seeds FA-IRL wins. "
            f"Against the matched baselines (same model selection): {verdict}."
        )
    )


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _final(s: dict) -> str:
    ci = s.get("final_toxicity_ci95")
    return f"{s['final_toxicity']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _render_toy(r: dict) -> dict[str, str]:
    c, te, mp, ev = r["config"], r["train_expert"], r["make_pairs"], r["evaluate"]
    g, t = r["generated"], r["timing"]
    world_s = t.get("world_build_s", 0.0)
    falls = "falls" if te["expert_toxicity_rate"] < te["base_toxicity_rate"] else "goes"
    fa, me = ev.get("fa-me-margin"), ev.get("me")
    f1, st = _best(ev, "f1", lower=False), _best(ev, "starc", lower=True)
    compare = (
        f"FA-IRL (ME, margin failures) reaches STARC "
        f"{_pm(fa['mean']['starc'], fa['std']['starc'])} against "
        f"{_pm(me['mean']['starc'], me['std']['starc'])} for Max-Entropy IRL (lower is "
        "better); "
        if fa and me
        else ""
    )
    f1_s = _pm(f1["mean"]["f1"], f1["std"]["f1"])
    st_s = _pm(st["mean"]["starc"], st["std"]["starc"])
    best = (
        f"the best F1 ({f1_s}) and STARC ({st_s}) are both {f1['label']}'s"
        if f1 is st
        else f"the best F1 is {f1_s} ({f1['label']}) and the best STARC {st_s} ({st['label']})"
    )
    rewards = [
        f"`{n}` (`{c.get('re_rlhf_rewards', {}).get(n, s['reward'])}`) "
        f"{s['initial_toxicity']:.3f} -> {_final(s)}, KL {s['final_kl']:.1f}"
        for n, s in r["re_rlhf"].items()
    ]
    n_rl = len(next(iter(r["re_rlhf"].values())).get("seeds", [0]))
    paragraphs = [
        _fill(
            f"From an empty cache the run took {_duration(world_s + t['run_s'])} "
            f"{_measured_on(g)}: the world build {_duration(world_s)}, `fairl run` "
            f"{_duration(t['run_s'])}. What it does:"
        ),
        "\n".join(
            [
                _fill(
                    f"**train-expert**: {c['algorithm'].upper()} against the "
                    f"{c['ground_truth']} on "
                    f"{te['n_train_prompts']} prompts with toxicity > {c['prompt_toxicity_min']}, "
                    f"{c['steps']} steps. The held-out toxicity rate ({te['n_eval_prompts']} "
                    f"prompts, same sampling for both models) {falls} from "
                    f"**{te['base_toxicity_rate']:.3f}** (base) to "
                    f"**{te['expert_toxicity_rate']:.3f}** (expert), mean KL to the base "
                    f"{te['expert_kl_to_base']:.1f} (`runs/toy/train_expert/eval.json`).",
                    True,
                ),
                _fill(
                    f"**make-pairs**: {mp['pairs']} pairs from held-apart prompts with toxicity > "
                    f"{c['pairs_toxicity_min']} (expert completion preferred; toxic rate "
                    f"{mp['toxic_rate_chosen']:.3f} vs {mp['toxic_rate_rejected']:.3f}).",
                    True,
                ),
                _fill(f"**irl**: {_n(c['methods'])} methods x {_n(c['seeds'])} seeds.", True),
                _fill(f"**evaluate**: the report. Here {compare}{best}.", True),
                _fill(
                    f"**re-rlhf**: re-trains the base LM with each reward of `re_rlhf.rewards` for "
                    f"{c['re_rlhf_steps']} {c['re_rlhf_algorithm'].upper()} steps and "
                    f"{_n(range(n_rl))} RL seeds; held-out toxicity (mean [95% CI] over the "
                    f"seeds) and final KL to the base: {'; '.join(rewards)}.",
                    True,
                ),
            ]
        ),
        f"![re-RLHF curves from the offline run]({r['figures']['re_rlhf_curves']['path']})",
    ]
    return {"toy": "\n\n".join(paragraphs), "toy-paired": _render_paired(r.get("paired"))}


def _render_rtp(r: dict) -> dict[str, str]:
    c, ev, g = r["config"], r["evaluate"], r["generated"]
    head = "two-layer MLP heads" if c["head"] == "mlp" else f"{c['head']} heads"
    rows = [
        "| Method | " + " | ".join(label for _, label in TABLE_KEYS) + " |",
        "|" + "---|" * (len(TABLE_KEYS) + 1),
    ]
    rows += [
        f"| {a['label']} | "
        + " | ".join(_pm(a["mean"][k], a["std"][k]) for k, _ in TABLE_KEYS)
        + " |"
        for a in ev.values()
    ]

    def is_fa(m):
        return m.startswith("fa-")

    def is_base(m):
        return not is_fa(m)

    wins = [
        k
        for k, better in (
            (
                "STARC",
                _best(ev, "starc", True, is_fa)["mean"]["starc"]
                < _best(ev, "starc", True, is_base)["mean"]["starc"],
            ),
            (
                "F1",
                _best(ev, "f1", False, is_fa)["mean"]["f1"]
                > _best(ev, "f1", False, is_base)["mean"]["f1"],
            ),
        )
        if better
    ]
    verdict = (
        "On this small set FA-IRL beats the best baseline on neither STARC nor F1; the "
        "paper's Appendix D reports the same when learnable pairs are scarce."
        if not wins
        else f"FA-IRL beats the best baseline on {' and '.join(wins)}."
    )
    st, f1 = _best(ev, "starc", lower=True), _best(ev, "f1", lower=False)
    intro = (
        f"From that run ({r['make_pairs']['pairs']} pairs, {_n(c['methods'])} methods x "
        f"{_n(c['seeds'])} seeds, {head} on {c['encoder'].split('/')[-1]} embeddings), "
        f"which took {_duration(r['timing']['run_s'])} from an empty cache "
        f"{_measured_on(g)}:"
    )
    return {
        "rtp-challenging": "\n\n".join(
            [
                _fill(intro),
                "\n".join(rows),
                _fill(
                    f"(Best STARC: {st['label']}; best F1: {f1['label']}. {verdict} fairl "
                    "reports what it measures.)"
                ),
            ]
        ),
        "rtp-challenging-figure": f"![metric bars]({r['figures']['metric_bars']['path']})",
        "rtp-challenging-paired": _render_paired(r.get("paired")),
    }


def _world_verdict(w: dict) -> str:
    """Issue 9's criteria on check_world's numbers: which hold and which do not."""
    a, b, c = w["probe_cf_acc"], w["irl_in_auc"], w["irl_cf_auc"]
    d, e, f = w["gt_tox"], w["irl_tox"], w["base_tox"]
    checks = [
        ("the task is learnable (a >= 0.90)", a >= 0.90),
        ("IRL fits in distribution (b >= 0.95)", b >= 0.95),
        ("IRL leans on the cue (c <= b - 0.15)", c <= b - 0.15),
        ("the true reward detoxifies (d <= f - 0.2)", d <= f - 0.2),
        ("re-RLHF separates the rewards (e >= d + 0.10)", e >= d + 0.10),
    ]
    held = [what for what, ok in checks if ok]
    not_held = [what for what, ok in checks if not ok]
    return f"Of the world's criteria, these hold: {'; '.join(held) or 'none'}. " + (
        f"These do not: {'; '.join(not_held)}. docs/hard-world.md says what was tried and "
        "what the world would need."
        if not_held
        else "Every criterion holds."
    )


def _render_hard(r: dict) -> dict[str, str]:
    g, t, c = r["generated"], r["timing"], r["config"]
    world_s = t.get("world_build_s", 0.0)
    sets = list(next(iter(r["heldout_auc"].values())))
    names = {k: k.removeprefix("heldout-") for k in sets} | {"heldout": "counterfactual"}
    rows = [
        "| Method | test | " + " | ".join(names[k] for k in sets) + " |",
        "|---|---|" + "---|" * len(sets),
    ]
    rows += [
        f"| {a['label']} | {a['mean']['auc']:.3f} | "
        + " | ".join(_num(r["heldout_auc"][m][k]) for k in sets)
        + " |"
        for m, a in r["evaluate"].items()
    ]
    rewards = "; ".join(
        f"`{n}` {s['initial_toxicity']:.3f} -> {_final(s)}"
        + (f", cue rate {s['final_cue_rate']:.2f}" if s.get("final_cue_rate") is not None else "")
        for n, s in r["re_rlhf"].items()
    )
    return {
        "hard": "\n\n".join(
            [
                _fill(
                    f"From an empty cache the world build took {_duration(world_s)} and `fairl run "
                    f"configs/hard.yaml` {_duration(t['run_s'])} {_measured_on(g)}, for "
                    f"{_n(c['methods'])} methods x {_n(c['seeds'])} seeds and re-RLHF with "
                    f"{_n(c['re_rlhf_seeds'])} RL seeds per reward. AUC of each reward as a "
                    "classifier of single outputs (mean over seeds), in distribution and on the "
                    "world's three evaluation sets, where the cue is independent of toxicity:"
                ),
                "\n".join(rows),
                _fill(
                    f"Re-RLHF, held-out toxicity (mean [95% CI] over RL seeds): {rewards}. "
                    "`python scripts/check_world.py configs/hard.yaml` then printed:"
                ),
                "```\n" + "\n".join(r["check_world"]) + "\n```",
                _fill(_world_verdict(r["world_check"])),
                f"![re-RLHF curves in the hard world]({r['figures']['re_rlhf_curves']['path']})",
            ]
        ),
        "hard-paired": _render_paired(r["paired"]),
    }


def _render_flywheel(r: dict) -> dict[str, str]:
    g, rows = r["generated"], r["versions"]
    keys = [k for k in rows[0] if k != "version"]
    table = "\n".join(
        [
            "| Version | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys),
            *[f"| {v['version']} | " + " | ".join(_num(v[k]) for k in keys) + " |" for v in rows],
        ]
    )
    by_seed = "\n".join(
        [
            "| Flywheel seed | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys),
            *[
                f"| {k} | "
                + " | ".join(f"{_num(s['first'][m])} → {_num(s['last'][m])}" for m in keys)
                + " |"
                for k, s in r["seeds"].items()
            ],
        ]
    )
    gap = r["re_rlhf"]
    tox, ci, kl = gap["final_toxicity"], gap["final_toxicity_ci95"], gap["final_kl"]
    rl = "\n".join(
        [
            "| Reward | Final toxicity (95% CI) | KL to the base |",
            "|---|---|---|",
            *[
                f"| {k} | {_num(tox[k])}"
                + (f" [{_num(ci[k][0])}, {_num(ci[k][1])}]" if ci[k] else "")
                + f" | {kl[k]:.2f} |"
                for k in tox
            ],
        ]
    )
    g_ci = gap["gap_ci95"]
    verdict = (
        f"the last version closes {gap['fraction']:.0%} of it"
        if gap["fraction"] is not None
        else "its 95% CI includes 0, so there is no measurable gap to close"
    )
    seeds_t = ", ".join(_duration(w) for w in r["timing"]["seed_run_s"].values())
    return {
        "flywheel": _fill(
            f"`{g['command']}` took {_duration(r['timing']['run_s'])} {_measured_on(g)}, from "
            "Max-Entropy IRL's first seed of the hard run above. Version 0 is that reward, "
            "version k has k corrections; the finding rate is on the fresh probe set, less any "
            "probe whose text a cycle trained on ("
            + ", ".join(map(str, r["fresh_probes"]["0"]))
            + " valid probes per version), the AUCs and STARC against the ground truth "
            "(heldout: the counterfactual set):"
        )
        + "\n\n"
        + table
        + f"\n\n![flywheel]({r['figures']['flywheel']['path']})\n\n"
        + _fill(
            "The same flywheel with other probe draws and correction inits (`--out "
            "flywheel-seed<k> --set audit.seed=<100k> --set refine.seed=<k>`; "
            f"{seeds_t}), version 0 → version {FLYWHEEL_CYCLES}:"
        )
        + "\n\n"
        + by_seed
        + "\n\n"
        + _fill(
            f"Re-RLHF of the base LM (`--re-rlhf`, RL seeds {gap['seeds']}) with the ground "
            f"truth, version 0 and version {FLYWHEEL_CYCLES}:"
        )
        + "\n\n"
        + rl
        + "\n\n"
        + _fill(
            f"The ground-truth-vs-IRL gap in final toxicity (version 0 minus ground truth, per "
            f"RL seed) is {_num(gap['gap'])}"
            + (f" [{_num(g_ci[0])}, {_num(g_ci[1])}]" if g_ci else "")
            + f": {verdict}."
        ),
    }


def _render_dr_irl(r: dict) -> dict[str, str]:
    from pipeline.policy.report import report  # the table fairl writes in re_rlhf/report.md

    g, rare = r["generated"], r["rare"]
    points = r["points"]
    tables = []
    for name, summary in points.items():
        table = [line for line in report(summary, name, rare).splitlines() if line.startswith("|")]
        tables.append("\n".join([f"{name}:", "", *table]))
    irl = [k for k in next(iter(points.values())) if k != "ground_truth"]

    def spread(p: dict) -> float:  # how far apart the IRL rewards' KLs are at a point
        kls = [p[k]["final_kl"] for k in irl if p.get(k, {}).get("final_kl") is not None]
        return max(kls) - min(kls) if kls else float("inf")

    matched = min(points, key=lambda n: spread(points[n]))
    at = points[matched]
    per_seed = "; ".join(
        f"{k} "
        + ", ".join(
            str(round(v * r["eval_completions"]))
            for v in at[k][f"final_toxicity/{rare}_per_seed"].values()
        )
        + f" (KL {_num(at[k].get('final_kl'))})"
        for k in at
        if f"final_toxicity/{rare}_per_seed" in at[k]
    )
    by_count = sorted(r["categories"].items(), key=lambda x: -x[1]["carrying"])
    counts = ", ".join(f"{c} {v['carrying']}" for c, v in by_count)
    routing = ", ".join(
        f"{c} {_num(v['routing_accuracy'])}"
        for c, v in by_count
        if v["routing_accuracy"] is not None
    )
    return {
        "dr-irl": _fill(
            f"`{g['command']}` took {_duration(r['timing']['run_s'])} {_measured_on(g)}, from an "
            f"empty cache. Toxicity on {r['eval_completions']} held-out completions per "
            "measurement; mean [95% CI] over the RL seeds:"
        )
        + "\n\n"
        + "\n\n".join(tables)
        + f"\n\n![DR-IRL: toxicity against KL]({r['figures']['re_rlhf']['path']})\n\n"
        + _fill(
            f"Demonstrations per category in the irl pairs: {counts} (each balanced to the "
            f"largest count). The IRL rewards' KLs are closest at {matched} "
            f"(a spread of {spread(at):.2f}); there, the completions carrying the rare category "
            f"({rare}) per RL seed, of {r['eval_completions']}: {per_seed}. Routing accuracy "
            "(the share of the validation pairs carrying a category whose prompt routes to it; "
            f"categories without validation pairs left out): {routing}."
        )
    }


def _render_bench(r: dict) -> dict[str, str]:
    g = r["generated"]
    return {
        "bench": _fill(f"`{g['command']}` {_measured_on(g)} printed:")
        + "\n\n```\n"
        + "\n".join(r["output"])
        + "\n```"
    }


def _render_theorem1(r: dict) -> dict[str, str]:
    return {
        "theorem1": f"adding the failure constraints fairl identifies shrank the feasible "
        f"set's mean directional width from {r['width_irl']:.2f} to "
        f"{r['width_fa']:.2f} and the sampled feasible parameters from "
        f"{r['feasible_irl']} to {r['feasible_fa']}"
    }


RENDERERS = {
    "toy": _render_toy,
    "rtp-challenging": _render_rtp,
    "hard": _render_hard,
    "flywheel": _render_flywheel,
    "dr-irl": _render_dr_irl,
    "bench": _render_bench,
    "theorem1": _render_theorem1,
}


def render_blocks(results: dict[str, dict]) -> dict[str, str]:
    """The README's generated blocks, by block name, from the results (docs/results/*.json)."""
    blocks: dict[str, str] = {}
    for name, r in results.items():
        blocks.update(RENDERERS[name](r))
    return blocks


def readme_blocks(text: str) -> dict[str, str]:
    """The blocks of a README, by name; unbalanced, nested or repeated markers are errors."""
    errors = _errors()
    stack: list[str] = []
    seen: set[str] = set()
    for m in _MARKER.finditer(text):
        closing, name = m[1] == "/", m[2]
        if not closing:
            if stack or name in seen:
                raise errors.DataError(
                    f"README block {name!r} is nested or repeated",
                    hint="each <!-- results:NAME --> appears once, not nested",
                )
            stack.append(name)
            seen.add(name)
        elif stack != [name]:
            raise errors.DataError(
                f"README marker <!-- /results:{name} --> closes no open block",
                hint="close each <!-- results:NAME --> with its /results",
            )
        else:
            stack.pop()
    if stack:
        raise errors.DataError(
            f"README block {stack[0]!r} is never closed", hint=f"add <!-- /results:{stack[0]} -->"
        )
    return {m[1]: m[2] for m in _BLOCK.finditer(text)}


def _wrap(content: str) -> str:
    """Inline blocks (one line) sit inside a sentence; others are set off by blank lines."""
    return content if "\n" not in content else f"\n\n{content}\n\n"


def update_readme(text: str, blocks: dict[str, str]) -> str:
    """`text` with every generated block replaced by its rendering. A block without results, or
    results whose block is missing from the README, is an error naming it."""
    errors = _errors()
    present = readme_blocks(text)
    if set(present) - set(blocks):
        missing = sorted(set(present) - set(blocks))
        raise errors.MissingArtifactError(
            f"README blocks {missing} have no results in docs/results/",
            hint="run scripts/readme_results.py (its --only option names the results to make)",
        )
    if set(blocks) - set(present):
        raise errors.DataError(
            f"README.md lacks the blocks {sorted(set(blocks) - set(present))}",
            hint="put <!-- results:NAME --> ... <!-- /results:NAME --> where they belong",
        )
    return _BLOCK.sub(
        lambda m: f"<!-- results:{m[1]} -->{_wrap(blocks[m[1]])}<!-- /results:{m[1]} -->", text
    )


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--only",
        nargs="+",
        choices=NAMES,
        default=list(NAMES),
        help="results to make (default: all)",
    )
    ap.add_argument(
        "--rerun",
        action="store_true",
        help="run the chosen results even if their JSON matches the current sources",
    )
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="run nothing: rewrite README.md from docs/results/*.json",
    )
    ap.add_argument(
        "--bench-quick",
        action="store_true",
        help="bench_irl.py --quick: a smoke run (the README quotes the full one)",
    )
    args = ap.parse_args(argv)
    errors = _errors()
    try:
        if not args.render_only:
            existing = load_results()
            for name in args.only:
                if (
                    not args.rerun
                    and name in existing
                    and is_current(existing[name])
                    and not (name == "bench" and existing[name]["quick"] != args.bench_quick)
                ):
                    print(f"readme_results: {name}: up to date, kept", file=sys.stderr)
                    continue
                result = produce(name, args.bench_quick)
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                (RESULTS_DIR / f"{name}.json").write_text(
                    json.dumps(result, indent=1, ensure_ascii=False) + "\n"
                )
                print(f"readme_results: wrote docs/results/{name}.json", file=sys.stderr)
        README.write_text(update_readme(README.read_text(), render_blocks(load_results())))
        print("readme_results: README.md rewritten from docs/results/", file=sys.stderr)
    except errors.FairlError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
