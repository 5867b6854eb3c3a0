"""`fairl flywheel CONFIG --cycles N --oracle JUDGE`: audit -> triage -> refine, N times, from
`audit.reward`, with an oracle judge deciding; then one report over the versions.

    runs/<name>/flywheel/
        cycle-<k>/          a run directory per cycle: irl (a link to the run's), audit,
                            triage, refine (its reward/ is version k)
        fresh-<k>/          the audit of version k (0: the parent) on the fresh probe set:
                            the run's test outputs, a seed no cycle uses, the same for every
                            version (what refinement never saw)
        re-rlhf/            with --re-rlhf: re_rlhf of the ground truth, version 0 and the last
                            version, over re_rlhf.seeds
        report/             flywheel.json, report.md, flywheel.png, manifest.json

Per version: the finding rate on the fresh probes (those whose text no cycle trained on), test
AUC and STARC on the irl test outputs (against the ground truth), and AUC on evaluate.heldout
and each evaluate.heldout_sets entry. With `re_rlhf`, also how much of the ground-truth-vs-IRL
toxicity gap after RL the last version closes (`gap_closed`), per RL seed and as a ratio of the
seed means.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline import world
from pipeline.artifacts import require_stage, stage_run, write_json, write_text
from pipeline.audit.common import resolve_audited, sha256_dir
from pipeline.config import STAGES, DynamicScalingSection, ExperimentConfig, plain_name
from pipeline.data.jigsaw import load_heldout
from pipeline.errors import ConfigError
from pipeline.evaluate.distances import DegenerateReward, starc_l1
from pipeline.evaluate.metrics import t_interval
from pipeline.figures import pyplot, save_figure
from pipeline.irl.reward import load_reward
from pipeline.stages import audit, re_rlhf, refine, triage
from pipeline.stages.refine import earlier_findings

log = logging.getLogger("fairl.flywheel")
FRESH_SEED = 10_000  # added to audit.seed: the fresh probe set, never a cycle's


def _cycle_cfg(cfg: ExperimentConfig, out: str, name: str, **audit_updates) -> ExperimentConfig:
    """The config of one cycle's (or fresh audit's) run directory under runs/<name>/<out>/,
    the run's irl linked in."""
    root = cfg.run.root / cfg.run.name / out
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    link = d / "irl"
    if not link.is_symlink():
        link.symlink_to(Path("..") / ".." / "irl", target_is_directory=True)
    c = cfg.model_copy(deep=True)
    c.run.root, c.run.name = root, name
    c.refine.triage = None  # each cycle its own log (runs/.../cycle-<k>/triage/triage.jsonl)
    for k, v in audit_updates.items():
        setattr(c.audit, k, v)
    return c


