"""The alignment flywheel (issue 11): audit -> triage -> refine on a small run. Refine's
invariants: the parent is untouched, removing the correction restores its scores exactly, the
lineage's hashes are those of the files, and the sentence-transformers export gives the scores."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch
import yaml
from conftest import make_pairs_records, small_config, write_jsonl
from typer.testing import CliRunner

from cli.main import app
from pipeline.audit.common import sha256_dir
from pipeline.audit.triage import load_findings, read_log
from pipeline.errors import DataError
from pipeline.irl.reward import load_reward

runner = CliRunner()
FAMILIES = ["cue", "synonym", "punctuation", "paraphrase", "insert_toxic", "negation"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fly")
    cfg = small_config(tmp, write_jsonl(tmp / "p.jsonl", make_pairs_records(160)), methods=["me"])
    doc = yaml.safe_load(cfg.read_text())
    doc["ground_truth"] = {"kind": "lexicon"}
    doc["audit"] = {
        "reward": "irl:me",
        "families": FAMILIES,
        "per_family": 30,
        "neutral_delta": 0.2,
    }
    cfg.write_text(yaml.safe_dump(doc))
    assert invoke("irl", cfg, "-q").exit_code == 0
    res = invoke("audit", cfg, "-q")
    assert res.exit_code == 0, res.output
    return cfg, tmp / "runs" / "t"


def test_audit_writes_findings_report_and_plots(audited):
    _, run = audited
    a = run / "audit"
    probes = pd.read_parquet(a / "probes.parquet")
    assert set(probes["family"]) <= set(FAMILIES) and len(probes) > 50
    findings = pd.read_parquet(a / "findings.parquet")
    assert len(findings) > 0 and findings["finding"].all()
    assert findings["finding_id"].is_unique
    summary = json.loads((a / "audit.json").read_text())
    assert summary["n_findings"] == len(findings)
    assert summary["reward_sha256"] == sha256_dir(run / "irl/rewards/me/seed-0")
    for png in ("finding_rates.png", "gaps.png"):
        assert (a / png).stat().st_size > 10_000
    assert "Finding rate by family" in (a / "report.md").read_text()


def test_refine_keeps_the_parent_and_its_lineage_is_checkable(audited, tmp_path):
    cfg, run = audited
    parent_dir = run / "irl/rewards/me/seed-0"
    before = sha256_dir(parent_dir)
    res = invoke("refine", cfg, "-q")
    assert res.exit_code == 3  # no triage yet: a clear data error
    assert "no triage log" in res.output
    assert invoke("triage", cfg, "--oracle", "ground_truth", "-q").exit_code == 0
    res = invoke("refine", cfg, "-q")
    assert res.exit_code == 0, res.output
    assert sha256_dir(parent_dir) == before  # the parent is untouched
    child = load_reward(run / "refine/reward")
    parent = load_reward(parent_dir)
    h = torch.randn(64, parent.head.d)
    assert torch.equal(child.without_corrections().score_embeddings(h), parent.score_embeddings(h))
    assert not torch.equal(child.score_embeddings(h), parent.score_embeddings(h))
    (step,) = child.meta["lineage"]
    assert step["cycle"] == 1 and step["parent_sha256"] == before
    for key in ("audit", "triage"):
        assert step[f"{key}_sha256"] == hashlib.sha256(open(step[key], "rb").read()).hexdigest()
    # the child fixes what it was trained on: most accepted verdict findings (none, for the parent:
    # that is what a finding is) now get the judge's verdict at the audit's threshold, and the
    # accepted neutral edits move the reward less
    findings = pd.read_parquet(run / "audit/findings.parquet")
    decided = read_log(run / "triage/triage.jsonl", step["audit_sha256"])
    acc = findings[findings["finding_id"].map(lambda f: decided[f].decision == "accept")]
    c = json.loads((run / "audit/audit.json").read_text())["threshold"]
    verdict = acc[acc["kind"] != "neutral"]
    now_toxic = child.score(verdict["text"].tolist()).numpy() <= c
    assert len(verdict) >= 5 and (now_toxic == verdict["judge_toxic"].to_numpy()).mean() > 0.5
    neutral = acc[acc["kind"] == "neutral"]
    gap = child.score(neutral["text"].tolist()) - child.score(neutral["source"].tolist())
    parent_gap = parent.score(neutral["text"].tolist()) - parent.score(neutral["source"].tolist())
    assert len(neutral) >= 1 and gap.abs().mean() < 0.5 * parent_gap.abs().mean()
    # the sentence-transformers export computes the refined reward
    from sentence_transformers import SentenceTransformer

    texts = ["you are a stupid worthless idiot", "thank you, that was kind"]
    st = SentenceTransformer(str(run / "refine/reward/sentence-transformer"), device="cpu")
    exported = torch.as_tensor(st.encode(texts))[:, 0]
    assert torch.allclose(exported, child.score(texts).float(), atol=1e-4)


def test_a_triage_log_of_another_audit_is_refused(audited, tmp_path):
    cfg, run = audited
    log = run / "triage" / "triage.jsonl"
    if not log.exists():
        assert invoke("triage", cfg, "--oracle", "ground_truth", "-q").exit_code == 0
    line = json.loads(log.read_text().splitlines()[0])
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps(line | {"audit_sha256": "0" * 64}) + "\n")
    with pytest.raises(DataError, match="another audit"):
        read_log(other, line["audit_sha256"])
    # fairl triage on an audit redone since: the old log is kept beside a new one
    from pipeline.audit.triage import start_log

    assert start_log(other, line["audit_sha256"]) == {} and not other.exists()
    assert (tmp_path / "other.000000000000.jsonl").read_text().startswith("{")
    # a hand-edited line with an unknown decision is an error, never skipped
    other.write_text(json.dumps(line | {"decision": "acept"}) + "\n")
    with pytest.raises(DataError, match="'acept'"):
        read_log(other, line["audit_sha256"])


def test_triage_through_a_spreadsheet(audited, tmp_path):
    """--export then --import: the decisions filled in reach the log; a UTF-8 BOM is fine; a bad
    row is an error naming its line, and nothing of the file is appended."""
    import csv

    cfg, run = audited
    log = tmp_path / "sheet.jsonl"
    out = tmp_path / "findings.csv"
    res = invoke("triage", cfg, "--set", f"refine.triage={log}", "--export", out, "-q")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    findings = pd.read_parquet(run / "audit/findings.parquet")
    assert [r["finding_id"] for r in rows] == findings["finding_id"].tolist()
    rows[0]["decision"], rows[1]["decision"], rows[1]["label"] = "accept", "relabel", "clean"

    def write(rows, path, bom=False):
        with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        return path

    bad = [dict(r) for r in rows]
    bad[2]["decision"] = "maybe"
    res = invoke("triage", cfg, "--set", f"refine.triage={log}", "--import",
                 write(bad, tmp_path / "bad.csv"), "-q")  # fmt: skip
    assert res.exit_code == 3 and "line 4" in res.output and "'maybe'" in res.output
    assert not log.exists()  # nothing of a bad file is taken
    res = invoke("triage", cfg, "--set", f"refine.triage={log}", "--import",
                 write(rows, tmp_path / "ok.csv", bom=True), "--who", "ana", "-q")  # fmt: skip
    assert res.exit_code == 0, res.output
    got = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(g["finding_id"], g["decision"], g["label"], g["who"], g["via"]) for g in got] == [
        (rows[0]["finding_id"], "accept", None, "ana", "csv"),
        (rows[1]["finding_id"], "relabel", "clean", "ana", "csv"),
    ]


def test_the_flywheel_runs_cycles_whose_lineage_accumulates(audited):
    cfg, run = audited
    res = invoke("flywheel", cfg, "--cycles", "2", "--oracle", "ground_truth", "-q")
    assert res.exit_code == 0, res.output
    fw = run / "flywheel"
    last = load_reward(fw / "cycle-2" / "refine" / "reward")
    assert [s["cycle"] for s in last.meta["lineage"]] == [1, 2]
    assert last.meta["lineage"][1]["parent_sha256"] == sha256_dir(
        fw / "cycle-1" / "refine" / "reward"
    )
    report = json.loads((fw / "report" / "flywheel.json").read_text())
    assert [v["version"] for v in report["versions"]] == [0, 1, 2]
    assert all(v["fresh_finding_rate"] is not None for v in report["versions"])
    assert (fw / "report" / "flywheel.png").stat().st_size > 10_000
    # an earlier cycle's findings changed after the fact: accumulating refuses, naming it
    from pipeline.stages.refine import earlier_findings

    findings = fw / "cycle-1" / "audit" / "findings.parquet"
    findings.chmod(0o644)
    findings.write_bytes(findings.read_bytes() + b"x")
    with pytest.raises(DataError, match="gone or changed"):
        earlier_findings(last.meta["lineage"])
    # --out names a directory beside the stages, never a stage's or a path
    for bad, why in (("irl", "is a stage's directory"), ("../x", "contains '/'")):
        res = invoke("flywheel", cfg, "--out", bad, "-q")
        assert res.exit_code == 2 and why in res.output, res.output


def test_the_triage_page_loads_decides_and_saves(audited, tmp_path):
    from pipeline.audit.page import ALL, TriagePage, build, diff_spans

    _, run = audited
    log = tmp_path / "page.jsonl"
    page = TriagePage(run / "audit", log, who="tester")
    assert page.families()[0] == ALL and len(page.table()) == len(page.findings)
    first = page.next_undecided()
    shown = page.show(first)
    assert shown["id"] == first and shown["spans"] and "reward" in shown["details"]
    second = page.decide(first, "accept")
    third = page.decide(second, "relabel-toxic")
    assert third not in (first, second)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["finding_id"], r["decision"], r["label"], r["via"]) for r in rows] == [
        (first, "accept", None, "web"),
        (second, "relabel", "toxic", "web"),
    ]
    assert page.table().set_index("finding_id").loc[second, "decision"] == "relabel (toxic)"
    # a page opened again reads the decisions back
    assert TriagePage(run / "audit", log).next_undecided() == third
    with pytest.raises(DataError, match="relabel needs a label"):
        page.decide(third, "relabel")
    with pytest.raises(DataError, match="no finding 'nope'"):
        page.show("nope")
    # with a family filter on, the next finding shown is of that family
    fam = page.findings["family"].iloc[-1]
    in_fam = page.table(fam)["finding_id"].tolist()
    nxt = page.decide(page.next_undecided(fam), "reject", fam)
    assert nxt is None or nxt in in_fam
    assert diff_spans("we went home", "we went home today") == [
        ("we went home ", None),
        ("today ", "added"),
    ]
    import gradio as gr  # the ui extra, which the README set-up installs

    assert isinstance(build(page), gr.Blocks)


def test_bad_inputs_are_clear_errors_and_nothing_published_is_touched(audited, tmp_path):
    import shutil

    cfg, run = audited
    before = {p.name: p.read_bytes() for p in (run / "audit").iterdir() if p.is_file()}
    # a reward whose encoder is not the run's
    other = tmp_path / "other-reward"
    shutil.copytree(run / "irl/rewards/me/seed-0", other)
    meta = json.loads((other / "reward.json").read_text())
    meta["encoder"]["name"] = "someone/another-encoder"
    (other / "reward.json").write_text(json.dumps(meta))
    res = invoke("audit", cfg, "--set", f"audit.reward={other}", "-q")
    assert res.exit_code == 2 and "embeds with 'someone/another-encoder'" in res.output
    # a triage that accepts nothing, and one of another audit
    _, sha = load_findings(run / "audit")
    rejected = tmp_path / "rejected.jsonl"
    first = pd.read_parquet(run / "audit/findings.parquet")["finding_id"].iloc[0]
    line = {"finding_id": first, "decision": "reject", "label": None, "who": "t",
            "when": "2026-01-01T00:00:00+00:00", "via": "csv", "audit_sha256": sha}  # fmt: skip
    rejected.write_text(json.dumps(line) + "\n")
    res = invoke("refine", cfg, "--set", f"refine.triage={rejected}", "-q")
    assert res.exit_code == 3 and "accepts no finding" in res.output
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text(json.dumps(line | {"decision": "accept", "audit_sha256": "f" * 64}) + "\n")
    res = invoke("refine", cfg, "--set", f"refine.triage={foreign}", "-q")
    assert res.exit_code == 3 and "another audit" in res.output
    after = {p.name: p.read_bytes() for p in (run / "audit").iterdir() if p.is_file()}
    assert after == before


def test_the_disagreement_family_picks_the_outputs_the_rewards_split_on(audited, tmp_path):
    import numpy as np

    cfg, run = audited
    res = invoke(
        "audit", cfg, "-q", "--set", "run.name=t", "--set", "audit.families=[disagreement]",
        "--set", "audit.disagreement_top=5", "--set", "audit.sources=train",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    probes = pd.read_parquet(run / "audit" / "probes.parquet")
    assert set(probes["family"]) == {"disagreement"} and len(probes) == 5
    # recompute: the std over the run's rewards of their z-scored values on the sources (the
    # training outputs: a cycle never trains on the test outputs the fresh audits probe)
    pairs = pd.read_parquet(run / "irl" / "pairs.parquet")
    t = pairs[pairs["split"] == "train"]
    texts = list(dict.fromkeys(t["chosen"].tolist() + t["rejected"].tolist()))
    z = []
    for seed in (0, 1):
        r = load_reward(run / f"irl/rewards/me/seed-{seed}")
        s = r.score(texts).numpy()
        z.append((s - s.mean()) / s.std())
    spread = np.std(np.stack(z), axis=0)
    top = {texts[i] for i in np.argsort(-spread)[:5]}
    assert set(probes["text"]) == top


def test_best_of_n_returns_the_samples_the_reward_ranks_first(tmp_path, micro_world):
    """On the micro world: best-of-n probes score at least as high under the reward as the
    base LM's plain samples do, on average (what RL against the reward finds first)."""
    from conftest import micro_config

    cfg = micro_config(tmp_path, irl__methods=["me"], irl__max_epochs=10)
    for stage in ("train-expert", "make-pairs", "irl"):
        assert invoke(stage, cfg, "-q").exit_code == 0, stage
    run = tmp_path / "runs" / "m"
    scores = {}
    for n in (2, 8):
        res = invoke(
            "audit", cfg, "-q", "--set", "audit.families=[best_of_n]", "--set",
            f"audit.best_of_n={n}", "--set", "audit.best_of_n_prompts=16",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        probes = pd.read_parquet(run / "audit" / "probes.parquet")
        assert set(probes["family"]) == {"best_of_n"} and len(probes) == 16
        scores[n] = probes["reward"].mean()
    assert scores[8] > scores[2]


def test_another_reward_can_be_the_judge(audited):
    cfg, run = audited
    judge = run / "irl/rewards/me/seed-1"
    res = invoke(
        "audit", cfg, "-q", "--set", f"audit.judge={judge}", "--set",
        "audit.families=[cue, insert_toxic]",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "audit" / "audit.json").read_text())
    assert summary["judge"] == str(judge) and summary["n_valid"] > 0
    probes = pd.read_parquet(run / "audit" / "probes.parquet")
    # the judge's verdicts are a reward's, thresholded: scores are -R, verdicts follow them
    assert probes["judge_toxic"].any() and (~probes["judge_toxic"]).any()
    res = invoke("audit", cfg, "-q", "--set", "audit.judge=/nonexistent/reward")
    assert res.exit_code == 2 and "neither ground_truth nor a reward directory" in res.output


