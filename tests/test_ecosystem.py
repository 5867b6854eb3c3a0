"""fairl in the rest of the ecosystem (issue 12): models shaped like the hub's, rewards and pairs
that other libraries load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import FairlError


def test_the_pad_token_never_shrinks_a_pythia_shaped_embedding_matrix(tmp_path):
    """Pythia's tokenizer has 50277 tokens and no pad; its embedding matrix has 50304 rows. PAD
    takes a spare row: both matrices keep 50304 rows and every trained row is unchanged."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from pipeline.policy.models import load_policy

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, 50277)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )  # fmt: skip
    assert len(tok) == 50277 and tok.pad_token is None
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=50304, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
            intermediate_size=16, max_position_embeddings=32, rotary_pct=0.25,
            bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
        )
    )  # fmt: skip
    tok.save_pretrained(tmp_path / "pythia")
    model.save_pretrained(tmp_path / "pythia")
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()

    loaded, ltok = load_policy(str(tmp_path / "pythia"))
    assert ltok.pad_token_id == 50277 != ltok.eos_token_id
    assert loaded.get_input_embeddings().weight.shape == (50304, 8)
    assert loaded.get_output_embeddings().weight.shape == (50304, 8)
    assert torch.equal(loaded.get_input_embeddings().weight, before_in)
    assert torch.equal(loaded.get_output_embeddings().weight, before_out)
    assert loaded.config.pad_token_id == 50277 and loaded.config.vocab_size == 50304
    # sampling never yields PAD or a spare row (no text decodes to them)
    from pipeline.policy.models import sample

    with torch.no_grad():
        loaded.get_output_embeddings().weight[50277:] = 0.0
        loaded.get_output_embeddings().weight[50277:, 0] = 100.0  # make the spare rows likely
    *_, resp, mask, _ = sample(loaded, ltok, ["w1 w2", "w3"], 6, 1.0, 1.0, seed=0)
    assert (resp[mask.bool()] < 50277).all() and mask.any()


# ---------------------------------------------------------------------------------------- CLI
def _one_reward(tmp_path: Path) -> Path:
    """`fairl irl` of one Max-Entropy seed on 80 small pairs: its reward directory."""
    import yaml
    from conftest import make_pairs_records, small_config, write_jsonl

    cfg = small_config(tmp_path, write_jsonl(tmp_path / "p.jsonl", make_pairs_records(80)),
                       methods=["me"])  # fmt: skip
    doc = yaml.safe_load(cfg.read_text())
    doc["irl"]["seeds"] = [0]
    cfg.write_text(yaml.safe_dump(doc))
    assert _cli("irl", cfg, "-q").exit_code == 0
    return tmp_path / "runs" / "t" / "irl" / "rewards" / "me" / "seed-0"


def _cli(*args):
    from typer.testing import CliRunner

    from cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_version_env_and_completion():
    from importlib import metadata

    import yaml

    res = _cli("--version")
    assert res.exit_code == 0 and res.output.strip() == f"fairl {metadata.version('fairl')}"
    res = _cli("env")
    assert res.exit_code == 0, res.output
    env = yaml.safe_load(res.output)
    assert env["packages"]["torch"] == torch.__version__
    assert env["devices"]["cuda"] == torch.cuda.is_available()
    assert {"fairl", "hf_hub"} <= set(env["caches"])
    assert "--install-completion" in _cli("--help").output


def test_help_lists_every_key_with_yaml_defaults():
    """Each stage's --help names the shared sections' keys too, and prints defaults as YAML: a
    default copied into --set means what it says (`null`, never the path 'None')."""
    from pipeline.config import ExperimentConfig, describe_section, load_config

    for command, section in (("irl", "irl"), ("evaluate", "evaluate"), ("re-rlhf", "re_rlhf")):
        out = " ".join(_cli(command, "--help").output.split())
        for shared in ("run.root", "world.kind", "ground_truth.kind", "prompts.source"):
            assert f"{shared} =" in out, (command, shared)
        cls = ExperimentConfig.model_fields[section].annotation
        for line in describe_section(cls, section):
            assert line.split(" = ")[0] + " =" in out, (command, line)
        assert "= None" not in out and "= 'None'" not in out
    out = " ".join(_cli("evaluate", "--help").output.split())
    assert "evaluate.heldout = null:" in out
    # copied back through --set, the printed default is the default
    assert load_config(None, ["evaluate.heldout=null"]).evaluate.heldout is None