def run(
    cfg: ExperimentConfig,
    cycles: int,
    oracle: str,
    force: bool = False,
    rl: bool = False,
    out: str = "flywheel",
) -> Path:
    """The cycles, fresh audits, optional re-RLHF and report under runs/<name>/<out>/ (another
    `out`: several flywheels of one run side by side, e.g. other audit or refine seeds)."""
    out = plain_name(out, "the flywheel's directory name")
    if out in (*STAGES, "audit", "triage", "refine", "sweep"):
        raise ConfigError(
            f"the flywheel's directory name {out!r} is a stage's directory",
            hint="pick another name, e.g. flywheel-seed1",
        )
    require_stage(cfg.stage_dir("irl"), "irl", "irl")
    versions = [resolve_audited(cfg.audit.reward, cfg).resolve()]
    for k in range(1, cycles + 1):
        log.info("flywheel: cycle %d of %d, auditing %s", k, cycles, versions[-1])
        ck = _cycle_cfg(cfg, out, f"cycle-{k}", reward=str(versions[-1]), seed=cfg.audit.seed + k)
        audit.run(ck, force)
        triage.oracle(ck, oracle)
        versions.append((refine.run(ck, force) / "reward").resolve())
    # every text a cycle trained on (accepted findings and their neutral sources): a fresh probe
    # that happens to be one of them (the world's grammar repeats sentences) is not fresh
    trained = {
        t
        for df, accepted in earlier_findings(load_reward(versions[-1]).meta.get("lineage", []))
        for col in ("text", "source")
        for t in df.loc[df["finding_id"].isin(accepted), col]
        if t
    }
    rows = []
    for k, v in enumerate(versions):
        fresh = _cycle_cfg(
            cfg, out, f"fresh-{k}", reward=str(v), sources="test", seed=cfg.audit.seed + FRESH_SEED
        )
        probes = pd.read_parquet(audit.run(fresh, force) / "probes.parquet")
        unseen = probes[probes["valid"] & ~probes["text"].isin(trained)]
        rows.append(
            {
                "version": k,
                "reward": str(v),
                "fresh_probes": len(unseen),
                "fresh_finding_rate": float(unseen["finding"].mean()) if len(unseen) else None,
            }
            | version_metrics(cfg, v)
        )
    gap = None
    if rl:
        c = _cycle_cfg(cfg, out, "re-rlhf")
        rewards = {
            "ground_truth": "ground_truth",
            "version-0": str(versions[0]),
            f"version-{cycles}": str(versions[-1]),
        }  # none of them a category reward: the config's dynamic scaling has nothing to scale
        c.re_rlhf = c.re_rlhf.model_copy(
            update={"rewards": rewards, "dynamic_scaling": DynamicScalingSection()}
        )
        summary = json.loads((re_rlhf.run(c, force) / "summary.json").read_text())
        gap = gap_closed(summary, "ground_truth", "version-0", f"version-{cycles}")
    config = {
        "oracle": oracle,
        "cycles": cycles,
        "re_rlhf": rl,
        "versions": [{"path": str(v), "sha256": sha256_dir(v)} for v in versions],
    }
    with stage_run("report", cfg.run.root / cfg.run.name / out, config, {}, cfg.run.seed,
                   force=True, log=log.info) as run_:  # fmt: skip
        write_json(
            run_.path("flywheel.json"),
            {"oracle": oracle, "cycles": cycles, "versions": rows, "re_rlhf": gap},
        )
        plot_flywheel(rows, run_.path("flywheel.png"))
        write_text(run_.path("report.md"), render(rows, oracle, gap))
    report = cfg.run.root / cfg.run.name / out / "report"
    log.info("flywheel: report at %s", report / "report.md")
    return report


def version_metrics(cfg: ExperimentConfig, reward_path: Path) -> dict:
    """Test AUC and STARC on the irl test outputs, AUC on each held-out set of evaluate."""
    r = load_reward(reward_path)
    emb = r.embedder()
    pairs = pd.read_parquet(cfg.stage_dir("irl") / "pairs.parquet")
    t = pairs[pairs["split"] == "test"]
    texts = t["chosen"].tolist() + t["rejected"].tolist()
    s = r.score_embeddings(emb.embed(texts)).double().numpy()
    out = {}
    if "chosen_toxic" in t:
        y = np.asarray(t["chosen_toxic"].tolist() + t["rejected_toxic"].tolist(), bool)
        out["test/auc"] = float(roc_auc_score(y, -s)) if 0 < y.sum() < len(y) else None
    if "chosen_score" in t:
        gt = np.asarray(t["chosen_score"].tolist() + t["rejected_score"].tolist(), float)
        try:
            out["test/starc"] = starc_l1(s, gt)
        except DegenerateReward:
            out["test/starc"] = None
    sets = {}
    if cfg.evaluate.heldout is not None:
        sets["heldout"] = cfg.evaluate.heldout
    sets.update(cfg.evaluate.heldout_sets)
    for name, spec in sets.items():
        df = load_heldout(Path(world.resolve(spec, cfg, "heldout")))
        h = r.score_embeddings(emb.embed(df["text"].tolist())).double().numpy()
        y = df["toxic"].to_numpy(bool)
        out[f"{name}/auc"] = float(roc_auc_score(y, -h)) if 0 < y.sum() < len(y) else None
    return out


