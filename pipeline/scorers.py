"""Ground-truth scorers, and learned rewards behind the same interface: texts -> scores.

    hf-classifier    any sequence-classification model (hub name or local path); paper default
                     s-nlp/roberta_toxicity_classifier. reward = the raw logit of the
                     `reward_label` class (as in TRL's detoxification example: raw logits
                     optimise more smoothly than probabilities); toxic = P(toxic_label) > 0.5.
    profanity-check  alt-profanity-check's pretrained offensive-language classifier (offline).
                     reward = log((1 - p) / p), the logit of "not offensive"; toxic = p > 0.5.
    lexicon          the offline world's exact ground truth (pipeline.world.grammar).
    learned          a reward saved by `fairl irl` (a reward directory): reward only.
    categories       DR-IRL's category rewards of `fairl irl` (irl.categories), summed or
                     routed by the prompt: reward only.
    hf-reward        any hub sequence-classification model as a reward (`hf:<model>`, or
                     `hf:<model>#<label>` for a classifier): its single logit, or the raw
                     logit of <label>; reward only (re_rlhf.rewards, and evaluate beside the
                     recovered rewards).

RL stages optimise any of them; evaluation uses the toxicity and label a ground truth gives.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.errors import ConfigError, FairlError
from pipeline.hub import resolve_model
from pipeline.irl.categories import route
from pipeline.irl.reward import load_reward, reward_dir
from pipeline.runtime import placement, using_model_threads
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

    def score_for(self, texts: Sequence[str], prompts: Sequence[str] | None) -> Scores:
        """Scores of completions to their prompts: the completions' alone, unless the reward
        reads the prompt too (a routed category reward)."""
        return self.score(texts)

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
        self.tokenizer, self.model = _classifier(model, "ground-truth classifier")
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

    def score(self, texts):
        z = _logits(self.model, self.tokenizer, texts, self.batch_size, self.max_length)
        p = torch.softmax(z, -1)[:, self.toxic_idx].numpy().astype(float)
        return Scores(reward=z[:, self.reward_idx].numpy().astype(float), toxicity=p, toxic=p > 0.5)


def _classifier(name: str, what: str):
    """(tokenizer, model) of a sequence-classification model by hub name or local path, in
    eval mode on run.device in run.precision's dtype (pipeline.runtime.placement)."""
    # transformers is heavy: imported only when a classifier is used
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model(name, what)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    place = placement()
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False)
    return tokenizer, model.eval().to(place.device, place.dtype)


@torch.no_grad()
def _logits(model, tokenizer, texts, batch_size: int, max_length: int) -> torch.Tensor:
    """[n, num_labels] float logits of a sequence classifier, in batches."""
    out = []
    starts = range(0, len(texts), batch_size)
    with using_model_threads(model, "sequence classifier"):
        for i in tqdm(starts, desc="scoring", unit="batch", disable=None, leave=False):
            enc = tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(model.device)
            out.append(model(**enc).logits.float().cpu())
    return torch.cat(out) if out else torch.empty(0, model.config.num_labels)


class HubRewardScorer(Scorer):
    """A hub (or local) sequence-classification model as a reward: `hf:<model>` for a reward
    model with one output, `hf:<model>#<label>` for a classifier (the raw logit of <label>,
    e.g. `hf:s-nlp/roberta_toxicity_classifier#neutral`)."""

    name = "hf-reward"

    def __init__(self, spec: str, batch_size: int = 32, max_length: int = 128):
        model, _, label = spec.removeprefix("hf:").partition("#")
        self.tokenizer, self.model = _classifier(model, "reward model")
        if self.tokenizer.pad_token is None:  # decoder reward models: pad with EOS, as TRL does
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        labels = {str(v).lower(): int(k) for k, v in self.model.config.id2label.items()}
        n = self.model.config.num_labels
        if label:
            if label.lower() not in labels:
                raise ConfigError(
                    f"reward {spec!r}: {model} has no label {label!r}; its labels are "
                    f"{sorted(labels)}",
                    hint=f"hf:{model}#<one of them>",
                )
            self.idx = labels[label.lower()]
        elif n == 1:
            self.idx = 0
        else:
            raise ConfigError(
                f"reward {spec!r}: {model} has {n} outputs ({sorted(labels)}): which is the "
                "reward?",
                hint=f"name its label: hf:{model}#<label> (the raw logit of that class)",
            )
        self.spec, self.batch_size, self.max_length = spec, batch_size, max_length

    def describe(self):
        return {"kind": self.name, "model": self.spec}

    def score(self, texts):
        z = _logits(self.model, self.tokenizer, texts, self.batch_size, self.max_length)
        return Scores(reward=z[:, self.idx].numpy().astype(float))


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


