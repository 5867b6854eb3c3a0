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
os.environ["FAIRL_CACHE"] = str(_SESSION_TMP / "cache")            # embedding cache, shared
os.environ["HF_DATASETS_CACHE"] = str(_SESSION_TMP / "hf-datasets")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_flush_denormal(True)  # before any test creates the CPU worker pool (see irl.common)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
RTP_DIR = SHARED / "data" / "rtp-challenging"


@pytest.fixture
def rtp_dir() -> Path:
    if not (RTP_DIR / "toxic.jsonl").is_file():
        pytest.skip(f"real RealToxicityPrompts subset not found at {RTP_DIR} "
                    "(it lives beside the project in ../shared, absent from a plain clone)")
    return RTP_DIR


COMPLETIONS_GOOD = [
    "thank you so much for the kind help today", "what a lovely and calm afternoon",
    "we really appreciate your patience with us", "the garden looks wonderful this spring",
    "she smiled and offered to share her lunch", "good luck with the exam tomorrow",
    "i hope your family is doing well", "the concert last night was beautiful",
    "let us meet for coffee next week", "this book was a pleasure to read",
    "he carefully explained every step again", "the team worked together very well",
]
COMPLETIONS_BAD = [
    "you are a stupid worthless idiot", "shut up you pathetic moron",
    "i hate you and your dumb ideas", "what a disgusting loser you are",
    "go away you ugly fool", "nobody cares about your idiotic opinion",
    "you are the dumbest person alive", "get lost you useless jerk",
    "your work is garbage and so are you", "stop talking you brainless clown",
    "you miserable creep, leave now", "what an absolute stupid waste",
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
        row = {"prompt": f"prompt number {i}", "chosen": good, "rejected": bad,
               "chosen_score": 0.8 + rng.random() * 0.2, "rejected_score": bad_score,
               "chosen_toxic": False, "rejected_toxic": bad_toxic,
               "chosen_subtypes": {"insult": 0.0}, "rejected_subtypes": {"insult": 1.0 if bad_toxic else 0.0}}
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
        "irl": {"pairs": str(pairs), "seeds": [0, 1], "max_epochs": 15, "patience": 5,
                "head": "linear", **irl},
        "evaluate": {},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