def gap_closed(summary: dict, truth: str, parent: str, refined: str) -> dict:
    """How much of the toxicity gap after RL between the parent reward and the ground truth the
    refined reward closes. Per RL seed s (the same seeds, prompts and sampling for all three):
    gap_s = T_parent,s - T_truth,s and closed_s = T_parent,s - T_refined,s; `fraction` is
    mean(closed) / mean(gap), reported only when the gap's 95% t-interval over seeds excludes 0
    (otherwise there is no gap to close and the ratio would be noise over noise)."""
    per = {k: summary[k]["final_toxicity_per_seed"] for k in (truth, parent, refined)}
    seeds = sorted(per[truth], key=int)
    gap = [per[parent][s] - per[truth][s] for s in seeds]
    closed = [per[parent][s] - per[refined][s] for s in seeds]
    g, g_ci = t_interval(gap)
    c, c_ci = t_interval(closed)
    measurable = g_ci is not None and (g_ci[0] > 0 or g_ci[1] < 0)
    return {
        "seeds": [int(s) for s in seeds],
        "final_toxicity": {k: summary[k]["final_toxicity"] for k in per},
        "final_toxicity_ci95": {k: summary[k]["final_toxicity_ci95"] for k in per},
        "final_kl": {k: summary[k]["final_kl"] for k in per},
        "gap": g,
        "gap_ci95": g_ci,
        "closed": c,
        "closed_ci95": c_ci,
        "fraction": c / g if measurable else None,
    }


def _ci(mean: float | None, ci: list[float] | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def render(rows: list[dict], oracle: str, gap: dict | None = None) -> str:
    keys = [k for k in rows[0] if k not in ("version", "reward", "fresh_probes")]
    out = [
        "# fairl flywheel",
        "",
        f"Oracle: `{oracle}`. Version 0 is the audited reward; version k has k corrections. "
        "The finding rate is on the fresh probe set (edits of the run's test outputs with a seed "
        "no cycle used, best-of-n and disagreement outputs), less any probe whose text a cycle "
        "trained on (valid fresh probes per version: "
        + ", ".join(str(r["fresh_probes"]) for r in rows)
        + "); AUC and STARC against the ground truth.",
        "",
        "| Version | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for r in rows:
        cells = ["n/a" if r[k] is None else f"{r[k]:.3f}" for k in keys]
        out.append(f"| {r['version']} | " + " | ".join(cells) + " |")
    out += ["", "![flywheel.png](flywheel.png)", ""]
    if gap is not None:
        tox, ci, kl = gap["final_toxicity"], gap["final_toxicity_ci95"], gap["final_kl"]
        out += [
            "## Re-RLHF with the last version",
            "",
            f"Final toxicity after RL (mean and 95% CI over RL seeds {gap['seeds']}) and KL to "
            "the base:",
            "",
            "| Reward | Final toxicity | KL |",
            "|---|---|---|",
            *(f"| {k} | {_ci(tox[k], ci[k])} | {kl[k]:.2f} |" for k in tox),
            "",
            f"Gap (version 0 minus ground truth): {_ci(gap['gap'], gap['gap_ci95'])}; closed "
            f"(version 0 minus the last version): {_ci(gap['closed'], gap['closed_ci95'])}; "
            + (
                f"fraction closed: {gap['fraction']:.2f}."
                if gap["fraction"] is not None
                else "no fraction: the gap's 95% CI includes 0, so there is no measurable gap "
                "to close."
            ),
            "",
        ]
    return "\n".join(out)


def plot_flywheel(rows: list[dict], path: Path) -> Path:
    keys = [k for k in rows[0] if k not in ("version", "reward", "fresh_probes")]
    fig, axes = pyplot().subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    x = [r["version"] for r in rows]
    for ax, k in zip(axes[0], keys, strict=True):
        y = [np.nan if r[k] is None else r[k] for r in rows]
        ax.plot(x, y, marker="o")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("version (refinement cycles)")
        ax.set_xticks(x)
        ax.set_ylim(0, 2.0 if "starc" in k else 1.0)
        ax.grid(alpha=0.3)
    fig.suptitle("Alignment flywheel: each version of the reward (full axes)", fontsize=10)
    return save_figure(fig, path)
