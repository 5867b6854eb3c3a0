"""Appendix E (issue 10): the model-size experiment. The hub-name config validates and runs end
to end, through `fairl sweep`, on tiny local models of its architectures (GPT-NeoX, Llama,
Gemma3) built here; the sweep draws Figure 5 from each point's expert size."""

from __future__ import annotations

import json

from conftest import ROOT
from tiny_models import build_causal_lm, build_roberta_classifier
from typer.testing import CliRunner

from cli.main import app
from pipeline.config import load_config
from pipeline.stages.sweep import MODEL_SIZE_KEYS, expand, first_affected, model_size_points

runner = CliRunner()
HUB = ROOT / "configs" / "experiments" / "model-size.yaml"


def test_the_hub_config_sweeps_the_papers_four_models():
    cfg = load_config(HUB)
    grid = cfg.sweep.grid
    assert list(grid) == ["train_expert.base_model"] and list(grid)[0] in MODEL_SIZE_KEYS
    assert grid["train_expert.base_model"] == [
        "HuggingFaceTB/SmolLM2-135M",
        "google/gemma-3-270m",
        "HuggingFaceTB/SmolLM2-360M",
        "EleutherAI/pythia-410m",
    ]
    assert first_affected(list(grid)) == 0  # nothing is shared: every stage depends on the model
    points = expand(cfg, HUB, [], grid)  # each point validates as a config of its own
    assert [p[0] for p in points][0] == "train_expert.base_model=HuggingFaceTB--SmolLM2-135M"
    assert [p[2].train_expert.base_model for p in points] == grid["train_expert.base_model"]
    world = load_config(ROOT / "configs" / "experiments" / "model-size-world.yaml")
    assert list(world.sweep.grid) == ["world.hidden_size"]


def test_the_hub_config_runs_end_to_end_on_tiny_models_and_draws_figure_5(
    tmp_path, micro_world, monkeypatch
):
    monkeypatch.chdir(ROOT)
    models = [build_causal_lm(a, tmp_path / a) for a in ("gpt_neox", "llama", "gemma3")]
    clf = build_roberta_classifier(tmp_path / "classifier")
    small_ppo = {"steps": 1, "batch_size": 4, "mini_batch_size": 2}
    overrides = {
        "run.root": tmp_path / "runs",
        "ground_truth.model": clf,
        "prompts.source": f"[{micro_world.prompts}]",
        "prompts.max_eval_prompts": 4,
        "train_expert.ppo": json.dumps(small_ppo),
        "train_expert.generation.max_new_tokens": 4,
        "make_pairs.generation.max_new_tokens": 4,
        "make_pairs.n_pairs": 24,
        "irl.methods": "[me, fa-me-margin]",
        "irl.seeds": "[0, 1]",
        "irl.max_epochs": 2,
        "irl.fa.rounds": 1,
    }
    args = [
        "sweep",
        str(HUB),
        "-q",
        "--grid",
        "train_expert.base_model=" + ",".join(map(str, models)),
    ]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    root = tmp_path / "runs" / "model-size"
    points = sorted(p for p in (root / "points").iterdir() if p.is_dir())
    assert len(points) == 3
    for p in points:
        for stage in ("train_expert", "make_pairs", "irl", "evaluate"):
            manifest = json.loads((p / stage / "manifest.json").read_text())
            assert manifest["status"] == "complete", (p.name, stage)
        assert not (p / "re_rlhf").exists()  # Appendix E needs no re-RLHF
    sizes = model_size_points(points)
    assert [s["params"] for s in sizes] == sorted(s["params"] for s in sizes)
    assert len({s["params"] for s in sizes}) == 3  # the three architectures differ in size
    assert all(len(s["methods"]["fa-me-margin"]["test/starc"]) == 2 for s in sizes)
    assert (root / "comparison" / "model_size.png").stat().st_size > 10_000
