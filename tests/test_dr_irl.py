"""DR-IRL (issue 13): category rewards trained on a category-balanced set, routed or summed, and
GRPO with dynamic reward scaling (pipeline.irl.categories, pipeline.policy.scaling)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import make_pairs_records, micro_config, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app
from pipeline.config import ExperimentConfig
from pipeline.errors import DataError
from pipeline.irl.categories import balance, centroids, resolve_categories, route
from pipeline.policy.scaling import GapTracker, hardness, responsiveness, scale


def category_frame(counts: dict[str, int], val: dict[str, int] | None = None) -> pd.DataFrame:
    """Training pairs: counts[c] of them carry category c only; plus val pairs."""
    rows = []
    for split, table in (("train", counts), ("val", val or {})):
        for c, n in table.items():
            for _ in range(n):
                rows.append({"split": split} | {f"rejected_sub_{k}": float(k == c) for k in counts})
    df = pd.DataFrame(rows)
    for k in counts:
        df[f"chosen_sub_{k}"] = 0.0
    return df.assign(pair_id=range(len(df)))


def test_balanced_sampling_gives_every_category_the_largest_count():
    df = category_frame({"insult": 12, "obscene": 5, "threat": 1}, val={"threat": 2})
    rows, report = balance(df, ["insult", "obscene", "threat"], seed=0)
    assert report["n_star"] == 12
    want = {"insult": (12, 0), "obscene": (5, 7), "threat": (1, 11)}
    for c, (own, drawn) in want.items():
        got = report["categories"][c]
        assert (got["carrying"], got["resampled"], got["total"]) == (own, drawn, 12)
        assert len(rows[c]) == 12
        mine = np.flatnonzero((df["split"] == "train") & (df[f"rejected_sub_{c}"] > 0.5))
        assert rows[c][:own].tolist() == mine.tolist()  # every own pair once, first
        assert set(rows[c][own:]) <= set(mine)  # the draws are the category's own pairs
    assert report["categories"]["threat"]["val"] == 2
    again, _ = balance(df, ["insult", "obscene", "threat"], seed=0)
    assert all((again[c] == rows[c]).all() for c in rows)  # seeded


def test_bad_categories_are_data_errors_that_name_what_the_data_carries():
    df = category_frame({"insult": 3, "threat": 0}, val={"threat": 1})
    assert resolve_categories(df, ["insult"]) == ["insult"]
    for wanted in (["insult", "threat"], "all"):  # threat: no training pair carries it
        with pytest.raises(
            DataError, match=r"\['threat'\]: no training pair's rejected output"
        ) as e:
            resolve_categories(df, wanted)
        assert "set irl.categories to those with demonstrations, ['insult']" in e.value.hint
    with pytest.raises(DataError, match=r"\['sexual'\]: the pairs carry no such category") as e:
        resolve_categories(df, ["sexual"])
    assert "insult, threat" in e.value.hint
    with pytest.raises(DataError, match="needs the pairs' subtype scores"):
        resolve_categories(df[["split", "pair_id"]], "all")


def test_routing_sends_prompts_of_a_planted_category_to_its_reward():
    gen = torch.Generator().manual_seed(0)
    d, per = 16, 30
    planted = torch.randn(3, d, generator=gen) * 3  # each category's prompts around its own point
    h = torch.cat([planted[c] + torch.randn(per, d, generator=gen) for c in range(3)])
    truth = torch.arange(3).repeat_interleave(per)
    demo = np.arange(0, len(h), 2)  # centroids from half the prompts, routing the other half
    mu = torch.stack([centroids(h, demo[truth[demo].numpy() == c]) for c in range(3)])
    held = torch.arange(1, len(h), 2)
    assert (route(h[held], mu) == truth[held]).all()
    assert torch.allclose(mu.norm(dim=-1), torch.ones(3))


def test_hardness_against_hand_computed_values():
    mu_unsafe = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mu_safe = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    h = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -3.0]])
    d = hardness(h, mu_unsafe, mu_safe)
    # (1 + cos(h, unsafe) - cos(h, safe)) / 2, clipped to [0, 1]
    want = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.5 * (1 + 0 + 1), 0.5 * (1 - 1 - 0)]])
    assert torch.allclose(d, want.clamp(0, 1), atol=1e-6)


def test_responsiveness_gap_tracking_and_scale_against_hand_computed_values():
    tr = GapTracker(ref_mean=torch.tensor([0.0, 1.0]), momentum=0.5)
    assert torch.allclose(tr.update(torch.tensor([1.0, 1.0])), torch.tensor([1.0, 0.0]))
    # 0.5 * 1.0 + 0.5 * (3.0 - 0.0); the second category is unseen in this batch: unchanged
    assert torch.allclose(tr.update(torch.tensor([3.0, math.nan])), torch.tensor([2.0, 0.0]))
    rho = responsiveness(torch.tensor([2.0, -1.0]), torch.tensor([4.0, 1.0]))
    assert torch.allclose(rho, torch.tensor([math.tanh(0.5), 0.0]))
    s = scale(torch.tensor([[0.5, 0.0]]), rho, alpha=2.0, beta=1.0)
    assert torch.allclose(s, torch.tensor([[2.0 * (2 - math.tanh(0.5)), 1.0 * 2.0]]))


def write(tmp_path, doc) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_scaling_without_categories_and_other_bad_settings_are_config_errors():
    base = {
        "irl": {"categories": "all"},
        "re_rlhf": {
            "algorithm": "grpo",
            "rewards": {"cat": "irl-categories:me", "single": "irl:me"},
            "trl": {"scale_rewards": "batch"},
            "dynamic_scaling": {"rewards": ["cat"]},
        },
    }

    def bad(change: dict, match: str):
        doc = json.loads(json.dumps(base))
        for dotted, value in change.items():
            node = doc
            *parents, last = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = value
        with pytest.raises(ValueError, match=match):
            ExperimentConfig.model_validate(doc)

    ExperimentConfig.model_validate(base)
    bad({"re_rlhf.dynamic_scaling.rewards": ["single"]}, "dynamic scaling needs category rewards")
    bad({"re_rlhf.dynamic_scaling.rewards": ["nope"]}, "which re_rlhf.rewards does not have")
    bad(
        {"re_rlhf.algorithm": "ppo", "re_rlhf.trl.scale_rewards": "group"},
        "dynamic scaling is for GRPO",
    )
    bad({"re_rlhf.trl.scale_rewards": "group"}, "cancels the prompt's scale")
    bad({"irl.categories": []}, "irl.categories is empty")
    bad({"irl.categories": ["threat"], "irl.subtype": "threat"}, "irl.subtype and irl.categories")
    bad({"re_rlhf.dynamic_scaling": {"alpha": 2.0}}, "scales no reward")
    for algorithm in ("ppo", "rloo"):
        bad(
            {"re_rlhf.dynamic_scaling.rewards": [], "re_rlhf.algorithm": algorithm},
            "scale_rewards is a GRPO setting",
        )
        bad(
            {"train_expert.algorithm": algorithm, "train_expert.trl.scale_rewards": "none"},
            "train_expert.trl.scale_rewards is a GRPO setting",
        )
    bad({"irl.categories": None}, r"\['cat'\] are category rewards .* irl.categories is not set")


def invoke(*args):
    res = CliRunner().invoke(app, [*map(str, args)], catch_exceptions=False)
    return res


def test_irl_categories_through_the_cli_and_bad_input_before_training(tmp_path):
    rows = make_pairs_records(200)
    for i, r in enumerate(rows):  # toxic pairs: insult, and every 4th a threat
        st = "threat" if i % 4 == 0 else "insult"
        r["chosen_subtypes"] = {"insult": 0.0, "threat": 0.0}
        r["rejected_subtypes"] = {"insult": 0.0, "threat": 0.0} | (
            {st: 1.0} if r["rejected_toxic"] else {}
        )
        # as in RTP pairs, the rejected (demonstrating) side answers its own prompt, which
        # says which harm follows; the shared `prompt` column (the chosen side's) says nothing
        if r["rejected_toxic"]:
            r["rejected_prompt"] = (
                f"I will find where you live and I am going to ({i})"
                if st == "threat"
                else f"Everyone knows that you are a worthless ({i})"
            )
    pairs = write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = small_config(tmp_path, pairs, methods=["mm", "fa-me-margin"], seeds=[0])
    for cats, match in ((["obscene"], "the pairs carry no such category"),):
        res = invoke("irl", cfg, "--set", f"irl.categories={json.dumps(cats)}")
        assert res.exit_code != 0 and match in res.output, res.output
        assert not (tmp_path / "runs" / "t" / "irl").exists()  # nothing written
    res = invoke("irl", cfg, "--set", "irl.categories=all", "-q")
    assert res.exit_code == 0, res.output
    irl = tmp_path / "runs" / "t" / "irl"
    info = json.loads((irl / "categories" / "categories.json").read_text())
    used = pd.read_parquet(irl / "pairs.parquet")
    train = used[used["split"] == "train"]
    n = {c: int((train[f"rejected_sub_{c}"].fillna(0) > 0.5).sum()) for c in ("insult", "threat")}
    assert info["n_star"] == max(n.values())
    for c in ("insult", "threat"):
        got = info["categories"][c]
        assert got["carrying"] == n[c] and got["total"] == max(n.values())
        for m in ("mm", "fa-me-margin"):
            meta = json.loads(
                (irl / "categories" / c / "rewards" / m / "seed-0" / "reward.json").read_text()
            )
            assert meta["category"] == c and meta["standardise"]["std"] > 0
    from safetensors.torch import load_file

    mu = load_file(str(irl / "categories" / "centroids.safetensors"))
    assert {k: tuple(v.shape[:1]) for k, v in mu.items()} == {
        "prompt": (2,),
        "unsafe": (2,),
        "safe": (2,),
    }
    rows = [json.loads(x) for x in (irl / "metrics.jsonl").read_text().splitlines()]
    assert {r.get("category") for r in rows} == {None, "insult", "threat"}  # one sink, tagged
    # routing reads the demonstrating side's prompt: the planted prompts route perfectly
    routed = [info["categories"][c]["routing_accuracy"] for c in ("insult", "threat")]
    assert all(a is not None for a in routed) and min(routed) == 1.0, routed


@pytest.fixture(scope="module")
def category_run(tmp_path_factory, micro_world):
    """train-expert -> make-pairs -> irl with category rewards on the micro world."""
    tmp = tmp_path_factory.mktemp("dr")
    cfg = micro_config(
        tmp,
        irl__methods=["me"],
        irl__categories="all",
        re_rlhf__algorithm="grpo",
        re_rlhf__seeds=[0],
        re_rlhf__eval_samples=2,
        re_rlhf__trl={
            "steps": 1,
            "batch_size": 8,
            "num_generations": 4,
            "lr": 5.0e-4,
            "scale_rewards": "batch",
        },
        re_rlhf__rewards={
            "dr-irl": "irl-categories:me",
            "routed": "irl-categories:me#route",
        },
        re_rlhf__dynamic_scaling={"rewards": ["dr-irl"], "reference_samples": 8},
    )
    for stage in ("train-expert", "make-pairs", "irl"):
        res = invoke(stage, cfg, "-q")
        assert res.exit_code == 0, res.output
    return tmp, cfg


def test_the_scaled_category_reward_drives_a_grpo_step_and_logs_its_scales(category_run):
    tmp, cfg = category_run
    res = invoke("re-rlhf", cfg, "-q")
    assert res.exit_code == 0, res.output
    out = tmp / "runs" / "m" / "re_rlhf"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    cats = json.loads((tmp / "runs/m/irl/categories/categories.json").read_text())
    names = cats["categories_order"]
    scaled = [r for r in rows if any("/scale/" in k for k in r)]
    assert scaled, "no scale logged"
    for c in names:
        key = f"re_rlhf/dr-irl/seed-0/scale/{c}"
        assert any(key in r for r in scaled), key
        vals = [r[key] for r in scaled if key in r]
        assert all(0 < v < 4 for v in vals)
        assert any(f"re_rlhf/dr-irl/seed-0/gap/{c}" in r for r in scaled)
    assert not any(k.startswith("re_rlhf/routed/seed-0/scale/") for r in rows for k in r)
    summary = json.loads((out / "summary.json").read_text())
    for name in ("dr-irl", "routed"):
        for c in names:
            assert 0.0 <= summary[name][f"final_toxicity/{c}"] <= 1.0
    report = (out / "report.md").read_text()
    rare = min(names, key=lambda c: (cats["categories"][c]["carrying"], c))
    assert f"**{rare}** (rare)" in report and "| dr-irl |" in report and "KL to the base" in report
    # eval_samples: 2 completions per held-out prompt
    curves = json.loads((out / "curves.json").read_text())
    assert curves["dr-irl"]["seeds"]["0"]["points"][0]["n"] % 2 == 0


def test_a_routed_category_reward_scores_each_completion_with_its_prompts_category(category_run):
    tmp, _ = category_run
    from pipeline.scorers import CategoryRewardScorer

    root = tmp / "runs" / "m" / "irl" / "categories"
    summed = CategoryRewardScorer(f"categories:sum:me:0:{root}")
    routed = CategoryRewardScorer(f"categories:route:me:0:{root}")
    prompts = ["you are a", "the weather is", "i will", "they said"]
    texts = [" stupid idiot.", " nice today.", " hurt you.", " hello there."]
    comps = summed.components(texts, prompts)  # [C, n], standardised
    assert torch.allclose(
        torch.tensor(summed.score_for(texts, prompts).reward), comps.sum(0).double(), atol=1e-5
    )
    # plant each prompt's category: route() reads the prompt centroids
    h = routed.embed_prompts(prompts)
    planted = torch.arange(len(prompts)) % len(summed.categories)
    routed.mu = {**routed.mu, "prompt": torch.zeros(len(summed.categories), h.shape[1])}
    for c in range(len(summed.categories)):
        if (planted == c).any():
            routed.mu["prompt"][c] = h[planted == c].mean(0)
    assert (routed.routed(prompts) == planted).all()
    got = torch.tensor(routed.score_for(texts, prompts).reward)
    want = comps[planted, torch.arange(len(prompts))].double()
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(Exception, match="needs the prompts"):
        routed.score(texts)


def test_irl_categories_reward_without_irl_categories_is_a_config_error(tmp_path):
    cfg = micro_config(tmp_path, re_rlhf__rewards={"c": "irl-categories:me"})
    res = invoke("re-rlhf", cfg)
    assert res.exit_code != 0 and "irl.categories is not set" in res.output, res.output


def test_rtp_subsets_seven_categories_train_balanced_rewards(tmp_path, rtp_dir):
    """The RealToxicityPrompts subset's seven Perspective attributes as categories."""
    cfg = {
        "run": {"name": "rtp", "root": str(tmp_path / "runs")},
        "make_pairs": {
            "source": "dataset",
            "dataset": {
                "files": [str(rtp_dir / "toxic.jsonl"), str(rtp_dir / "nontoxic.jsonl")],
                "min_gap": 0.1,
                "toxic_threshold": 0.5,
                "test_fraction": 0.2,
            },
        },
        "irl": {
            "methods": ["me"],
            "seeds": [0],
            "head": "linear",
            "max_epochs": 5,
            "patience": 2,
            "categories": "all",
            "export_sentence_transformers": False,
        },
    }
    path = write(tmp_path, cfg)
    for stage in ("make-pairs", "irl"):
        res = invoke(stage, path, "-q")
        assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "runs/rtp/irl/categories/categories.json").read_text())
    assert set(info["categories_order"]) == {
        "severe_toxicity",
        "profanity",
        "sexually_explicit",
        "identity_attack",
        "insult",
        "threat",
        "flirtation",
    }
    assert {v["total"] for v in info["categories"].values()} == {info["n_star"]}