def test_gap_closed_against_hand_computed_values():
    from pipeline.stages.flywheel import gap_closed

    def s(per_seed):
        return {
            "final_toxicity_per_seed": dict(zip(["0", "1", "2"], per_seed, strict=True)),
            "final_toxicity": sum(per_seed) / 3,
            "final_toxicity_ci95": None,
            "final_kl": 1.0,
        }

    summary = {"gt": s([0.1, 0.1, 0.1]), "v0": s([0.5, 0.6, 0.7]), "v3": s([0.3, 0.3, 0.3])}
    g = gap_closed(summary, "gt", "v0", "v3")
    # gaps 0.4, 0.5, 0.6 (mean 0.5); closed 0.2, 0.3, 0.4 (mean 0.3): 0.3 / 0.5
    assert g["gap"] == pytest.approx(0.5) and g["closed"] == pytest.approx(0.3)
    assert g["fraction"] == pytest.approx(0.6)
    assert g["gap_ci95"][0] > 0 and g["seeds"] == [0, 1, 2]
    # a gap whose 95% CI includes 0 is no gap: no fraction
    summary["v0"] = s([0.0, 0.2, 0.1])
    assert gap_closed(summary, "gt", "v0", "v3")["fraction"] is None


def test_the_flywheel_re_rlhfs_the_last_version_on_the_micro_world(tmp_path, micro_world):
    """`fairl flywheel --re-rlhf` end to end on the micro world: the ground truth, version 0 and
    the last version each fine-tune the base LM, and the report says what the gap is."""
    from conftest import micro_config

    cfg = micro_config(tmp_path, audit={"reward": "irl:me", "per_family": 20, "best_of_n": 2})
    for command in ("train-expert", "make-pairs", "irl"):
        res = invoke(command, cfg, "-q")
        assert res.exit_code == 0, f"{command}: {res.output}"
    res = invoke("flywheel", cfg, "--cycles", "1", "--re-rlhf", "-q")
    assert res.exit_code == 0, res.output
    fw = tmp_path / "runs" / "m" / "flywheel"
    summary = json.loads((fw / "re-rlhf" / "re_rlhf" / "summary.json").read_text())
    assert set(summary) == {"ground_truth", "version-0", "version-1"}
    assert summary["version-1"]["reward"] == str((fw / "cycle-1" / "refine" / "reward").resolve())
    gap = json.loads((fw / "report" / "flywheel.json").read_text())["re_rlhf"]
    per = {k: v["final_toxicity_per_seed"]["0"] for k, v in summary.items()}
    assert gap["gap"] == pytest.approx(per["version-0"] - per["ground_truth"])
    assert gap["closed"] == pytest.approx(per["version-0"] - per["version-1"])
    assert "## Re-RLHF with the last version" in (fw / "report" / "report.md").read_text()


