"""Issue 7, data cases: pairs files a user really has (train/test splits only, no prompts),
input that is not UTF-8 or not a file, messages that name the file line, and degenerate data
that evaluate still scores but flags (cases 5b, 11, 12, 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_pairs_records, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app
from pipeline.data.jigsaw import load_heldout
from pipeline.data.pairs import load_pairs
from pipeline.errors import DataError

runner = CliRunner()
FAST = {"methods": ["mm", "fa-mm-margin"], "seeds": [0, 1]}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def evaluated(tmp_path: Path, rows: list[dict]) -> tuple[dict, str]:
    """irl then evaluate on `rows`; metrics.json and report.md."""
    cfg = small_config(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", rows), **FAST)
    for command in ("irl", "evaluate"):
        res = invoke(command, cfg)
        assert res.exit_code == 0, res.output
    ev = tmp_path / "runs" / "t" / "evaluate"
    return json.loads((ev / "metrics.json").read_text()), (ev / "report.md").read_text()


def warned(metrics: dict, key: str) -> list[dict]:
    return [w for w in metrics["warnings"] if key in w["metrics"] or "*" in w["metrics"]]


# ------------------------------------------------------------- case 12: the user's pairs file
def test_train_test_split_without_prompts_runs_irl_and_evaluate(tmp_path):
    rows = make_pairs_records(300, with_split=True)  # split: train / test only
    for r in rows:
        r["prompt"] = ""  # comparisons without a prompt
    cfg = small_config(tmp_path, write_jsonl(tmp_path / "pairs.jsonl", rows), **FAST)
    res = invoke("irl", cfg)
    assert res.exit_code == 0, res.output
    assert "val carved by pair" in res.output and "no prompt" in res.output
    df = pd.read_parquet(tmp_path / "runs/t/irl/pairs.parquet")
    counts = df["split"].value_counts().to_dict()
    assert counts["test"] == 60 and counts["val"] > 0 and counts["train"] + counts["val"] == 240
    given = {r["chosen"]: r["split"] for r in rows}
    assert all(given[c] == "train" for c in df.loc[df["split"] == "val", "chosen"])  # out of train
    res = invoke("evaluate", cfg)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "runs/t/evaluate/metrics.json").read_text())
    assert metrics["data"]["n_test"] == 60 and metrics["data"]["n_val"] == counts["val"]


@pytest.mark.parametrize("prompt", ["one prompt for all", None])
def test_constant_or_missing_prompts_are_split_by_pair(tmp_path, prompt):
    rows = make_pairs_records(100)
    for r in rows:
        if prompt is None:
            del r["prompt"]
        else:
            r["prompt"] = prompt
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), test_fraction=0.2, val_fraction=0.1)
    counts = ps.df["split"].value_counts().to_dict()
    assert counts == {"train": 72, "test": 20, "val": 8}
    assert ps.split_rule["test"]["rule"] == ps.split_rule["val"]["rule"] == "pair"
    why = "no prompt" if prompt is None else "1 distinct prompt"
    assert why in ps.split_rule["test"]["reason"]
    assert (ps.df["prompt"] == (prompt or "")).all()


def test_prompts_still_split_by_prompt_when_there_are_enough(tmp_path):
    rows = make_pairs_records(60)
    for i, r in enumerate(rows):
        r["prompt"] = f"shared prompt {i // 3}" if i < 45 else ""  # 15 prompts, 15 without
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), test_fraction=0.25, val_fraction=0.2)
    given = ps.df[ps.df["prompt"] != ""]
    assert (given.groupby("prompt")["split"].nunique() == 1).all()
    assert ps.split_rule["test"]["rule"] == "prompt"


# ---------------------------------------------------------------- case 5b: input that is not text
def test_a_non_utf8_byte_is_a_data_error_naming_the_line(tmp_path):
    lines = [json.dumps(r).encode() for r in make_pairs_records(40)]
    lines[6] = lines[6].replace(b"(6)", b"(caf\xe9)")  # latin-1, as a spreadsheet might save
    pairs = tmp_path / "latin1.jsonl"
    pairs.write_bytes(b"\n".join(lines) + b"\n")
    res = invoke("irl", small_config(tmp_path, pairs, **FAST))
    assert res.exit_code == 3, res.output
    assert "line 7" in res.output and "UTF-8" in res.output and "Traceback" not in res.output


def test_a_non_utf8_heldout_csv_names_the_line(tmp_path):
    p = tmp_path / "j.csv"
    p.write_bytes(b"comment_text,toxic\nhello,0\ncaf\xe9 noir,1\n")
    with pytest.raises(DataError, match="line 3.*UTF-8"):
        load_heldout(p)


def test_a_directory_as_pairs_or_heldout_is_a_data_error(tmp_path):
    (tmp_path / "pairs.jsonl").mkdir()
    res = invoke("irl", small_config(tmp_path, tmp_path / "pairs.jsonl", **FAST))
    assert res.exit_code == 3 and "is a directory" in res.output, res.output
    with pytest.raises(DataError, match="is a directory"):
        load_heldout(tmp_path / "pairs.jsonl")


# ------------------------------------------------------------------------ case 13: messages
def test_a_null_score_is_reported_at_its_file_line(tmp_path):
    rows = make_pairs_records(20)
    rows[2]["chosen_score"] = None
    text = [json.dumps(r) for r in rows]
    text.insert(1, "")  # a blank line: the bad record is on line 4
    pairs = tmp_path / "p.jsonl"
    pairs.write_text("\n".join(text) + "\n")
    res = invoke("irl", small_config(tmp_path, pairs, **FAST))
    assert res.exit_code == 3 and "line 4" in res.output, res.output
    assert "rows 2" not in res.output


def test_parquet_records_are_named_by_their_1_based_row(tmp_path):
    rows = make_pairs_records(20)
    rows[2]["chosen_score"] = None
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"\(row 3\)"):
        load_pairs(tmp_path / "p.parquet")


def test_an_infinite_score_is_not_called_null(tmp_path):
    rows = make_pairs_records(20)
    rows[5]["rejected_score"] = float("inf")  # json.dumps writes Infinity, json.loads reads it
    with pytest.raises(DataError) as e:
        load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    msg = str(e.value)
    assert "non-finite" in msg and "line 6" in msg and "null in" not in msg


def test_messages_show_plain_values_not_numpy_reprs(tmp_path):
    rows = make_pairs_records(2, with_split=True)  # one train, one test: no val can be carved
    with pytest.raises(DataError, match="cannot form") as e:
        load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert "np." not in str(e.value) and "'train': 1" in str(e.value)


# -------------------------------------------------------------- case 11: degenerate data flagged
def test_five_pairs_get_warnings_on_every_affected_metric(tmp_path):
    metrics, report = evaluated(tmp_path, make_pairs_records(5))
    assert metrics["data"]["n_test"] == 1
    for key in (
        "test/pairwise_accuracy",
        "test/auc",
        "test/f1",
        "test/accuracy",
        "test/starc",
        "test/epic",
        "dispersion/starc",
    ):
        ws = warned(metrics, key)
        assert ws and all(w["reason"] and w["sizes"] for w in ws), key
    assert any(w["sizes"].get("pairs") == 1 for w in warned(metrics, "test/pairwise_accuracy"))
    assert any(w["sizes"].get("test_outputs") == 2 for w in warned(metrics, "test/starc"))
    assert "## Warnings" in report and "test/auc" in report
    table1 = report.split("## Table 1")[1].split("##")[0]
    assert table1.count("†") >= 5 * len(metrics["methods"])  # every cell of Table 1


def test_identical_pairs_and_constant_ground_truth_are_flagged(tmp_path):
    rows = make_pairs_records(60)
    for r in rows:
        r["rejected"] = r["chosen"]
        r["chosen_score"] = r["rejected_score"] = 0.5
    metrics, report = evaluated(tmp_path, rows)
    kinds = {w["kind"] for w in metrics["warnings"]}
    assert {"identical_pairs", "constant_ground_truth"} <= kinds
    assert any("*" in w["metrics"] for w in metrics["warnings"])  # nothing was learned
    for agg in metrics["methods"].values():
        assert agg["mean"]["test/starc"] is None  # undefined, not a number
    assert "identical chosen and rejected" in report and "0.5 on every test output" in report


# ------------------------------------------------------------------------------ exit codes
def test_compare_naming_an_untrained_method_is_a_config_error(tmp_path):
    cfg = small_config(
        tmp_path,
        write_jsonl(tmp_path / "p.jsonl", make_pairs_records(40)),
        methods=["mm"],
        seeds=[0],
    )
    assert invoke("irl", cfg).exit_code == 0
    res = invoke("evaluate", cfg, "--set", "evaluate.compare=[[fa-mm-gt, mm]]")
    assert res.exit_code == 2 and "fa-mm-gt" in res.output, res.output


def test_the_bar_plots_skip_a_metric_a_method_never_has(tmp_path):
    from pipeline.evaluate.plots import plot_metric_bars, plot_seed_dispersion

    rows = {
        f"{m}/seed-{s}": {"method": m, "test/auc": 0.9, "test/starc": None if m == "mm" else 0.4}
        for m in ("mm", "me")
        for s in (0, 1)
    }
    metrics = {
        "run": "t",
        "models": rows,
        "methods": {
            m: {
                "seeds": [0, 1],
                "mean": {"test/auc": 0.9, "test/starc": None if m == "mm" else 0.4},
                "dispersion": {"starc": 0.1},
            }
            for m in ("mm", "me")
        },
    }
    assert plot_metric_bars(metrics, tmp_path / "bars.png").stat().st_size > 10_000
    assert plot_seed_dispersion(metrics, tmp_path / "sd.png").stat().st_size > 10_000