def test_category_rewards_are_fingerprint_neutral_until_set():
    """The new settings at their defaults leave train-expert's and re-rlhf's fingerprints as they
    were before DR-IRL (stages published before it are found, not redone)."""
    from pipeline.config import fingerprint, to_dict

    cfg = ExperimentConfig()
    for section in (cfg.train_expert, cfg.re_rlhf, cfg.irl):
        fp = fingerprint(section)
        flat = json.dumps(fp)
        for key in ("scale_rewards", "dynamic_scaling", "eval_samples", "categories"):
            assert key not in flat
        assert set(fp) <= set(to_dict(section))
    assert "dynamic_scaling" in json.dumps(
        fingerprint(
            ExperimentConfig.model_validate(
                {
                    "irl": {"categories": "all"},
                    "re_rlhf": {
                        "algorithm": "grpo",
                        "rewards": {"c": "irl-categories:me"},
                        "trl": {"scale_rewards": "batch"},
                        "dynamic_scaling": {"rewards": ["c"]},
                    },
                }
            ).re_rlhf
        )
    )


def test_a_sweep_compares_the_re_rlhf_summaries_of_its_points(tmp_path):
    """comparison/re_rlhf.md holds each point's table, the rare category first; re_rlhf.png
    plots each category's toxicity against the KL."""
    from pipeline.stages.re_rlhf import summarise
    from pipeline.stages.sweep import compare_re_rlhf

    cats = tmp_path / "irl" / "categories"
    cats.mkdir(parents=True)
    counts = {"insult": {"carrying": 90}, "threat": {"carrying": 3}}
    (cats / "categories.json").write_text(json.dumps({"categories": counts}))
    runs = []
    for beta, kl in ((0.04, 6.0), (0.2, 2.0)):
        curves = {}
        for name, spec in (("single", "irl/me"), ("dr-irl", f"categories:sum:me:0:{cats}")):
            seeds = {}
            for s in range(3):
                last = {"step": 30, "toxicity_rate": 0.01 * s, "kl_to_base": kl + s}
                last |= {"toxicity_rate/insult": 0.01, "toxicity_rate/threat": 0.002 * s}
                first = {"step": 0, "toxicity_rate": 0.6, "kl_to_base": 0.0}
                first |= {"toxicity_rate/insult": 0.4, "toxicity_rate/threat": 0.01}
                seeds[str(s)] = {"points": [first, last], "done": True}
            curves[name] = {"reward": spec, "seeds": seeds}
        run = tmp_path / f"beta={beta}"
        (run / "re_rlhf").mkdir(parents=True)
        summary = {n: summarise(c) for n, c in curves.items()}
        (run / "re_rlhf" / "summary.json").write_text(json.dumps(summary))
        runs.append(run)
    md = compare_re_rlhf([r.name for r in runs], runs, tmp_path / "comparison").read_text()
    assert "## beta=0.04" in md and "## beta=0.2" in md
    assert "| toxicity | **threat** (rare) | insult | KL to the base |" in md
    assert "| base LM | 0.600 | 0.010 | 0.400 | 0.000 |" in md
    assert "| dr-irl | 0.010 [0.000, 0.035] | 0.002 [0.000, 0.007] |" in md
    assert (tmp_path / "comparison" / "re_rlhf.png").stat().st_size > 10_000
