"""Each edit family of `fairl audit` finds the flaw planted for it (issue 11, acceptance 4): a
reward that keys on something the judge ignores, or ignores something the judge keys on. The
rewards and judges here are plain functions of the text, so what is found is what was planted."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.audit.findings import finding_rates, judge_probes, occlusion
from pipeline.audit.probes import EDITS, edit_probes, obfuscate

WORDS = ("idiot", "moron", "fool")
SOURCES = [
    " you are a fool and everyone knows it.",
    " honestly, what a moron you are.",
    " we walked to the river slowly.",
    " the cat is near the gate today.",
    " ella went past the market together.",
    " the box is broken again.",
    " honestly, the dog was fixed by ben today.",
    " he is an idiot, said nobody.",
] * 5


def lexicon_judge(text: str) -> bool:
    return any(re.search(rf"\b{w}\b", text) for w in WORDS) and not re.search(r"\bnot\b", text)


def fair_reward(text: str) -> float:
    """Agrees with the judge: -2 on its toxic texts, +1 otherwise."""
    return -2.0 if lexicon_judge(text) else 1.0


PLANTED = {  # family -> the flawed reward, the judge (default lexicon_judge)
    "cue": (lambda t: fair_reward(t) - 2.5 * ("honestly" in t), None),
    "synonym": (
        lambda t: fair_reward(t) + 2.5 * bool(re.search(r"\bwalked|went|fixed\b", t)),
        None,
    ),
    "punctuation": (lambda t: fair_reward(t) + 2.5 * t.rstrip().endswith("."), None),
    "paraphrase": (
        lambda t: (
            fair_reward(t) - 2.5 * bool(re.search(r"\bwell,|in short,|as i see it,|that is all", t))
        ),
        None,
    ),
    "insert_toxic": (lambda t: 1.0, None),  # blind to every insult
    "negation": (lambda t: -2.0 if any(w in t for w in WORDS) else 1.0, None),  # blind to "not"
    # the judge reads through look-alike spellings, the reward does not
    "obfuscation": (
        fair_reward,
        lambda t: lexicon_judge(
            re.sub(
                r"[@3!01*$]",
                lambda m: {"@": "a", "3": "e", "1": "i", "0": "o", "*": "u", "$": "s"}.get(
                    m.group(0), m.group(0)
                ),
                t,
            )
        ),
    ),
}


def audit(family: str, reward, judge) -> pd.DataFrame:
    judge = judge or lexicon_judge
    toxic = [judge(s) for s in SOURCES]
    probes = pd.DataFrame([p.__dict__ for p in edit_probes(SOURCES, toxic, [family], 20, seed=0)])
    texts = set(probes["text"]) | set(probes["source"])
    r = {t: reward(t) for t in texts}
    jt = {t: judge(t) for t in texts}
    sigma = float(np.std([reward(s) for s in SOURCES]))
    threshold = -0.5
    return judge_probes(probes, r, jt, {t: float(v) for t, v in jt.items()}, threshold, sigma, 0.5)


@pytest.mark.parametrize("family", list(EDITS))
def test_each_family_finds_its_planted_flaw_and_nothing_on_a_fair_reward(family):
    reward, judge = PLANTED[family]
    flawed = finding_rates(audit(family, reward, judge))
    assert flawed["findings"].iloc[0] > 0, f"{family} found nothing on its planted flaw"
    fair = finding_rates(audit(family, fair_reward, judge))
    if family != "obfuscation":  # there the fair reward is the flawed one: it cannot read 1d1ot
        assert fair["findings"].iloc[0] == 0, f"{family} finds flaws in a fair reward"


def test_occlusion_names_the_planted_cue():
    reward, _ = PLANTED["cue"]
    found = audit("cue", reward, None)
    words = occlusion(
        found.loc[found["finding"], "text"].tolist(), lambda ts: np.array([reward(t) for t in ts])
    )
    assert words["word"].iloc[0] == "honestly,".strip(",") or words["word"].iloc[0] == "honestly"


def test_probes_are_seeded():
    a = edit_probes(SOURCES, [False] * len(SOURCES), list(EDITS), 10, seed=3)
    b = edit_probes(SOURCES, [False] * len(SOURCES), list(EDITS), 10, seed=3)
    c = edit_probes(SOURCES, [False] * len(SOURCES), list(EDITS), 10, seed=4)
    assert a == b and a != c
    assert obfuscate("idiot", __import__("random").Random(0)) != "idiot"
