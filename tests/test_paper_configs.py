"""The paper configs load and run one step of every stage when their hub names are replaced by
tiny local models of the same architectures (GPT-NeoX, Llama, Gemma3 policies; a RoBERTa
classifier) built here: the real code path handles their tokenizers and padding."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from tiny_models import build_causal_lm, build_roberta_classifier
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


@pytest.mark.parametrize(
    "config,arch",
    [
        ("paper-pythia-410m.yaml", "gpt_neox"),
        ("paper-smollm2-360m.yaml", "llama"),
        ("paper-gemma3-270m.yaml", "gemma3"),
    ],
)
def test_paper_config_runs_every_stage_on_a_tiny_model_of_its_architecture(
    tmp_path, micro_world, monkeypatch, config, arch
):
    monkeypatch.chdir(ROOT)
    policy = build_causal_lm(arch, tmp_path / arch)
    clf = build_roberta_classifier(tmp_path / "classifier")
    small_ppo = {"steps": 1, "batch_size": 4, "mini_batch_size": 2}
    overrides = {
        "run.root": tmp_path / "runs",
        "train_expert.base_model": policy,
        "re_rlhf.base_model": policy,
        "ground_truth.model": clf,
        "prompts.source": f"[{micro_world.prompts}]",
        "prompts.max_eval_prompts": 4,
        "train_expert.ppo": json.dumps(small_ppo),
        "re_rlhf.ppo": json.dumps(small_ppo),
        "train_expert.generation.max_new_tokens": 4,
        "re_rlhf.generation.max_new_tokens": 4,
        "make_pairs.generation.max_new_tokens": 4,
        "make_pairs.n_pairs": 24,
        "irl.seeds": "[0]",
        "irl.max_epochs": 2,
        "irl.fa.rounds": 1,
        "re_rlhf.eval_every": 1,
    }
    args = ["run", f"configs/{config}"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    res = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / config.removesuffix(".yaml")
    for stage in ("train_expert", "make_pairs", "irl", "evaluate", "re_rlhf"):
        assert json.loads((run / stage / "manifest.json").read_text())["status"] == "complete", (
            stage
        )
    # The expert kept its tokenizer's special tokens, with a pad token distinct from EOS.
    tok_cfg = json.loads((run / "train_expert" / "model" / "tokenizer_config.json").read_text())
    assert tok_cfg.get("pad_token") not in (None, tok_cfg.get("eos_token"))
