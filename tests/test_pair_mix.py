"""irl.n_pairs / irl.pair_mix (issue 10; paper Appendix D): a fixed number of training pairs
with an exact share of toxic -> non-toxic pairs, val and test untouched."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import make_pairs_records, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app
from pipeline.config import load_config
from pipeline.data.splits import subsample_train
from pipeline.errors import ConfigError, DataError


def frame(n_tox: int, n_other: int, n_test: int = 10) -> pd.DataFrame:
    rows = [(True, False, "train")] * n_tox + [(False, False, "train")] * n_other
    rows += [(True, False, "test")] * n_test + [(False, False, "val")] * 3
    df = pd.DataFrame(rows, columns=["rejected_toxic", "chosen_toxic", "split"])
    return df.assign(pair_id=np.arange(len(df)))


@pytest.mark.parametrize("mix", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
def test_the_mix_is_hit_exactly_and_val_test_are_kept(mix):
    df = frame(60, 70)
    out, drawn = subsample_train(df, 40, mix, seed=3)
    train = out[out["split"] == "train"]
    assert len(train) == 40
    assert (
        int(train["rejected_toxic"].sum()) == round(mix * 40) == drawn["drawn"]["toxic_to_nontoxic"]
    )
    kept = df[df["split"] != "train"]
    assert out[out["split"] != "train"]["pair_id"].tolist() == kept["pair_id"].tolist()
    assert out["pair_id"].is_monotonic_increasing  # rows keep their order
    again, _ = subsample_train(df, 40, mix, seed=3)
    assert again.equals(out)  # the seed decides the draw
    other, _ = subsample_train(df, 40, mix, seed=4)
    assert mix in (0.0, 1.0) or not other.equals(out)


@pytest.mark.parametrize("n,mix,k", [(5, 0.5, 3), (10, 0.25, 3), (10, 0.35, 4), (10, 0.3, 3)])
def test_a_half_pair_rounds_up_not_to_even(n, mix, k):
    out, drawn = subsample_train(frame(20, 20), n, mix, seed=0)
    assert drawn["drawn"]["toxic_to_nontoxic"] == k
    assert int(out[out["split"] == "train"]["rejected_toxic"].sum()) == k


def test_an_impossible_mix_is_refused_with_the_mixes_that_work():
    df = frame(10, 70)
    with pytest.raises(DataError, match="cannot supply 20 toxic_to_nontoxic, 20 other") as e:
        subsample_train(df, 40, 0.5, seed=0)
    assert "irl.pair_mix can be 0 to 0.25" in e.value.hint
    with pytest.raises(DataError, match="cannot supply 100 train"):
        subsample_train(df, 100, None, seed=0)
    with pytest.raises(DataError, match="needs the pairs' chosen_toxic"):
        subsample_train(df.drop(columns=["chosen_toxic"]), 10, 0.5, seed=0)


def test_pair_mix_needs_n_pairs():
    with pytest.raises(ConfigError, match="irl.pair_mix needs irl.n_pairs"):
        load_config(overrides=["irl.pair_mix=0.5"])


def test_irl_trains_on_the_drawn_pairs_and_evaluate_reports_training_starc(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", make_pairs_records(120))
    cfg = small_config(tmp_path, pairs, methods=["mm"], seeds=[0])
    runner = CliRunner()
    for stage in ("irl", "evaluate"):
        res = runner.invoke(
            app,
            [stage, str(cfg), "--set", "irl.n_pairs=40", "--set", "irl.pair_mix=0.75"],
            catch_exceptions=False,
        )
        assert res.exit_code == 0, res.output
    run = tmp_path / "runs/t"
    used = pd.read_parquet(run / "irl/pairs.parquet")
    train = used[used["split"] == "train"]
    assert len(train) == 40 and int((train["rejected_toxic"] & ~train["chosen_toxic"]).sum()) == 30
    rule = json.loads((run / "irl/summary.json").read_text())["pairs"]["split"]["train"]
    assert rule["rule"] == "subsample" and rule["drawn"] == {"toxic_to_nontoxic": 30, "other": 10}
    metrics = json.loads((run / "evaluate/metrics.json").read_text())
    assert metrics["data"]["n_train"] == 40
    assert metrics["models"]["mm/seed-0"]["train/starc"] is not None
