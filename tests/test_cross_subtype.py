"""irl.subtype (issue 10; paper Figure 3, left): train on one subtype's pairs and the clean ones,
evaluate on every subtype; a sweep over it draws the heatmap."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import make_pairs_records, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app
from pipeline.data.splits import subtype_train
from pipeline.errors import DataError


def two_subtypes(n: int) -> list[dict]:
    """make_pairs_records with the toxic pairs split between insult and threat."""
    rows = make_pairs_records(n)
    for i, r in enumerate(rows):
        toxic = r["rejected_toxic"]
        st = "insult" if i % 2 else "threat"
        r["chosen_subtypes"] = {"insult": 0.0, "threat": 0.0}
        r["rejected_subtypes"] = {"insult": 0.0, "threat": 0.0} | ({st: 1.0} if toxic else {})
    return rows


def frame() -> pd.DataFrame:
    rows = [
        # split, rejected toxic, insult, threat
        ("train", True, 1.0, 0.0),
        ("train", True, 0.0, 1.0),
        ("train", False, 0.0, 0.0),
        ("train", True, 0.0, None),  # a null score does not carry the subtype
        ("test", True, 0.0, 1.0),
        ("val", True, 0.0, 1.0),
    ]
    df = pd.DataFrame(
        rows, columns=["split", "rejected_toxic", "rejected_sub_insult", "rejected_sub_threat"]
    )
    return df.assign(chosen_toxic=False, pair_id=range(len(df)))


def test_one_subtype_and_the_clean_pairs_are_kept_for_training():
    out, kept = subtype_train(frame(), "insult")
    assert out["pair_id"].tolist() == [0, 2, 4, 5]  # the insult pair, the clean one, test, val
    assert kept == {"subtype": "insult", "carrying": 1, "clean": 1}
    out, _ = subtype_train(frame(), "threat")
    assert out["pair_id"].tolist() == [1, 2, 4, 5]
    with pytest.raises(DataError, match="needs the pairs' toxicity labels and subtype scores") as e:
        subtype_train(frame(), "obscene")
    assert "subtypes in these pairs: insult, threat" in e.value.hint
    df = frame()
    df.loc[0, "rejected_sub_insult"] = 0.0
    with pytest.raises(DataError, match="no training pair's rejected output carries"):
        subtype_train(df, "insult")


def test_a_sweep_over_subtypes_scores_each_on_every_subtype_and_draws_the_heatmap(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", two_subtypes(160))
    cfg = small_config(tmp_path, pairs, methods=["mm", "me"], seeds=[0])
    doc = yaml.safe_load(cfg.read_text())
    doc["sweep"] = {"grid": {"irl.subtype": ["insult", "threat"]}}
    cfg.write_text(yaml.safe_dump(doc))
    res = CliRunner().invoke(app, ["sweep", str(cfg), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    root = tmp_path / "runs" / "t"
    for st in ("insult", "threat"):
        point = root / "points" / f"irl.subtype={st}"
        used = pd.read_parquet(point / "irl/pairs.parquet")
        train = used[used["split"] == "train"]
        other = "threat" if st == "insult" else "insult"
        assert (train[f"rejected_sub_{other}"].fillna(0) <= 0.5).all()  # no other subtype
        metrics = json.loads((point / "evaluate/metrics.json").read_text())
        for row in metrics["models"].values():
            assert row["test/auc_insult"] is not None and row["test/auc_threat"] is not None
    assert (root / "comparison" / "cross_subtype.png").stat().st_size > 10_000
