"""`fairl sweep` (issue 10): grid expansion and naming, stages shared upstream of the swept
keys, resume without recomputing finished points, and the comparison it writes."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import make_pairs_records, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app
from pipeline.errors import ConfigError
from pipeline.stages.sweep import first_affected, parse_grid, point_name

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_grid_parsing_naming_and_which_stages_a_key_changes():
    assert parse_grid(["irl.lr=1e-3,3e-3", "irl.head=linear,mlp"]) == {
        "irl.lr": [0.001, 0.003],
        "irl.head": ["linear", "mlp"],
    }
    assert point_name({"irl.pair_mix": 0.1, "irl.head": "mlp"}) == "irl.pair_mix=0.1,irl.head=mlp"
    assert (
        point_name({"train_expert.base_model": "org/model"}) == "train_expert.base_model=org--model"
    )
    assert first_affected(["irl.lr", "evaluate.near_tie"]) == 2  # irl onwards
    assert first_affected(["evaluate.near_tie"]) == 3
    assert first_affected(["prompts.eval_fraction"]) == 0  # every stage reads the prompts
    with pytest.raises(ConfigError, match="cannot sweep"):
        first_affected(["run.name"])
    with pytest.raises(ConfigError, match="not key=v1,v2"):
        parse_grid(["irl.lr"])


def manifests(root):
    return {
        str(p.relative_to(root)): json.loads(p.read_text())["started_at"]
        for p in sorted(root.rglob("manifest.json"))
        if not p.parent.parent.is_symlink()
    }


def test_a_sweep_shares_upstream_stages_resumes_and_compares(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", make_pairs_records(120))
    cfg = small_config(tmp_path, pairs, methods=["mm"], seeds=[0, 1], n_pairs=20)
    doc = yaml.safe_load(cfg.read_text())
    doc["run"]["name"] = "mix"
    doc["sweep"] = {"grid": {"irl.pair_mix": [0.5, 0.75]}}
    cfg.write_text(yaml.safe_dump(doc))
    res = invoke("sweep", cfg, "-q")
    assert res.exit_code == 0, res.output
    root = tmp_path / "runs" / "mix"
    names = ["irl.pair_mix=0.5", "irl.pair_mix=0.75"]
    assert sorted(p.name for p in (root / "points").iterdir() if p.is_dir()) == names
    for name, k in zip(names, (10, 15), strict=True):
        used = json.loads((root / "points" / name / "irl/summary.json").read_text())
        assert used["pairs"]["split"]["train"]["drawn"]["toxic_to_nontoxic"] == k
    result = json.loads((root / "comparison/comparison.json").read_text())
    assert list(result["differences"]) == ["irl:irl.pair_mix"]
    assert (root / "comparison/sweep.png").stat().st_size > 10_000

    # re-run: nothing recomputed; a lost point is redone alone
    before = manifests(root / "points")
    assert invoke("sweep", cfg, "-q").exit_code == 0
    assert manifests(root / "points") == before
    import shutil

    shutil.rmtree(root / "points" / names[1] / "evaluate")
    assert invoke("sweep", cfg, "-q").exit_code == 0
    after = manifests(root / "points")
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {f"{names[1]}/evaluate/manifest.json"}


def test_a_sweep_over_evaluate_trains_irl_once(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", make_pairs_records(80))
    cfg = small_config(tmp_path, pairs, methods=["mm"], seeds=[0])
    res = invoke("sweep", cfg, "-q", "--grid", "evaluate.near_tie=0.05,0.1")
    assert res.exit_code == 0, res.output
    root = tmp_path / "runs" / "t"
    assert (root / "shared" / "irl" / "manifest.json").is_file()
    for name in ("evaluate.near_tie=0.05", "evaluate.near_tie=0.1"):
        assert (root / "points" / name / "irl").is_symlink()
        assert (root / "points" / name / "evaluate" / "metrics.json").is_file()
    result = json.loads((root / "comparison/comparison.json").read_text())
    assert list(result["differences"]) == ["evaluate:evaluate.near_tie"]


def test_a_sweep_refuses_colliding_points_bad_values_and_keys_of_stages_it_does_not_run(tmp_path):
    pairs = write_jsonl(tmp_path / "p.jsonl", make_pairs_records(60))
    cfg = small_config(tmp_path, pairs, methods=["mm"], seeds=[0])
    res = invoke("sweep", cfg, "-q", "--grid", "irl.lr=1e-3,0.001")
    assert res.exit_code == 2 and "share the directory name" in res.output
    res = invoke("sweep", cfg, "-q", "--grid", "irl.seeds=[0,1],[2]")
    assert res.exit_code == 2 and "is not YAML" in res.output
    res = invoke("sweep", cfg, "-q", "--grid", "re_rlhf.eval_every=1,2")
    assert res.exit_code == 2 and "does not run" in res.output
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_a_sweep_over_irl_trains_the_expert_and_makes_the_pairs_once(tmp_path, micro_world):
    from conftest import micro_config

    cfg = micro_config(tmp_path, irl__methods=["mm"], irl__max_epochs=5)
    doc = yaml.safe_load(cfg.read_text())
    del doc["re_rlhf"]
    doc["sweep"] = {"grid": {"irl.lr": [1e-3, 3e-3]}}
    cfg.write_text(yaml.safe_dump(doc))
    res = invoke("sweep", cfg, "-q")
    assert res.exit_code == 0, res.output
    root = tmp_path / "runs" / "m"
    shared = sorted(p.name for p in (root / "shared").iterdir() if not p.name.startswith("."))
    assert shared == ["make_pairs", "train_expert"]
    for name in ("irl.lr=0.001", "irl.lr=0.003"):
        point = root / "points" / name
        for stage in ("train_expert", "make_pairs"):  # linked, not recomputed
            assert (point / stage).is_symlink()
            assert (point / stage).resolve() == (root / "shared" / stage).resolve()
        for stage in ("irl", "evaluate"):
            assert not (point / stage).is_symlink()
            assert json.loads((point / stage / "manifest.json").read_text())["status"] == "complete"
    result = json.loads((root / "comparison" / "comparison.json").read_text())
    assert list(result["differences"]) == ["irl:irl.lr"]
    assert isinstance(result["test_pairs_sha256"], str)  # one set of pairs: comparable
