"""Config validation and the pairs / held-out schemas: good input loads, bad input says what to
do."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import ROOT, make_pairs_records, write_jsonl

from pipeline.config import METHOD_TABLE, METHODS, IRLSection, load_config, method_label
from pipeline.data.jigsaw import load_heldout
from pipeline.data.pairs import load_pairs
from pipeline.errors import ConfigError, DataError
from pipeline.irl.methods import method_spec


# ------------------------------------------------------------------------------ config
def test_defaults_are_the_papers():
    cfg = load_config()
    irl = cfg.irl
    assert (irl.margin, irl.tau, irl.lr, irl.batch_size, irl.max_epochs) == (
        0.8,
        1.0,
        1e-3,
        32,
        800,
    )
    assert irl.fa.lambda_0 == 10.0 and irl.fa.rounds == 100
    assert (irl.fa.bottom_k_start, irl.fa.bottom_k_end) == (0.2, 0.0)
    assert irl.embed.encoder.endswith("all-MiniLM-L6-v2") and irl.head == "mlp"
    assert list(irl.methods) == ["mm", "me", "fa-mm-gt", "fa-me-gt", "fa-mm-margin", "fa-me-margin"]


def test_unknown_key_names_the_key_and_the_valid_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("irl:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert "irl.lrr" in msg and "lr" in msg and "batch_size" in msg


def test_unknown_nested_and_section_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"irl\.fa\.lambda0.*lambda_0"):
        load_config(overrides=["irl.fa.lambda0=3"])
    with pytest.raises(ConfigError, match=r"'irll'.*irl"):
        load_config(overrides=["irll.lr=3"])


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"irl\.max_epochs"):
        load_config(overrides=["irl.max_epochs=lots"])
    with pytest.raises(ConfigError, match=r"irl\.lr.*greater than 0"):
        load_config(overrides=["irl.lr=-1"])
    with pytest.raises(ConfigError, match="irl.methods"):
        load_config(overrides=["irl.methods=[mm, maxent]"])


def test_overrides_parse_yaml_values_and_win_over_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  name: a\nirl:\n  seeds: [1]\n")
    cfg = load_config(p, ["irl.seeds=[0, 4]", "run.name=b", "irl.fa.rounds=7", "irl.head=linear"])
    assert cfg.irl.seeds == [0, 4] and cfg.run.name == "b" and cfg.irl.fa.rounds == 7
    assert cfg.irl.head == "linear"
    assert cfg.stages_to_run() == ["irl"]  # sections named in the file


def test_failure_losses_must_be_stricter():
    with pytest.raises(ConfigError, match="margin_fail"):
        load_config(overrides=["irl.fa.margin_fail=0.5"])
    load_config(overrides=["irl.fa.margin_fail=0.5", "irl.fa.fail_weight=2"])  # weight instead


def test_the_method_table_gives_names_help_labels_and_checks():
    assert METHODS == ("mm", "me", "fa-mm-gt", "fa-me-gt", "fa-mm-margin", "fa-me-margin")
    assert tuple(METHOD_TABLE) == (*METHODS, "mm-matched", "me-matched")
    assert list(IRLSection().methods) == list(METHODS)  # the matched baselines are opt-in
    assert [(m.objective, m.identified_by, m.baseline) for m in METHOD_TABLE.values()] == [
        ("mm", "none", None),
        ("me", "none", None),
        ("mm", "ground-truth", "mm"),
        ("me", "ground-truth", "me"),
        ("mm", "margin", "mm"),
        ("me", "margin", "me"),
        ("mm", "none", None),
        ("me", "none", None),
    ]
    help_text = IRLSection.model_fields["methods"].description
    assert all(f"{m.name} = {m.help}" in help_text for m in METHOD_TABLE.values())
    assert method_label("fa-me-margin") == "ME Failure-Aware IRL (IRL Margin Failures)"
    assert method_label("not-in-the-table") == "not-in-the-table"
    with pytest.raises(ConfigError, match="irl.methods.0.*'fa-me-margin'"):  # lists the names
        load_config(overrides=["irl.methods=[maxent]"])
    # The strictness checks follow each method's objective: tau_fail only for fa-me-*.
    load_config(overrides=["irl.fa.tau_fail=2", "irl.methods=[me, fa-mm-margin]"])
    with pytest.raises(ConfigError, match="tau_fail"):
        load_config(overrides=["irl.fa.tau_fail=2", "irl.methods=[fa-me-gt]"])


def test_method_spec_holds_irl_fa_and_writes_the_flat_spec_of_reward_json():
    irl = load_config(overrides=["irl.fa.gt_failures=union", "irl.fa.rounds=7"]).irl
    spec = method_spec("fa-me-gt", irl)
    assert spec.fa == irl.fa and spec.fa is not irl.fa  # a copy: the config may change
    assert spec.failures == "both" and spec.needs_labels and not spec.uses_threshold
    assert (spec.tau_fail, spec.margin_fail) == (0.5, 0.8)  # stricter tau, base M
    assert method_spec("fa-mm-margin", irl).margin_fail == 1.6
    assert spec.first_stoppable_epoch == 7 and method_spec("me", irl).fa is None
    # reward.json's "spec" and irl/summary.json's "methods": flat, keys in this order.
    assert list(spec.to_dict()) == [
        "name",
        "objective",
        "failures",
        "margin",
        "tau",
        "margin_fail",
        "tau_fail",
        "fail_weight",
        "lambda_0",
        "penalty_scale",
        "lambda_decay",
        "rounds",
        "margin_schedule",
        "bottom_k_start",
        "bottom_k_end",
        "gamma_start",
        "gamma_end",
        "sample_rate_start",
        "sample_rate_end",
        "base_loss_trains_failure_path",
        "failure_loss_trains_base_path",
        "early_stop_after_rounds",
    ]
    assert spec.to_dict()["failures"] == "both" and spec.to_dict()["rounds"] == 7
    assert method_spec("me", irl).to_dict() == {
        "name": "me",
        "objective": "me",
        "failures": "none",
        "margin": 0.8,
        "tau": 1.0,
    }
    with pytest.raises(ConfigError, match="unknown method 'maxent'"):
        method_spec("maxent", irl)


def test_config_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("irl: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["irl.lr"])


# ------------------------------------------------------------------------------- pairs
def test_jsonl_and_parquet_load_the_same(tmp_path):
    rows = make_pairs_records(40)
    a = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "p.parquet")
    b = load_pairs(tmp_path / "p.parquet")
    assert a.has_scores and a.has_labels and a.subtypes == ["insult"]
    pd.testing.assert_frame_equal(a.df, b.df, check_dtype=False)


def test_splits_are_by_prompt_and_complete(tmp_path):
    rows = make_pairs_records(60)
    for i, r in enumerate(rows):
        r["prompt"] = f"shared prompt {i // 3}"  # three pairs per prompt
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), test_fraction=0.25, val_fraction=0.2)
    by_prompt = ps.df.groupby("prompt")["split"].nunique()
    assert (by_prompt == 1).all()  # no prompt in two splits
    assert set(ps.df["split"]) == {"train", "val", "test"}


def test_a_split_column_is_respected(tmp_path):
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", make_pairs_records(50, with_split=True)))
    assert (ps.df["split"] == "test").sum() == 10
    assert set(ps.df["split"]) == {"train", "val", "test"}  # val carved from train


@pytest.mark.parametrize(
    "content,match",
    [
        ("", "empty"),
        ('{"prompt": "p", "chosen": "a"}\n', r"lacks required column.*rejected"),
        ('{"prompt": "p", "chosen": "a", "rejected": null}\n', "rejected.*must be text"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n', "line 2: not valid JSON"),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_score": 1}\n',
            "has chosen_score but not rejected_score",
        ),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "split": "dev"}\n', "unknown split"),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_toxic": 2, '
            '"rejected_toxic": 0}\n',
            "true/false or 0/1",
        ),
    ],
)
def test_bad_pairs_files_give_clear_errors(tmp_path, content, match):
    p = tmp_path / "p.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=match):
        load_pairs(p)


def test_missing_pairs_file(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_pairs(tmp_path / "nope.jsonl")
    assert "make-pairs" in str(e.value)


def test_null_scores_error_by_default_and_drop_on_request(tmp_path):
    rows = make_pairs_records(30)
    rows[4]["rejected_score"] = None
    rows[9]["chosen_toxic"] = None
    p = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(DataError, match=r"(?s)2 row\(s\) have null ground truth.*null_scores=drop"):
        load_pairs(p)
    ps = load_pairs(p, null_scores="drop")
    assert len(ps.df) == 28 and ps.dropped == 2


def test_optional_ground_truth_may_be_absent(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(20)]
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert not ps.has_scores and not ps.has_labels and ps.subtypes == []


def test_prompt_plus_completion_uses_per_side_prompts(tmp_path):
    rows = make_pairs_records(10)
    rows[0].update(chosen_prompt="A: ", rejected_prompt="B: ")
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    i = ps.df.index[ps.df["pair_id"] == 0][0]
    assert ps.texts("chosen", "prompt+completion")[i].startswith("A: ")
    assert ps.texts("rejected", "prompt+completion")[i].startswith("B: ")
    assert ps.texts("chosen", "completion")[i] == rows[0]["chosen"]


# ----------------------------------------------------------------------------- held-out
def test_jigsaw_heldout(tmp_path):
    p = tmp_path / "j.csv"
    pd.DataFrame(
        {"id": [1, 2, 3], "comment_text": ["a", "b", "c"], "toxic": [0, 1, 1], "insult": [0, 1, 0]}
    ).to_csv(p, index=False)
    df = load_heldout(p)
    assert df["toxic"].tolist() == [False, True, True] and "insult" in df
    (tmp_path / "bad.jsonl").write_text(json.dumps({"text": "x", "toxic": 1}) + "\n")
    with pytest.raises(DataError, match="comment_text"):
        load_heldout(tmp_path / "bad.jsonl")


# ------------------------------------------------------------- review findings, pinned down
def test_methods_may_not_be_empty_and_strictness_checks_apply_only_to_selected_methods():
    with pytest.raises(ConfigError, match="irl.methods"):
        load_config(overrides=["irl.methods=[]"])
    cfg = load_config(overrides=["irl.margin=2", "irl.methods=[mm, fa-me-margin]"])  # no fa-mm
    assert cfg.irl.margin == 2
    with pytest.raises(ConfigError, match="margin_fail"):
        load_config(overrides=["irl.margin=2", "irl.methods=[fa-mm-gt]"])


def test_too_few_pairs_for_the_splits_is_a_data_error(tmp_path):
    # One shared prompt splits by pair (tests/test_faults_data.py); two pairs cannot make three
    # parts.
    rows = make_pairs_records(2)
    for r in rows:
        r["prompt"] = "one prompt for all"
    with pytest.raises(DataError, match="cannot form train, val and test splits from 2 pair"):
        load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))


def test_a_split_column_without_test_rows_gets_a_test_split_carved(tmp_path):
    rows = make_pairs_records(40)
    for r in rows:
        r["split"] = "train"
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows), test_fraction=0.25)
    assert set(ps.df["split"]) == {"train", "val", "test"}


def test_subtypes_on_one_side_only_are_unknown_on_the_other(tmp_path):
    rows = make_pairs_records(30)
    for r in rows:
        r.pop("rejected_subtypes")
        r["chosen_subtypes"] = {"threat": 0.2}
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    assert ps.subtypes == ["threat"] and ps.df["rejected_sub_threat"].isna().all()


def test_extra_columns_are_carried_as_text(tmp_path):
    rows = make_pairs_records(30)
    for i, r in enumerate(rows):
        r["meta"] = {} if i % 2 else 7
    ps = load_pairs(write_jsonl(tmp_path / "p.jsonl", rows))
    ps.df.to_parquet(tmp_path / "out.parquet")  # previously failed inside pyarrow


def test_lone_surrogates_are_reported(tmp_path):
    rows = make_pairs_records(10)
    rows[2]["chosen"] = "broken \ud83d text"
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match="invalid Unicode"):
        load_pairs(p)


def test_jigsaw_minus_one_labels_are_rejected(tmp_path):
    p = tmp_path / "j.csv"
    pd.DataFrame({"comment_text": ["a", "b"], "toxic": [-1, 1]}).to_csv(p, index=False)
    with pytest.raises(DataError, match="outside"):
        load_heldout(p)


def test_rtp_max_pairs_caps_both_splits_in_proportion(rtp_dir):
    from pipeline.config import DatasetPairsSection
    from pipeline.data.rtp import load_rtp, pairs_from_continuations

    ds = load_rtp([str(rtp_dir / "toxic.jsonl"), str(rtp_dir / "nontoxic.jsonl")])
    df, _ = pairs_from_continuations(ds, DatasetPairsSection(max_pairs=100), seed=0)
    counts = df["split"].value_counts()
    assert len(df) == 100 and counts["train"] > counts["test"] > 0


def test_one_round_schedule_starts_at_its_start_value():
    from pipeline.irl.objectives import linear_anneal

    assert linear_anneal(0.2, 0.0, 0, 1) == 0.2 and linear_anneal(0.2, 0.0, 1, 1) == 0.0


def test_a_method_spec_is_hashable_by_value():
    """Specs key dicts and sets like any frozen dataclass, though they hold a FailureSection."""
    a, b = method_spec("fa-mm-gt", IRLSection()), method_spec("fa-mm-gt", IRLSection())
    other = method_spec("fa-mm-gt", IRLSection(fa={"lambda_0": 3.0}))
    assert a == b and hash(a) == hash(b)
    assert len({a, b, other, method_spec("mm", IRLSection())}) == 3


def test_a_matched_baseline_selects_from_where_fa_irl_does():
    irl = IRLSection(fa={"rounds": 7}, methods=["mm", "mm-matched", "fa-mm-gt"])
    plain, matched, fa = (method_spec(m, irl) for m in irl.methods)
    assert (plain.first_stoppable_epoch, matched.first_stoppable_epoch) == (0, 7)
    assert matched.first_stoppable_epoch == fa.first_stoppable_epoch
    assert not matched.failure_aware and matched.lambda_t(0) == 0.0
    assert matched.to_dict() == {**plain.to_dict(), "name": "mm-matched", "min_epoch": 7}
    free = IRLSection(fa={"rounds": 7, "early_stop_after_rounds": False})
    assert method_spec("mm-matched", free).first_stoppable_epoch == 0


def test_settings_added_later_keep_the_fingerprints_of_stages_published_before():
    """A stage published before a setting existed is still found (not redone) while that setting
    keeps its default: these are the fingerprints of fairl 0.1.0 / issue 8 for the same configs."""
    from pipeline.artifacts import sha256_json
    from pipeline.config import fingerprint
    from pipeline.data.prompts import prompts_config

    paper = load_config(ROOT / "configs" / "paper-pythia-410m.yaml")
    assert sha256_json(fingerprint(paper.make_pairs))[:12] == "d05336cc3dac"
    assert sha256_json(fingerprint(paper.irl))[:12] == "c1352251c1d1"
    assert sha256_json(fingerprint(paper.evaluate))[:12] == "84b836f4a41d"
    assert sha256_json(prompts_config(load_config(ROOT / "configs" / "toy.yaml")))[:12] == (
        "bea5309f5a00"
    )
    # set away from its default, a new setting is part of the fingerprint
    noisy = load_config(overrides=["make_pairs.preference_noise=0.03", "irl.fa.penalty_scale=0"])
    assert fingerprint(noisy.make_pairs)["preference_noise"] == 0.03
    assert fingerprint(noisy.irl)["fa"]["penalty_scale"] == 0.0
    assert "penalty_scale" not in fingerprint(paper.irl)["fa"]
    # speed-only settings (SPEED_SETTINGS) are recorded at their default, whatever they are set to
    toy = load_config(ROOT / "configs" / "toy.yaml")
    fast = load_config(
        ROOT / "configs" / "toy.yaml", ["ground_truth.batch_size=512", "irl.embed.batch_size=512"]
    )
    assert (fast.ground_truth.batch_size, fast.irl.embed.batch_size) == (512, 512)
    assert prompts_config(fast) == prompts_config(toy)
    assert fingerprint(fast.irl) == fingerprint(toy.irl)
    # ... but not the generation batch: make-pairs seeds its sampling per batch
    bigger = load_config(overrides=["make_pairs.generation.batch_size=256"])
    assert fingerprint(bigger.make_pairs) != fingerprint(load_config().make_pairs)


@pytest.mark.parametrize(
    "config,override,message",
    [
        ("hard.yaml", "ground_truth.kind=lexicon", "the hard world's ground truth is hard-lexicon"),
        ("toy.yaml", "ground_truth.kind=hard-lexicon", "the easy world's ground truth is lexicon"),
        ("toy.yaml", "re_rlhf.seeds=[0, 0]", "re_rlhf.seeds has duplicates"),
        ("toy.yaml", "re_rlhf.seeds=[-1]", "re_rlhf.seeds must be >= 0"),
    ],
)
def test_a_world_scored_by_another_worlds_truth_or_bad_rl_seeds_are_refused(
    config, override, message
):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / config, [override])