def test_run_needs_a_config_or_defaults(tmp_path):
    res = _cli("run")
    assert res.exit_code == 2 and "needs a config file" in res.output and "--defaults" in res.output
    # --defaults goes on, here to the first stage's missing input
    stages = ("--set", "run.stages=[evaluate]")
    res = _cli("run", "--defaults", "--set", f"run.root={tmp_path}", *stages)
    assert res.exit_code == 4 and "fairl irl" in res.output, res.output
    res = _cli("run", "--defaults", "configs/toy.yaml")
    assert res.exit_code == 2 and "a config file and --defaults" in res.output


# -------------------------------------------------------------------------------- pairs for TRL
def test_trl_columns_share_a_prompt_only_when_both_sides_answer_it():
    import pandas as pd

    from pipeline.data.pairs import trl_columns

    same = pd.DataFrame({"prompt": ["p1 ", "p2 "], "chosen": ["a", "b"], "rejected": ["c", "d"]})
    assert trl_columns(same).to_dict("list") == {
        "prompt": ["p1 ", "p2 "], "chosen": ["a", "b"], "rejected": ["c", "d"]
    }  # fmt: skip
    per_side = same.assign(chosen_prompt=["p1 ", None], rejected_prompt=["q1 ", "p2 "])
    assert trl_columns(per_side).to_dict("list") == {
        "chosen": ["p1 a", "p2 b"], "rejected": ["q1 c", "p2 d"]
    }  # fmt: skip


def test_published_pairs_train_trl_reward_and_dpo_trainers(tmp_path, micro_world):
    """make-pairs on the micro world publishes train/test apart (parquet per split and a
    DatasetDict); TRL's RewardTrainer and DPOTrainer each take a step on `train` as it is; the
    expert's generation_config is the sampling fairl evaluated it with."""
    import pandas as pd
    from conftest import micro_config
    from datasets import load_from_disk
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        GenerationConfig,
    )
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    cfg = micro_config(tmp_path)
    for command in ("train-expert", "make-pairs"):
        res = _cli(command, cfg, "-q")
        assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "m"
    gen = GenerationConfig.from_pretrained(run / "train_expert" / "model")
    assert gen.do_sample and gen.top_k == 0 and gen.max_new_tokens == 12
    assert gen.temperature == 1.0 and gen.suppress_tokens == [gen.pad_token_id]

    pairs = pd.read_parquet(run / "make_pairs" / "pairs.parquet")
    ds = load_from_disk(str(run / "make_pairs" / "trl"))
    assert set(ds) == {"train", "test"} and ds["train"].column_names == ["prompt", "chosen",
                                                                          "rejected"]  # fmt: skip
    for split in ("train", "test"):
        part = pairs[pairs["split"] == split]
        assert ds[split]["chosen"] == part["chosen"].tolist()
        assert pd.read_parquet(run / "make_pairs" / f"{split}.parquet")["prompt"].tolist() == (
            part["prompt"].tolist()
        )
    train = ds["train"].select(range(8))
    base = str(micro_world.base_lm)
    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = tok.pad_token or tok.eos_token
    common = {"output_dir": str(tmp_path / "trl"), "max_steps": 1, "per_device_train_batch_size": 4,
              "use_cpu": True, "bf16": False, "report_to": [], "save_strategy": "no",
              "logging_steps": 1}  # fmt: skip

    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    out = RewardTrainer(rm, RewardConfig(**common), train_dataset=train, processing_class=tok)
    assert out.train().global_step == 1

    lm = AutoModelForCausalLM.from_pretrained(base)
    out = DPOTrainer(lm, args=DPOConfig(**common), train_dataset=train, processing_class=tok)
    assert out.train().global_step == 1


