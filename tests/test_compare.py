"""`fairl compare` (issue 10): runs on the same test pairs, what differs between them, and the
refusal of runs that evaluated different pairs."""

from __future__ import annotations

import json

from conftest import make_pairs_records, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def evaluated_run(tmp_path, name: str, pairs, *overrides: str):
    (tmp_path / name).mkdir()
    cfg = small_config(tmp_path / name, pairs, methods=["mm", "fa-mm-gt"], fa={"rounds": 3})
    for stage in ("irl", "evaluate"):
        res = invoke(stage, cfg, "--set", f"run.name={name}", *overrides)
        assert res.exit_code == 0, res.output
    return tmp_path / name / "runs" / name


def test_compare_names_the_one_key_that_differs_and_tabulates_both(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", make_pairs_records(80))
    a = evaluated_run(tmp_path, "a", pairs)
    b = evaluated_run(tmp_path, "b", pairs, "--set", "irl.lr=0.003")
    res = invoke("compare", a, b, "--out", tmp_path / "cmp")
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert list(result["differences"]) == ["irl:irl.lr"]
    assert result["differences"]["irl:irl.lr"] == {"a": 0.001, "b": 0.003}
    for key in ("test/f1", "test/auc", "test/starc", "train/starc"):
        for method in ("mm", "fa-mm-gt"):
            row = result["metrics"][key][method]
            for run, path in (("a", a), ("b", b)):
                metrics = json.loads((path / "evaluate/metrics.json").read_text())
                assert row[run]["mean"] == metrics["methods"][method]["mean"][key]
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| `irl:irl.lr` | `0.001` | `0.003` |" in report
    assert "## Test STARC (Eq. 4) ↓" in report and "## Training STARC (Eq. 4) ↓" in report


def test_compare_refuses_runs_on_different_test_pairs_and_writes_nothing(tmp_path):
    a = evaluated_run(tmp_path, "a", write_jsonl(tmp_path / "p.jsonl", make_pairs_records(80)))
    other = write_jsonl(tmp_path / "q.jsonl", make_pairs_records(80, seed=1))
    b = evaluated_run(tmp_path, "b", other)
    res = invoke("compare", a, b, "--out", tmp_path / "cmp")
    assert res.exit_code == 3 and "did not evaluate the same test pairs" in res.output
    assert not (tmp_path / "cmp").exists()
    res = invoke("compare", a, tmp_path / "nowhere", "--out", tmp_path / "cmp")
    assert res.exit_code == 4 and "no published evaluate" in res.output


def test_compare_never_replaces_a_run_or_a_foreign_directory(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", make_pairs_records(80))
    a = evaluated_run(tmp_path, "a", pairs)
    b = evaluated_run(tmp_path, "b", pairs, "--set", "irl.lr=0.003")
    for out in (a, a.parent):  # a run, and the directory holding it
        res = invoke("compare", a, b, "--out", out)
        assert res.exit_code == 1 and "would delete it" in res.output, res.output
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    res = invoke("compare", a, b, "--out", foreign)
    assert res.exit_code == 1 and "holds no comparison.json" in res.output
    assert (foreign / "keep.txt").read_text() == "x"
    assert (a / "evaluate" / "metrics.json").is_file()
    # an earlier comparison is replaced
    for _ in range(2):
        assert invoke("compare", a, b, "--out", tmp_path / "cmp").exit_code == 0


def test_the_same_texts_under_another_ground_truth_are_not_comparable(tmp_path):
    rows = make_pairs_records(80)
    a = evaluated_run(tmp_path, "a", write_jsonl(tmp_path / "p.jsonl", rows))
    for r in rows:
        r["chosen_score"], r["rejected_score"] = r["chosen_score"] / 2, r["rejected_score"] / 2
    b = evaluated_run(tmp_path, "b", write_jsonl(tmp_path / "q.jsonl", rows))
    res = invoke("compare", a, b, "--out", tmp_path / "cmp")
    assert res.exit_code == 3 and "did not evaluate the same test pairs" in res.output
