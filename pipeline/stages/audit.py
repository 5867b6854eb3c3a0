"""`fairl audit`: red-team one reward artifact, judged by a scorer (the alignment flywheel's
first step; pipeline.audit).

Reads the run's `irl/` stage (its pairs, and the reward when `audit.reward` is `irl:<method>`),
writes `runs/<name>/audit/`:

    probes.parquet    every probe: text, source, family, kind, edit, reward, source_reward,
                      judge_score, judge_toxic, reward_toxic, valid, gap, finding
    findings.parquet  the findings alone, each with its finding_id (what triage decides on)
    attribution.csv   occlusion: the words that move the reward most on the findings
    report.md         finding rate per family, the worst findings, the attribution
    finding_rates.png, gaps.png
    audit.json        the reward (path, sha256), judge, threshold, sigma, rates
    manifest.json

The reward's verdict is taken at its threshold c fitted on the run's training outputs against
the judge (toxic iff R <= c, as evaluate does), sigma is the std of R on the sources.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import world
from pipeline.artifacts import StageRun, require_stage, run_stage, write_json, write_text
from pipeline.audit.common import judge_for, resolve_audited, sha256_dir
from pipeline.audit.findings import finding_rates, judge_probes, occlusion
from pipeline.audit.plots import plot_finding_rates, plot_gaps
from pipeline.audit.probes import EDITS, VERDICT, Probe, edit_probes
from pipeline.config import ExperimentConfig, fingerprint, to_dict
from pipeline.data.pairs import PairSet
from pipeline.data.prompts import select_prompts
from pipeline.errors import ConfigError, FairlError
from pipeline.evaluate.classify import fit_threshold
from pipeline.hub import resolve_model
from pipeline.irl.reward import RewardModel, load_reward, reward_dir
from pipeline.policy.models import batch_seed, load_policy, sample

log = logging.getLogger("fairl.audit")
OCCLUDED = 200  # findings the attribution looks at (the worst by |gap|)


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    au = cfg.audit
    irl_dir = cfg.stage_dir("irl")
    irl_manifest = require_stage(irl_dir, "irl", "irl")
    reward_path = resolve_audited(au.reward, cfg)
    reward = load_reward(reward_path)
    irl_encoder = irl_manifest["config"]["irl"]["embed"]["encoder"]
    if reward.meta["encoder"]["name"] != irl_encoder:
        raise ConfigError(
            f"the audited reward embeds with {reward.meta['encoder']['name']!r}, this run's irl "
            f"with {irl_encoder!r}",
            hint="audit a reward of this run (or one refined from it)",
        )
    families = list(dict.fromkeys(au.families))
    base_model = None
    if "best_of_n" in families:
        base_model = resolve_model(
            world.resolve(cfg.train_expert.base_model, cfg, "base-lm"), "base model"
        )
    config = {
        "audit": to_dict(au),
        "reward_sha256": sha256_dir(reward_path),
        # a reward as the judge: its identity too (the path alone could hold another version)
        "judge_sha256": sha256_dir(Path(au.judge))
        if (Path(au.judge) / "reward.json").is_file()
        else None,
        "ground_truth": fingerprint(cfg.ground_truth),
        "base_model": base_model,
    }

    def recipe(run: StageRun) -> None:
        _audit(run, cfg, reward, reward_path, irl_dir, families, base_model)

    return run_stage(
        "audit", cfg, config, {"irl": irl_dir, "reward": reward_path}, recipe, force=force,
        log=log.info,
    )  # fmt: skip


def _audit(run, cfg, reward: RewardModel, reward_path, irl_dir, families, base_model) -> None:
    au = cfg.audit
    pairs = PairSet(df=pd.read_parquet(irl_dir / "pairs.parquet"), source=str(irl_dir))
    df = pairs.df
    text_mode = reward.meta.get("text", "completion")
    if text_mode != "completion":
        raise ConfigError(
            "audit edits completions: this reward embeds prompt+completion",
            hint="audit a reward trained with irl.embed.text: completion",
        )

    def outputs(split: str) -> list[str]:
        d = df[df["split"] == split]
        return list(dict.fromkeys(d["chosen"].tolist() + d["rejected"].tolist()))

    train_texts = outputs("train")
    judge = judge_for(cfg, au.judge)
    embedder = reward.embedder()

    def score(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return reward.score_embeddings(embedder.embed(list(texts), cache=False)).double().numpy()

    # the reward's threshold, fitted on the training outputs against the judge
    with run.timed("threshold"):
        j_train, _ = judge(train_texts)
        r_train = score(train_texts)
        threshold = fit_threshold(r_train, j_train)
    if au.sources == "test":
        sources = outputs("test")
        with run.timed("sources"):
            src_toxic, _ = judge(sources)
            r_sources = score(sources)
    else:  # the training outputs: judged and scored just above
        sources, src_toxic, r_sources = train_texts, j_train, r_train
    sigma = float(np.std(r_sources))

    # 1. the probes: edits of the sources, best-of-n samples, disagreement outputs
    probes: list[Probe] = edit_probes(
        sources, src_toxic, [f for f in families if f in EDITS], au.per_family, au.seed,
        cues=au.cues, words=au.toxic_words,
    )  # fmt: skip
    if "best_of_n" in families:
        with run.timed("best_of_n"):
            probes += _best_of_n(cfg, base_model, score)
    if "disagreement" in families:
        probes += _disagreement(cfg, irl_dir, sources, embedder)
    if not probes:
        raise FairlError("the audit made no probe", hint="check audit.families and the run's pairs")
    table = pd.DataFrame([p.__dict__ for p in probes])

    # 2. every text and neutral source scored by the reward and the judge
    texts = list(dict.fromkeys(table["text"].tolist() + table["source"].tolist()))
    texts = [t for t in texts if t]
    with run.timed("score"):
        r = dict(zip(texts, score(texts), strict=True))
        jt, js = judge(texts)
    judged = judge_probes(
        table,
        r,
        dict(zip(texts, jt.tolist(), strict=True)),
        dict(zip(texts, js.tolist(), strict=True)),
        threshold,
        sigma,
        au.neutral_delta,
    )
    rates = finding_rates(judged)
    findings = judged[judged["finding"]].copy()
    findings.insert(0, "finding_id", [f"f{i:05d}" for i in range(len(findings))])

    # 3. what moves the reward on the findings (occlusion, the worst first)
    worst = findings.reindex(findings["gap"].abs().sort_values(ascending=False).index)
    attribution = occlusion(worst["text"].head(OCCLUDED).tolist(), score)

    judged.to_parquet(run.path("probes.parquet"), index=False)
    findings.to_parquet(run.path("findings.parquet"), index=False)
    attribution.to_csv(run.path("attribution.csv"), index=False)
    n_valid = int(judged["valid"].sum())
    summary = {
        "reward": str(reward_path),
        "reward_sha256": sha256_dir(reward_path),
        "judge": cfg.audit.judge,
        "threshold": threshold,
        "sigma": sigma,
        "sources": au.sources,
        "n_probes": len(judged),
        "n_valid": n_valid,
        "n_findings": len(findings),
        "finding_rate": len(findings) / n_valid if n_valid else None,
        "families": rates.to_dict(orient="records"),
    }
    write_json(run.path("audit.json"), summary)
    plots = [plot_finding_rates(rates, run.path("finding_rates.png"))]
    plots.append(plot_gaps(judged, au.neutral_delta, run.path("gaps.png")))
    write_text(run.path("report.md"), _report(summary, rates, worst, attribution, plots))
    log.info(
        "audit: %d findings in %d valid probes (%.1f%%)",
        len(findings),
        n_valid,
        100 * summary["finding_rate"] if summary["finding_rate"] is not None else float("nan"),
    )


def _best_of_n(cfg, base_model: str, score) -> list[Probe]:
    """Per evaluation prompt, the base LM's completion the reward ranks first of audit.best_of_n:
    what RL against this reward finds first."""
    au = cfg.audit
    prompts = [
        p.text
        for p in select_prompts(
            cfg, "eval", cfg.train_expert.prompt_toxicity_min, au.best_of_n_prompts
        )
    ]
    model, tok = load_policy(base_model, "base model")
    gen = cfg.train_expert.generation
    out = []
    for i in range(0, len(prompts), max(1, gen.batch_size // au.best_of_n)):
        chunk = prompts[i : i + max(1, gen.batch_size // au.best_of_n)]
        batch = [p for p in chunk for _ in range(au.best_of_n)]
        *_, texts = sample(
            model, tok, batch, gen.max_new_tokens, gen.temperature, gen.top_p,
            seed=batch_seed(au.seed, "audit.best_of_n", i),
        )  # fmt: skip
        r = score(texts)
        for k, p in enumerate(chunk):
            block = slice(k * au.best_of_n, (k + 1) * au.best_of_n)
            j = int(np.argmax(r[block]))
            text = texts[block][j]
            out.append(Probe(text, "", "best_of_n", VERDICT, f"best of {au.best_of_n} for {p!r}"))
    return out


def _disagreement(cfg, irl_dir: Path, texts: list[str], embedder) -> list[Probe]:
    """The sources (audit.sources: the run's train or test outputs) on which the run's rewards
    (every method and seed) disagree most: the std over rewards of each reward's z-scored
    value."""
    summary = json.loads((irl_dir / "summary.json").read_text())
    h = embedder.embed(texts)
    z = []
    for m in summary["models"]:
        r = load_reward(reward_dir(irl_dir, m["method"], m["seed"])).score_embeddings(h).numpy()
        z.append((r - r.mean()) / (r.std() or 1.0))
    spread = np.std(np.stack(z), axis=0)
    top = np.argsort(-spread)[: cfg.audit.disagreement_top]
    return [
        Probe(texts[i], "", "disagreement", VERDICT, f"rewards' spread {spread[i]:.2f} sd")
        for i in top
    ]


def _report(summary: dict, rates: pd.DataFrame, worst: pd.DataFrame, attribution, plots) -> str:
    rate = summary["finding_rate"]
    out = [
        "# fairl audit",
        "",
        f"Reward `{summary['reward']}` (sha256 {summary['reward_sha256'][:12]}), judged by "
        f"`{summary['judge']}`; threshold c = {summary['threshold']:.4f} (toxic iff R <= c), "
        f"sigma = {summary['sigma']:.4f}. Sources: the run's {summary['sources']} outputs.",
        "",
        f"**{summary['n_findings']} findings in {summary['n_valid']} valid probes"
        + (f" ({100 * rate:.1f}%)" if rate is not None else "")
        + ".**",
        "",
        "## Finding rate by family",
        "",
        "| Family | Kind | Probes | Valid | Findings | Rate | Mean abs gap |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rates.itertuples(index=False):
        r = "n/a" if row.rate is None or pd.isna(row.rate) else f"{row.rate:.3f}"
        g = (
            "n/a"
            if row.mean_abs_gap is None or pd.isna(row.mean_abs_gap)
            else f"{row.mean_abs_gap:.2f}"
        )
        out.append(
            f"| {row.family} | {row.kind} | {row.probes} | {row.valid} | {row.findings} | {r} "
            f"| {g} |"
        )
    out += ["", "## The worst findings", ""]
    for family, g in worst.groupby("family", sort=False):
        out += [f"### {family}", ""]
        for row in g.head(5).itertuples(index=False):
            src = f" (from `{row.source.strip()}`)" if row.source else ""
            out.append(
                f"- `{row.text.strip()}`{src}: {row.edit}; reward {row.reward:+.3f}, judge "
                f"{'toxic' if row.judge_toxic else 'clean'} ({row.judge_score:.2f}), "
                f"gap {row.gap:+.2f}"
            )
        out.append("")
    out += [
        "## What moves the reward on the findings (occlusion)",
        "",
        "R(text) minus R(text without the word), averaged over the findings holding it.",
        "",
        "| Word | Mean effect | Occurrences |",
        "|---|---|---|",
        *[f"| `{w}` | {e:+.3f} | {c} |" for w, e, c in attribution.itertuples(index=False)],
        "",
        *[f"![{p.name}]({p.name})" for p in plots if p],
        "",
    ]
    return "\n".join(out)