# ------------------------------------------------------------------------------------- tracking
def test_report_to_tensorboard_writes_events_tensorboard_reads(tmp_path, micro_world):
    """run.report_to=tensorboard: PPO, IRL and evaluate scalars in event files that
    tensorboard's own reader loads; metrics.jsonl is still written."""
    from conftest import micro_config
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = micro_config(tmp_path, run__report_to="tensorboard", irl__methods=["me"])
    for command in ("train-expert", "make-pairs", "irl", "evaluate"):
        res = _cli(command, cfg, "-q")
        assert res.exit_code == 0, res.output
    run = tmp_path / "runs" / "m"

    def tags(stage: str) -> set[str]:
        events = list((run / stage / "tracking").rglob("events.out.tfevents.*"))
        assert events, f"{stage} wrote no event file"
        out = set()
        for e in events:
            acc = EventAccumulator(str(e))
            acc.Reload()
            out |= set(acc.Tags()["scalars"])
        return out

    assert {"ppo/kl", "ppo/score", "ppo/pg_loss", "ppo/entropy"} <= tags("train_expert")
    assert "method=me/seed=0/irl/val_loss" in tags("irl")
    assert "method=me/evaluate/test/auc" in tags("evaluate")
    assert (run / "irl" / "metrics.jsonl").stat().st_size > 0


def test_report_to_refuses_none_with_a_tracker():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    assert load_config(None, ["run.report_to=tensorboard"]).run.trackers == ["tensorboard"]
    assert load_config(None, []).run.trackers == []
    with pytest.raises(ConfigError, match="none"):
        load_config(None, ["run.report_to=[none, wandb]"])


def test_report_to_a_tracker_that_is_not_installed_fails_at_load(monkeypatch):
    """Before any stage runs, with what to install (not when the first stage starts it)."""
    import importlib.util

    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install wandb"):
        load_config(None, ["run.report_to=[tensorboard, wandb]"])


