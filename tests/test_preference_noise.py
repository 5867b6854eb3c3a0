"""Preference noise in make-pairs (issue 9, item 1): a seeded fraction of pairs flipped."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from conftest import micro_config
from typer.testing import CliRunner

from cli.main import app
from pipeline.data.pairs import swap_sides


def test_swap_sides_moves_every_column_with_its_text():
    df = pd.DataFrame(
        {
            "prompt": ["p0", "p1"],
            "chosen": ["a", "b"],
            "rejected": ["x", "y"],
            "chosen_score": [1.0, 2.0],
            "rejected_score": [-1.0, -2.0],
            "chosen_toxic": [False, False],
            "rejected_toxic": [True, True],
            "chosen_sub_insult": [0.1, 0.2],
            "rejected_sub_insult": [0.9, 0.8],
        }
    )
    out = swap_sides(df, np.array([False, True]))
    assert out.iloc[0].equals(df.iloc[0])
    assert out.loc[1, ["chosen", "rejected", "prompt"]].tolist() == ["y", "b", "p1"]
    assert out.loc[1, "chosen_score"] == -2.0 and out.loc[1, "rejected_score"] == 2.0
    assert bool(out.loc[1, "chosen_toxic"]) and not bool(out.loc[1, "rejected_toxic"])
    assert out.loc[1, "chosen_sub_insult"] == 0.8 and out.loc[1, "rejected_sub_insult"] == 0.2


def test_make_pairs_flips_the_fraction_it_says(tmp_path, micro_world):
    runner = CliRunner()
    gen = {"batch_size": 16, "max_new_tokens": 10}
    clean = micro_config(
        tmp_path / "clean", make_pairs__expert_model="world", make_pairs__generation=gen
    )
    noisy = micro_config(
        tmp_path / "noisy",
        make_pairs__expert_model="world",
        make_pairs__generation=gen,
        make_pairs__preference_noise=0.3,
    )
    for cfg in (clean, noisy):
        res = runner.invoke(app, ["make-pairs", str(cfg)], catch_exceptions=False)
        assert res.exit_code == 0, res.output
    a = pd.read_parquet(tmp_path / "clean/runs/m/make_pairs/pairs.parquet")
    b = pd.read_parquet(tmp_path / "noisy/runs/m/make_pairs/pairs.parquet")
    flipped = (a["chosen"] != b["chosen"]).to_numpy()
    same = int((a["chosen"] == a["rejected"]).sum())  # a flip of identical texts is invisible
    summary = json.loads((tmp_path / "noisy/runs/m/make_pairs/summary.json").read_text())
    assert flipped.sum() > 0
    assert flipped.sum() <= summary["flipped"] <= flipped.sum() + same
    assert 0.15 < flipped.mean() < 0.45  # 0.3 of the pairs, give or take the draw
    pd.testing.assert_frame_equal(swap_sides(a, flipped), b)
