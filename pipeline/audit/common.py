"""What the flywheel's stages share (audit, triage, refine, flywheel): which reward is audited,
its identity, the judge, and where the triage log lives."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.artifacts import require_stage
from pipeline.config import ExperimentConfig
from pipeline.errors import ConfigError, FairlError
from pipeline.evaluate.classify import fit_threshold
from pipeline.irl.reward import reward_dir
from pipeline.scorers import LearnedRewardScorer, Scorer, make_scorer


def resolve_audited(spec: str, cfg: ExperimentConfig) -> Path:
    """`irl:<method>` -> this run's reward of that method at the smallest irl seed; a path as
    it is (checked to be a reward directory)."""
    if spec.startswith("irl:"):
        irl_dir = cfg.stage_dir("irl")
        require_stage(irl_dir, "irl", "irl")
        path = reward_dir(irl_dir, spec.split(":", 1)[1], min(cfg.irl.seeds))
    else:
        path = Path(spec)
    if not (path / "reward.json").is_file():
        raise ConfigError(
            f"audit.reward {spec!r}: {path} is not a reward directory",
            hint="`irl:<method>` of a method this run's irl trained, or a directory holding "
            "reward.json (runs/<name>/irl/rewards/<method>/seed-<s>, or a refined version)",
        )
    return path


def sha256_dir(path: Path) -> str:
    """sha256 over a reward directory's reward.json and reward.safetensors (its identity)."""
    h = hashlib.sha256()
    for name in ("reward.json", "reward.safetensors"):
        h.update(name.encode())
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()


class Judge:
    """A scorer's verdicts (toxic or not) and scores (toxicity where it has one, else -R)."""

    def __init__(self, scorer: Scorer, threshold: float | None = None):
        self.scorer, self.threshold = scorer, threshold

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        s = self.scorer.score(texts)
        if s.toxic is not None:
            score = s.toxicity if s.toxicity is not None else s.toxic.astype(float)
            return np.asarray(s.toxic, bool), np.asarray(score, float)
        if self.threshold is None:
            raise FairlError(f"the judge {self.scorer.describe()} gives no verdicts")
        r = np.asarray(s.reward, float)
        return r <= self.threshold, -r


def judge_for(cfg: ExperimentConfig, spec: str) -> Judge:
    """`ground_truth` (the config's scorer) or a reward directory, whose verdicts come at its
    threshold fitted on the run's training outputs against the ground truth."""
    if spec in ("ground_truth", "gt"):
        return Judge(make_scorer(cfg.ground_truth))
    if not (Path(spec) / "reward.json").is_file():
        raise ConfigError(
            f"judge {spec!r} is neither ground_truth nor a reward directory",
            hint="name `ground_truth`, or a directory holding reward.json",
        )
    df = pd.read_parquet(cfg.stage_dir("irl") / "pairs.parquet")
    d = df[df["split"] == "train"]
    texts = d["chosen"].tolist() + d["rejected"].tolist()
    toxic = np.asarray(d["chosen_toxic"].tolist() + d["rejected_toxic"].tolist(), bool)
    scorer = LearnedRewardScorer(Path(spec))
    return Judge(scorer, fit_threshold(scorer.score(texts).reward, toxic))


def triage_path(cfg: ExperimentConfig) -> Path:
    """The triage log: refine.triage, or runs/<name>/triage/triage.jsonl."""
    return cfg.refine.triage or cfg.run.root / cfg.run.name / "triage" / "triage.jsonl"