def test_a_reward_as_a_trl_reward_function_drives_a_grpo_step(tmp_path, micro_world):
    """pipeline.reward_function(path) scores like the reward, and GRPOTrainer takes a step with
    it as its only reward function (the step's logged reward is the function's mean)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    import pipeline

    path = _one_reward(tmp_path)
    f = pipeline.reward_function(path)
    texts = ["you are an idiot", "have a lovely day"]
    got = f(prompts=["a", "b"], completions=texts)
    # the same reward; float32 embeddings of another batch differ in the last bits
    assert got == pytest.approx(pipeline.load_reward(path).score(texts).tolist(), abs=1e-5)
    one = f(completions=[[{"role": "assistant", "content": texts[0]}]])
    assert one == pytest.approx(got[:1], abs=1e-5)

    base = str(micro_world.base_lm)
    tok = AutoTokenizer.from_pretrained(base)
    tok.pad_token = tok.pad_token or tok.eos_token
    seen = []

    def spy(prompts=None, completions=None, **kw):
        out = f(prompts=prompts, completions=completions, **kw)
        seen.extend(out)
        return out

    spy.__name__ = f.__name__
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        reward_funcs=[spy],
        args=GRPOConfig(
            output_dir=str(tmp_path / "grpo"),
            max_steps=1,
            use_cpu=True,
            bf16=False,
            disable_dropout=True,
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
        ),  # fmt: skip
        train_dataset=Dataset.from_dict({"prompt": ["the weather is", "you are"] * 4}),
        processing_class=tok,
    )
    assert trainer.train().global_step == 1 and len(seen) >= 4
    logged = [r for r in trainer.state.log_history if "reward" in r]
    (row,) = logged  # TRL names the function in its log, and its mean is the step's reward
    assert abs(row[f"rewards/{f.__name__}/mean"] - sum(seen) / len(seen)) < 1e-6


# ---------------------------------------------------------------------------- rewards on the hub
def test_push_then_load_by_repo_id_from_a_local_hub_cache(tmp_path, monkeypatch):
    """`fairl push` uploads the reward, its export and a model card (nothing written into the
    run); the same files laid out as the hub cache holds them load by repo id, offline."""
    import shutil

    import huggingface_hub
    from huggingface_hub import constants

    import pipeline

    path = _one_reward(tmp_path)
    card = (path / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fairl\n") and "| method | me |" in card
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    uploaded, commits = {}, []

    class FakeApi:  # the repo held an earlier push's files
        def create_repo(self, repo_id, **kw):
            uploaded["repo"] = repo_id

        def list_repo_files(self, repo_id, **kw):
            return [".gitattributes", "LICENSE", "reward.json", "sentence-transformer/old.bin"]

        def create_commit(self, repo_id, operations, **kw):
            commits.append([type(op).__name__ for op in operations])
            for op in operations:
                if isinstance(op, huggingface_hub.CommitOperationDelete):
                    uploaded[op.path_in_repo] = None
                else:
                    src = op.path_or_fileobj
                    uploaded[op.path_in_repo] = (
                        src if isinstance(src, bytes) else Path(src).read_bytes()
                    )
            return "https://hf.co/me/toxicity-reward/commit/0"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    res = _cli("push", path, "me/toxicity-reward")
    assert res.exit_code == 0 and "commit" in res.output, res.output
    assert uploaded["repo"] == "me/toxicity-reward"
    assert {"reward.json", "reward.safetensors", "README.md"} <= set(uploaded)
    assert any(k.startswith("sentence-transformer/") for k in uploaded)
    assert uploaded["README.md"].decode() == card
    assert len(commits) == 1  # one commit: the files, the card and the deletions
    assert uploaded["sentence-transformer/old.bin"] is None  # an earlier push's export file
    assert ".gitattributes" not in uploaded and "LICENSE" not in uploaded  # not fairl's
    assert uploaded["reward.json"] == (path / "reward.json").read_bytes()
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before

    # the hub cache layout: models--<org>--<name>/snapshots/<commit>/..., refs/main
    cache = tmp_path / "hub"
    snap = cache / "models--me--toxicity-reward" / "snapshots" / ("0" * 40)
    for rel in ("reward.json", "reward.safetensors", "README.md"):
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        (snap / rel).write_bytes(uploaded[rel])
    (cache / "models--me--toxicity-reward" / "refs").mkdir()
    (cache / "models--me--toxicity-reward" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    got = pipeline.load_reward("hf:me/toxicity-reward")
    texts = ["you are an idiot", "have a lovely day"]
    assert torch.equal(got.score(texts), pipeline.load_reward(path).score(texts))
    shutil.rmtree(cache)
    with pytest.raises(FairlError, match="cannot be fetched"):
        pipeline.load_reward("hf:me/toxicity-reward")
    # a path that does not exist is never taken for a repo id
    with pytest.raises(FairlError, match="not a fairl reward directory"):
        pipeline.load_reward("me/toxicity-reward")


def test_a_hub_classifier_and_a_hub_reward_model_as_re_rlhf_rewards(tmp_path, micro_world):
    """`hf:<model>#<label>` (a classifier's class logit) fine-tunes the base LM in re-rlhf like
    any reward; `hf:<model>` is a one-output reward model's logit; a classifier named without
    its label is a config error that lists the labels."""
    import json

    from conftest import micro_config
    from tiny_models import build_roberta_classifier

    from pipeline.scorers import HubRewardScorer, reward_scorer

    clf = build_roberta_classifier(tmp_path / "clf")
    rm = build_roberta_classifier(tmp_path / "rm", labels=("score",))
    texts = ["you are an idiot", "have a lovely day"]
    one = reward_scorer(f"hf:{rm}", None).score(texts).reward
    assert one.shape == (2,) and one[0] != one[1]
    with pytest.raises(FairlError, match=r"'neutral', 'toxic'"):
        HubRewardScorer(f"hf:{clf}")
    cfg = micro_config(tmp_path, re_rlhf__rewards={"clf": f"hf:{clf}#neutral"})
    res = _cli("re-rlhf", cfg, "-q")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "runs/m/re_rlhf/summary.json").read_text())
    assert summary["clf"]["reward"] == f"hf:{clf}#neutral"
    assert summary["clf"]["final_kl"] > 0  # it moved the policy


def test_hub_download_bars_stay_on_and_transformers_loading_bars_go(monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    import cli.main as cli_main

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    try:
        cli_main._setup_logging(quiet=True)
        assert not are_progress_bars_disabled()  # downloads show progress
        assert not hf_logging.is_progress_bar_enabled()  # weight loading does not
    finally:
        hf_logging.enable_progress_bar()
        enable_progress_bars()


def test_evaluate_scores_extra_rewards_beside_the_recovered_ones(tmp_path):
    """evaluate.rewards: a hub classifier and a reward directory are methods of their own; the
    run's own reward named again gets exactly its own metrics."""
    import json

    import yaml
    from conftest import make_pairs_records, small_config, write_jsonl
    from tiny_models import build_roberta_classifier

    clf = build_roberta_classifier(tmp_path / "clf")
    cfg = small_config(tmp_path, write_jsonl(tmp_path / "p.jsonl", make_pairs_records(120)),
                       methods=["me"])  # fmt: skip
    doc = yaml.safe_load(cfg.read_text())
    doc["irl"]["seeds"] = [0]
    run = tmp_path / "runs" / "t"
    doc["evaluate"] = {
        "rewards": {"clf": f"hf:{clf}#neutral", "again": str(run / "irl/rewards/me/seed-0")}
    }
    cfg.write_text(yaml.safe_dump(doc))
    assert _cli("irl", cfg, "-q").exit_code == 0
    res = _cli("evaluate", cfg, "-q")
    assert res.exit_code == 0, res.output
    m = json.loads((run / "evaluate" / "metrics.json").read_text())["methods"]
    assert {"me", "clf", "again"} <= set(m)
    for key in ("test/auc", "test/f1", "test/pairwise_accuracy"):
        assert m["again"]["mean"][key] == pytest.approx(m["me"]["mean"][key], abs=1e-6), key
    assert 0 <= m["clf"]["mean"]["test/auc"] <= 1
    # a name irl already uses is refused before any work
    res = _cli("evaluate", cfg, "--set", 'evaluate.rewards={me: "hf:x/y"}', "--force", "-q")
    assert res.exit_code == 2 and "a method irl trained" in res.output, res.output


# ------------------------------------------------------------------------- device and precision
def test_placement_follows_run_device_and_precision(tmp_path, monkeypatch):
    """resolve_placement: auto is the CPU in float32 here; a (faked) bf16 GPU gets cuda + bf16
    + TF32; cuda without a GPU is a config error. Every model a stage loads (policies, the
    classifier, hub reward models, the encoder) follows the placement: checked on `meta`."""
    from tiny_models import build_causal_lm, build_roberta_classifier

    from pipeline import runtime
    from pipeline.embed import Embedder
    from pipeline.errors import ConfigError
    from pipeline.policy.models import load_policy
    from pipeline.scorers import HFClassifierScorer, HubRewardScorer

    assert runtime.resolve_placement() == runtime.Placement(torch.device("cpu"), torch.float32)
    with pytest.raises(ConfigError, match="no GPU"):
        runtime.resolve_placement("cuda")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            m.setattr(torch.cuda, "is_bf16_supported", lambda: True)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            want = runtime.Placement(torch.device("cuda"), torch.bfloat16)
            assert runtime.resolve_placement() == want
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
            assert runtime.resolve_placement("auto", "fp32").dtype == torch.float32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32

    lm = build_causal_lm("gpt_neox", tmp_path / "lm")
    clf = build_roberta_classifier(tmp_path / "clf")
    monkeypatch.setattr(runtime, "_PLACEMENT", runtime.Placement(torch.device("meta"),
                                                                 torch.bfloat16))  # fmt: skip

    def where(model):
        return {(p.device.type, p.dtype) for p in model.parameters()}

    assert where(load_policy(str(lm))[0]) == {("meta", torch.float32)}  # trained: float32
    assert where(load_policy(str(lm), inference=True)[0]) == {("meta", torch.bfloat16)}
    assert where(HFClassifierScorer(str(clf), "neutral", "toxic").model) == {
        ("meta", torch.bfloat16)
    }
    assert where(HubRewardScorer(f"hf:{clf}#toxic").model) == {("meta", torch.bfloat16)}
    enc = Embedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir=tmp_path / "cache")
    assert {d for d, _ in where(enc.model)} == {"meta"}
