"""Shared fixtures. Tests never touch the network: the hub is offline, caches live in tmp dirs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports huggingface_hub / datasets / transformers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="fairl-tests-"))
os.environ["FAIRL_CACHE"] = str(_SESSION_TMP / "cache")  # embedding cache, shared
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_TMP / "hf-datasets")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_flush_denormal(True)  # before any test creates the CPU worker pool (pipeline.runtime)
_SESSION_THREADS = torch.get_num_threads()

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
RTP_DIR = SHARED / "data" / "rtp-challenging"


@pytest.fixture(autouse=True)
def _session_thread_count():
    """Every test starts with the session's thread count and no fairl choice remembered: a tiny
    policy loaded in-process sets one thread for the rest of the process (pipeline.runtime)."""
    yield
    from pipeline import runtime

    if torch.get_num_threads() != _SESSION_THREADS:
        torch.set_num_threads(_SESSION_THREADS)
    runtime._set_by_fairl = None


@pytest.fixture
def rtp_dir() -> Path:
    if not (RTP_DIR / "toxic.jsonl").is_file():
        pytest.skip(
            f"real RealToxicityPrompts subset not found at {RTP_DIR} "
            "(it lives beside the project in ../shared, absent from a plain clone)"
        )
    return RTP_DIR


COMPLETIONS_GOOD = [
    "thank you so much for the kind help today",
    "what a lovely and calm afternoon",
    "we really appreciate your patience with us",
    "the garden looks wonderful this spring",
    "she smiled and offered to share her lunch",
    "good luck with the exam tomorrow",
    "i hope your family is doing well",
    "the concert last night was beautiful",
    "let us meet for coffee next week",
    "this book was a pleasure to read",
    "he carefully explained every step again",
    "the team worked together very well",
]
COMPLETIONS_BAD = [
    "you are a stupid worthless idiot",
    "shut up you pathetic moron",
    "i hate you and your dumb ideas",
    "what a disgusting loser you are",
    "go away you ugly fool",
    "nobody cares about your idiotic opinion",
    "you are the dumbest person alive",
    "get lost you useless jerk",
    "your work is garbage and so are you",
    "stop talking you brainless clown",
    "you miserable creep, leave now",
    "what an absolute stupid waste",
]


def make_pairs_records(n: int = 120, seed: int = 0, with_split: bool = False) -> list[dict]:
    """Small pairs in the fairl schema: a polite completion preferred to a rude one, mostly;
    some pairs are polite-vs-polite, so ground-truth scores vary within the classes too."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = rng.choice(COMPLETIONS_GOOD) + f" ({i})"
        if i % 4 == 3:
            bad = rng.choice(COMPLETIONS_GOOD) + f" [{i}]"
            bad_score, bad_toxic = 0.6 + rng.random() * 0.2, False
        else:
            bad = rng.choice(COMPLETIONS_BAD) + f" [{i}]"
            bad_score, bad_toxic = rng.random() * 0.3, True
        row = {
            "prompt": f"prompt number {i}",
            "chosen": good,
            "rejected": bad,
            "chosen_score": 0.8 + rng.random() * 0.2,
            "rejected_score": bad_score,
            "chosen_toxic": False,
            "rejected_toxic": bad_toxic,
            "chosen_subtypes": {"insult": 0.0},
            "rejected_subtypes": {"insult": 1.0 if bad_toxic else 0.0},
        }
        if with_split:
            row["split"] = "test" if i % 5 == 0 else "train"
        rows.append(row)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", make_pairs_records())


def small_config(tmp_path: Path, pairs: Path, **irl) -> Path:
    """A config that trains fast: linear head by default, few epochs, two seeds."""
    import yaml

    cfg = {
        "run": {"name": "t", "root": str(tmp_path / "runs")},
        "irl": {
            "pairs": str(pairs),
            "seeds": [0, 1],
            "max_epochs": 15,
            "patience": 5,
            "head": "linear",
            **irl,
        },
        "evaluate": {},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# What every PPO step must log (docs/ppo.md, detail 7), written out here rather than read from
# pipeline.policy.ppo, so that a statistic the trainer stops logging fails the tests.
PPO_STATS = (
    "ppo/score",
    "ppo/kl",
    "ppo/kl_coef",
    "ppo/approx_kl",
    "ppo/clipfrac",
    "ppo/vf_loss",
    "ppo/entropy",
    "ppo/response_length",
)

# A small offline world: builds in seconds, still continues toxic prompts toxically.
MICRO_WORLD = {
    "n_sentences": 4000,
    "n_prompts": 800,
    "n_heldout": 200,
    "pretrain_steps": 500,
    "hidden_size": 48,
    "context": 40,
}


@pytest.fixture(scope="session")
def micro_world():
    from pipeline.config import WorldSection
    from pipeline.world.build import get_world

    return get_world(WorldSection(**MICRO_WORLD))


def micro_config(tmp_path: Path, **overrides) -> Path:
    """The whole pipeline on the micro world, with budgets that run in seconds."""
    import yaml

    gen = {"max_new_tokens": 12, "batch_size": 64}
    ppo = {
        "steps": 12,
        "batch_size": 32,
        "mini_batch_size": 8,
        "lr": 3.0e-4,
        "init_kl_coef": 0.05,
        "checkpoint_every": 4,
    }
    cfg = {
        "run": {"name": "m", "root": str(tmp_path / "runs")},
        "world": dict(MICRO_WORLD),
        "ground_truth": {"kind": "lexicon"},
        "prompts": {
            "source": ["world"],
            "eval_fraction": 0.15,
            "pairs_fraction": 0.4,
            "max_eval_prompts": 64,
        },
        "train_expert": {
            "base_model": "world",
            "generation": gen,
            "ppo": ppo,
            "trl": {"steps": 20, "batch_size": 16, "num_generations": 4, "lr": 5.0e-4},
        },
        "make_pairs": {"source": "generate", "n_pairs": 160, "generation": gen},
        "irl": {
            "seeds": [0],
            "max_epochs": 40,
            "patience": 5,
            "head": "linear",
            "fa": {"rounds": 5},
        },
        "evaluate": {"heldout": "world"},
        "re_rlhf": {
            "eval_every": 3,
            "generation": gen,
            "ppo": {**ppo, "steps": 6, "init_kl_coef": 0.2},
        },
    }
    for dotted, value in overrides.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