class CategoryRewardScorer(Scorer):
    """DR-IRL's category rewards (`fairl irl` with irl.categories) as one reward: each category's
    reward r_c standardised by the mean and std recorded in its reward.json (on the irl pairs'
    outputs; the raw rewards' spreads differ several-fold, so a plain sum would drown the rare
    categories), then summed over categories (`sum`, the default: every completion is judged
    against every harm, whatever its prompt), or taken from the prompt's category only (`route`:
    the category whose demonstrations' prompt centroid is most cosine-similar to the prompt,
    pipeline.irl.categories.route). Spec: `categories:<sum|route>:<method>:<seed>:<dir>`, where
    <dir> is irl/categories (re_rlhf writes it from `irl-categories:<method>[#route]`)."""

    name = "categories"

    def __init__(self, spec: str):
        from safetensors.torch import load_file  # the category path only

        _, self.mode, self.method, seed, root = spec.split(":", 4)
        self.root = Path(root)
        info = json.loads((self.root / "categories.json").read_text())
        self.categories: list[str] = info["categories_order"]
        self.demonstrations = {c: v["carrying"] for c, v in info["categories"].items()}
        self.rewards = [
            load_reward(reward_dir(self.root / c, self.method, int(seed))) for c in self.categories
        ]
        self.standardise = [
            (r.meta["standardise"]["mean"], r.meta["standardise"]["std"]) for r in self.rewards
        ]
        self.mu = load_file(str(self.root / "centroids.safetensors"))  # prompt/unsafe/safe [C, d]
        self.text = self.rewards[0].meta.get("text", "completion")
        self._prompts: dict[str, torch.Tensor] = {}

    def describe(self):
        return {"kind": self.name, "mode": self.mode, "method": self.method, "path": str(self.root)}

    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """[n, d] prompt embeddings, each prompt embedded once per scorer (RL repeats them)."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._prompts))
        if new:
            h = self.rewards[0].embedder().embed(new, cache=False)
            self._prompts.update(zip(new, h))
        return torch.stack([self._prompts[p] for p in prompts])

    def components(self, texts: Sequence[str], prompts: Sequence[str] | None) -> torch.Tensor:
        """[C, n] the standardised category rewards r_c(y) of each completion."""
        if self.text == "prompt+completion":
            if prompts is None:
                raise FairlError("these category rewards read prompt+completion: pass the prompts")
            texts = [p + t for p, t in zip(prompts, texts)]
        h = self.rewards[0].embedder().embed(list(texts), cache=False)
        return torch.stack(
            [(r.score_embeddings(h) - m) / sd for r, (m, sd) in zip(self.rewards, self.standardise)]
        )

    def routed(self, prompts: Sequence[str]) -> torch.Tensor:
        """[n] each prompt's category index."""
        return route(self.embed_prompts(prompts), self.mu["prompt"])

    def active(self, prompts: Sequence[str] | None, n: int) -> torch.Tensor:
        """[C, n] which category rewards count for each completion: all (sum) or the routed."""
        if self.mode == "sum":
            return torch.ones(len(self.categories), n, dtype=torch.bool)
        if prompts is None:
            raise FairlError("a routed category reward needs the prompts of its completions")
        idx = self.routed(prompts)
        return torch.arange(len(self.categories))[:, None] == idx[None, :]

    def score_for(self, texts, prompts):
        r = self.components(texts, prompts) * self.active(prompts, len(texts))
        return Scores(reward=r.sum(0).double().numpy())

    def score(self, texts):
        return self.score_for(texts, None)


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


def reward_inputs(spec: str) -> dict[str, Path]:
    """The local directory a reward spec reads (a reward directory, or `hf:<local dir>`), as a
    stage input whose files are hashed into its fingerprint; {} for a hub name or a scorer."""
    if spec.startswith("categories:"):
        return {f"reward:{spec}": Path(spec.split(":", 4)[4])}
    p = Path(spec.removeprefix("hf:").partition("#")[0])
    return {f"reward:{spec}": p} if p.is_dir() else {}


def reward_scorer(spec: str, ground_truth: Scorer) -> Scorer:
    """`ground_truth` (or `gt`) -> the ground truth itself; `hf:<model>[#<label>]` -> a hub
    sequence-classification model; anything else is a reward directory."""
    if spec in ("ground_truth", "gt"):
        return ground_truth
    if spec.startswith("hf:"):
        return HubRewardScorer(spec)
    if spec.startswith("categories:"):
        return CategoryRewardScorer(spec)
    p = Path(spec)
    if not (p / "reward.json").is_file():
        raise FairlError(
            f"reward {spec!r} is neither 'ground_truth', `hf:<model>` nor a fairl reward directory",
            hint="point to runs/<name>/irl/rewards/<method>/seed-<s>, or a hub reward model as "
            "hf:<org>/<name>",
        )
    return LearnedRewardScorer(p)