def test_refine_never_replaces_its_own_parent(audited, tmp_path):
    """Auditing this run's refine output and refining again would publish the child over its
    parent: refused, and the version on disk is kept."""
    import shutil

    cfg, run = audited
    root = tmp_path / "runs"
    shutil.copytree(run, root / "t", symlinks=True)
    args = ("--set", f"run.root={root}", "-q")
    assert invoke("triage", cfg, "--oracle", "ground_truth", *args).exit_code == 0
    assert invoke("refine", cfg, *args).exit_code == 0
    version = root / "t" / "refine" / "reward"
    before = sha256_dir(version)
    res = invoke("audit", cfg, "--set", f"audit.reward={version}", *args)
    assert res.exit_code == 0, res.output
    # the redone audit starts a new triage log; the earlier one is kept beside it
    log = root / "t" / "triage" / "triage.jsonl"
    kept, old = set((root / "t" / "triage").glob("triage.*.jsonl")), log.read_bytes()
    assert invoke("triage", cfg, "--oracle", "ground_truth", *args).exit_code == 0
    (new,) = set((root / "t" / "triage").glob("triage.*.jsonl")) - kept
    assert new.read_bytes() == old and log.read_bytes() != old
    res = invoke("refine", cfg, *args)
    assert res.exit_code == 2 and "is this run's refine output" in res.output, res.output
    assert sha256_dir(version) == before
    # another oracle decides again what the first one decided (the last decision counts)
    judge = run / "irl/rewards/me/seed-1"
    assert invoke("triage", cfg, "--oracle", judge, *args).exit_code == 0
    findings, sha = load_findings(root / "t" / "audit")
    in_force = read_log(log, sha)
    assert set(in_force) == set(findings["finding_id"])
    assert {d.who for d in in_force.values()} == {f"oracle:{judge}"}
