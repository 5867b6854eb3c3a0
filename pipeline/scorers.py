"""Ground-truth scorers, and learned rewards behind the same interface: texts -> scores.

    hf-classifier    any sequence-classification model (hub name or local path); paper default
                     s-nlp/roberta_toxicity_classifier. reward = the raw logit of the
                     `reward_label` class (as in TRL's detoxification example: raw logits
                     optimise more smoothly than probabilities); toxic = P(toxic_label) > 0.5.
    profanity-check  alt-profanity-check's pretrained offensive-language classifier (offline).
                     reward = log((1 - p) / p), the logit of "not offensive"; toxic = p > 0.5.
    lexicon          the offline world's exact ground truth (pipeline.world.grammar).
    learned          a reward saved by `fairl irl` (a reward directory): reward only.

RL stages optimise any of them; evaluation uses the toxicity and label a ground truth gives.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import ConfigError, FairlError
from pipeline.hub import resolve_model
from pipeline.irl.reward import load_reward
from pipeline.runtime import using_model_threads
from pipeline.world.grammar import SUBTYPES, lexicon_score
from pipeline.world.hard import hard_score

log = logging.getLogger("fairl.scorers")


@dataclass
class Scores:
    reward: np.ndarray  # [n], higher is better
    toxicity: np.ndarray | None = None  # [n] probability of toxic
    toxic: np.ndarray | None = None  # [n] bool
    subtypes: dict[str, np.ndarray] = field(default_factory=dict)


class Scorer(ABC):
    name: str

    @abstractmethod
    def score(self, texts: Sequence[str]) -> Scores: ...

    def describe(self) -> dict:
        return {"kind": self.name}


class LexiconScorer(Scorer):
    name = "lexicon"
    score_text = staticmethod(lexicon_score)

    def score(self, texts):
        s = [self.score_text(t) for t in texts]
        return Scores(
            reward=np.array([x.reward for x in s], dtype=float),
            toxicity=np.array([x.toxicity for x in s], dtype=float),
            toxic=np.array([x.toxic for x in s]),
            subtypes={k: np.array([x.subtypes[k] for x in s]) for k in SUBTYPES},
        )


class HardLexiconScorer(LexiconScorer):
    """The hard world's exact ground truth (pipeline.world.hard.hard_score)."""

    name = "hard-lexicon"
    score_text = staticmethod(hard_score)


class ProfanityCheckScorer(Scorer):
    name = "profanity-check"

    def __init__(self):
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise FairlError(
                "ground_truth.kind=profanity-check needs alt-profanity-check",
                hint='pip install -e ".[profanity]"',
            ) from None
        self._predict = predict_prob

    def score(self, texts):
        p = np.clip(np.asarray(self._predict(list(texts)), dtype=float), 1e-6, 1 - 1e-6)
        return Scores(reward=np.log((1 - p) / p), toxicity=p, toxic=p > 0.5)


class HFClassifierScorer(Scorer):
    name = "hf-classifier"

    def __init__(
        self,
        model: str,
        reward_label: str,
        toxic_label: str,
        batch_size: int = 32,
        max_length: int = 128,
    ):
        # transformers is heavy: imported only when a classifier is the ground truth
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = resolve_model(model, "ground-truth classifier")
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=False
        ).eval()
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        for what, label in (("reward_label", reward_label), ("toxic_label", toxic_label)):
            if label.lower() not in labels:
                raise ConfigError(
                    f"classifier {model} has no label {label!r} (ground_truth.{what}); its labels "
                    f"are {sorted(labels)}",
                    hint=f"set ground_truth.{what} to one of them",
                )
        self.reward_idx, self.toxic_idx = labels[reward_label.lower()], labels[toxic_label.lower()]
        self.batch_size, self.max_length, self.model_name = batch_size, max_length, model

    def describe(self):
        return {"kind": self.name, "model": self.model_name}

    @torch.no_grad()
    def score(self, texts):
        logits = []
        with using_model_threads(self.model, "ground-truth classifier"):
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    list(texts[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                logits.append(self.model(**enc).logits.float())
        z = torch.cat(logits) if logits else torch.empty(0, 2)
        p = torch.softmax(z, -1)[:, self.toxic_idx].numpy().astype(float)
        return Scores(reward=z[:, self.reward_idx].numpy().astype(float), toxicity=p, toxic=p > 0.5)


class LearnedRewardScorer(Scorer):
    """A reward recovered by `fairl irl`; texts are embedded without the disk cache (RL samples
    are mostly new texts, and thousands of one-batch cache shards help nobody)."""

    name = "learned"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.reward = load_reward(self.path)

    def describe(self):
        return {"kind": self.name, "path": str(self.path), "method": self.reward.meta.get("method")}

    def score(self, texts):
        emb = self.reward.embedder()
        h = emb.embed(list(texts), cache=False)
        return Scores(reward=self.reward.score_embeddings(h).double().numpy())


def make_scorer(gt) -> Scorer:
    """A ground-truth scorer from a GroundTruthSection."""
    if gt.kind == "lexicon":
        return LexiconScorer()
    if gt.kind == "hard-lexicon":
        return HardLexiconScorer()
    if gt.kind == "profanity-check":
        return ProfanityCheckScorer()
    return HFClassifierScorer(
        gt.model, gt.reward_label, gt.toxic_label, gt.batch_size, gt.max_length
    )


def reward_scorer(spec: str, ground_truth: Scorer) -> Scorer:
    """`ground_truth` (or `gt`) -> the ground truth itself; anything else is a reward directory."""
    if spec in ("ground_truth", "gt"):
        return ground_truth
    p = Path(spec)
    if not (p / "reward.json").is_file():
        raise FairlError(
            f"reward {spec!r} is neither 'ground_truth' nor a fairl reward directory",
            hint="point to runs/<name>/irl/rewards/<method>/seed-<s>",
        )
    return LearnedRewardScorer(p)
