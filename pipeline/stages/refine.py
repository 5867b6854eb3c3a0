"""`fairl refine`: a new version of the audited reward from the accepted findings of its
triage, without touching the parent (pipeline.irl.refine for the training).

Reads `runs/<name>/audit/` (its findings and the reward it audited), the triage log and the
run's `irl/` pairs; writes `runs/<name>/refine/`:

    reward/          the new version: the parent's parameters and one more correction head;
                     reward.json's `lineage` lists every refinement (parent sha256, audit and
                     triage files with their sha256, cycle, what was trained); a
                     sentence-transformers export in reward/sentence-transformer/
    refine.json      the training data sizes and the loss log
    manifest.json

What is trained on:
- accepted (or relabelled) verdict findings become failure pairs: a text that should be toxic
  is paired below a clean training output, one that should be clean above a toxic one (the
  reference drawn with refine.seed);
- accepted neutral findings become invariance pairs (the edit and its source should tie);
- the run's original training pairs keep everything in distribution in place.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pandas as pd
import torch

from pipeline.artifacts import StageRun, require_stage, run_stage, write_json
from pipeline.audit.common import judge_for, sha256_dir, triage_path
from pipeline.audit.probes import NEUTRAL
from pipeline.audit.triage import file_sha256, load_findings, read_log
from pipeline.config import ExperimentConfig, to_dict
from pipeline.errors import ConfigError, DataError
from pipeline.irl.heads import make_head
from pipeline.irl.refine import CorrectionData, train_correction
from pipeline.irl.reward import RewardModel, load_reward

log = logging.getLogger("fairl.refine")


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    rf = cfg.refine
    audit_dir = cfg.stage_dir("audit")
    require_stage(audit_dir, "audit", "audit")
    findings, audit_sha = load_findings(audit_dir)
    tpath = triage_path(cfg)
    if not tpath.is_file():
        raise DataError(
            f"no triage log at {tpath}", hint="decide on the findings first: `fairl triage`"
        )
    decided = read_log(tpath, audit_sha)
    accepted = {k: d for k, d in decided.items() if d.decision in ("accept", "relabel")}
    if not accepted:
        raise DataError(
            f"the triage {tpath} accepts no finding ({len(decided)} decided, of {len(findings)})",
            hint="refine needs at least one accepted or relabelled finding",
        )
    summary = json.loads((audit_dir / "audit.json").read_text())
    parent_path = Path(summary["reward"]).resolve()
    own = cfg.stage_dir("refine").resolve()
    if parent_path == own or own in parent_path.parents:
        raise ConfigError(
            f"the audited reward {parent_path} is this run's refine output, which refine would "
            "replace with its own child",
            hint="refine it in another run (--set run.name=...), or run the cycles with "
            "`fairl flywheel`, which gives each version its own directory",
        )
    if sha256_dir(parent_path) != summary["reward_sha256"]:
        raise DataError(
            f"the audited reward {parent_path} changed since the audit",
            hint="run `fairl audit --force` on it again, then triage",
        )
    irl_dir = cfg.stage_dir("irl")
    require_stage(irl_dir, "irl", "irl")
    config = {
        "refine": to_dict(rf),
        "audit_findings_sha256": audit_sha,
        "triage_sha256": file_sha256(tpath),
    }

    def recipe(run: StageRun) -> None:
        _refine(run, cfg, findings, accepted, parent_path, audit_dir, tpath, summary, irl_dir)

    return run_stage(
        "refine", cfg, config, {"audit": audit_dir, "irl": irl_dir, "triage": tpath}, recipe,
        force=force, log=log.info,
    )  # fmt: skip


def earlier_findings(lineage: list[dict]) -> list[tuple[pd.DataFrame, dict]]:
    """(findings, accepted decisions) of each refinement in `lineage`, read from the files its
    steps name and checked against the sha256 they recorded."""
    out = []
    for step in lineage:
        audit, log_path = Path(step["audit"]), Path(step["triage"])
        for path, key in ((audit, "audit_sha256"), (log_path, "triage_sha256")):
            if not path.is_file() or file_sha256(path) != step[key]:
                raise DataError(
                    f"cycle {step['cycle']}'s {path.name} ({path}) is gone or changed since it was "
                    "refined on",
                    hint="restore it, or set refine.accumulate: false to train on this audit alone",
                )
        decided = read_log(log_path, step["audit_sha256"])
        accepted = {k: d for k, d in decided.items() if d.decision in ("accept", "relabel")}
        out.append((pd.read_parquet(audit), accepted))
    return out


def _refine(run, cfg, findings, accepted, parent_path, audit_dir, tpath, summary, irl_dir):
    rf = cfg.refine
    parent = load_reward(parent_path)
    emb = parent.embedder()
    pairs = pd.read_parquet(irl_dir / "pairs.parquet")
    train = pairs[pairs["split"] == "train"]
    # clones: the embedder's tensors are inference-mode tensors, which autograd refuses
    h_pos = emb.embed(train["chosen"].tolist()).clone()
    h_neg = emb.embed(train["rejected"].tolist()).clone()
    r_pos, r_neg = parent.score_embeddings(h_pos), parent.score_embeddings(h_neg)
    # the failure pairs' references: training outputs, labelled by the audit's own judge
    outputs = list(dict.fromkeys(train["chosen"].tolist() + train["rejected"].tolist()))
    verdict, _ = judge_for(cfg, summary["judge"])(outputs)
    clean = [t for t, v in zip(outputs, verdict, strict=True) if not v]
    toxic = [t for t, v in zip(outputs, verdict, strict=True) if v]
    r = random.Random(rf.seed)
    fail_pos, fail_neg, inv_a, inv_b = [], [], [], []
    sets = [(findings, accepted)]
    if rf.accumulate:  # every earlier cycle's accepted findings too, so none is undone
        sets = earlier_findings(parent.meta.get("lineage", [])) + sets
    rows = [
        (row, acc[row.finding_id])
        for df, acc in sets
        for row in df[df["finding_id"].isin(acc)].itertuples(index=False)
    ]
    for row, d in rows:
        if row.kind == NEUTRAL and d.decision == "accept":
            inv_a.append(row.text)
            inv_b.append(row.source)
            continue
        should_be_toxic = (d.label == "toxic") if d.decision == "relabel" else bool(row.judge_toxic)
        if should_be_toxic and clean:
            fail_pos.append(r.choice(clean))
            fail_neg.append(row.text)
        elif not should_be_toxic and toxic:
            fail_pos.append(row.text)
            fail_neg.append(r.choice(toxic))

    def h_and_r(texts):
        if not texts:
            z = torch.zeros(0, parent.head.d)
            return z, torch.zeros(0)
        h = emb.embed(texts, cache=False).clone()
        return h, parent.score_embeddings(h)

    (f_pos, rf_pos), (f_neg, rf_neg) = h_and_r(fail_pos), h_and_r(fail_neg)
    (i_a, ri_a), (i_b, ri_b) = h_and_r(inv_a), h_and_r(inv_b)
    data = CorrectionData(
        h_pos, h_neg, r_pos, r_neg, f_pos, f_neg, rf_pos, rf_neg, i_a, i_b, ri_a, ri_b,
        sigma=float(torch.cat([r_pos, r_neg]).std()),
    )  # fmt: skip
    head = make_head(parent.head.kind, parent.head.d, rf.hidden)
    with run.timed("train"):
        params, losses = train_correction(
            head, data, epochs=rf.epochs, lr=rf.lr, tau=rf.tau, tau_fail=rf.tau_fail,
            lambda_f=rf.lambda_fail, lambda_i=rf.lambda_invariance, mu=rf.penalty, seed=rf.seed,
        )  # fmt: skip
    lineage = list(parent.meta.get("lineage", []))
    step = {
        "cycle": len(lineage) + 1,
        "parent": str(parent_path),  # resolved: the lineage reads the same from any directory
        "parent_sha256": sha256_dir(parent_path),
        "audit": str((audit_dir / "findings.parquet").resolve()),
        "audit_sha256": file_sha256(audit_dir / "findings.parquet"),
        "triage": str(Path(tpath).resolve()),
        "triage_sha256": file_sha256(tpath),
        "trained": {
            "correction": {"head": head.kind, "hidden": rf.hidden if head.kind == "mlp" else 0},
            "pairs": len(train),
            "failure_pairs": len(fail_pos),
            "invariance_pairs": len(inv_a),
            "accepted": len(accepted),
            "accepted_with_earlier_cycles": len(rows),
            **{k: v for k, v in to_dict(rf).items() if k not in ("triage",)},
        },
    }
    meta = {**parent.meta, "lineage": [*lineage, step]}
    child = RewardModel(
        parent.head, parent.base, parent.failure, meta, [*parent.corrections, params]
    )
    child.save(run.path("reward"))
    child.export_sentence_transformers(run.path("reward", "sentence-transformer"), emb.path)
    write_json(
        run.path("refine.json"),
        {"lineage_step": step, "losses": losses[:: max(1, len(losses) // 50)]},
    )
    log.info(
        "refine: cycle %d: %d failure pairs, %d invariance pairs; loss %.4f -> %.4f",
        step["cycle"], len(fail_pos), len(inv_a), losses[0]["loss"], losses[-1]["loss"],
    )  # fmt: skip
