"""docs/claims.md (issue 10): the statistics behind each verdict, against values computed by hand
or by a second route, and the report is current: made from these sources, rendered from its
JSON, covering every claim of the paper. The fix when stale: `python scripts/claims.py`."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from conftest import ROOT
from scipy import stats

_spec = importlib.util.spec_from_file_location("claims", ROOT / "scripts" / "claims.py")
cl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cl)
FIX = "run `python scripts/claims.py` (about 20 minutes) and commit docs/claims.*"


def test_verdicts_follow_the_confidence_interval():
    assert cl.verdict([0.1, 0.3], 1) == "holds"
    assert cl.verdict([0.1, 0.3], -1) == "does not hold"
    assert cl.verdict([-0.1, 0.3], 1) == "inconclusive"
    assert cl.verdict(None, 1) == "inconclusive"
    assert cl.claim_verdict([{"verdict": "holds"}] * 3) == "holds"
    assert cl.claim_verdict([{"verdict": "holds"}, {"verdict": "inconclusive"}]) == "inconclusive"
    assert cl.claim_verdict([{"verdict": "holds"}, {"verdict": "does not hold"}]) == (
        "does not hold"
    )
    assert cl.claim_verdict([]) == "not tested"


def test_paired_differences_by_hand():
    # [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653 -> 2 -/+ 4.302653 / sqrt(3)
    t = cl.one_sample([1.0, 2.0, 3.0], 1)
    half = 4.302652729911275 / math.sqrt(3)
    assert t["mean"] == 2.0 and t["ci95"] == pytest.approx([2 - half, 2 + half])
    assert t["verdict"] == "inconclusive" and t["n"] == 3
    assert cl.one_sample([1.0, 1.1, 0.9, None], 1)["verdict"] == "holds"  # None left out
    assert cl.one_sample([1.0, 1.1, 0.9], -1)["verdict"] == "does not hold"
    assert cl.one_sample([0.0, 0.0, 0.0], 1)["verdict"] == "inconclusive"  # no spread, at 0
    assert cl.one_sample([0.5], 1) | {} == {
        "n": 1,
        "mean": 0.5,
        "ci95": None,
        "p": None,
        "verdict": "inconclusive",
    }


def test_welch_difference_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0]
    t = cl.two_sample(a, b, 1)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch-Satterthwaite
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert t["mean"] == pytest.approx(2.0)
    assert t["ci95"] == pytest.approx([2.0 - half, 2.0 + half])


def test_pitman_morgan_against_the_correlation_test():
    rng = np.random.default_rng(0)
    x = rng.normal(size=8)
    y = 3 * x + rng.normal(size=8)  # y varies more: var(x) < var(y) should hold
    t = cl.pitman_morgan(list(x), list(y))
    r, p = stats.pearsonr(x + y, x - y)  # the same test by scipy's correlation t-test
    assert t["r"] == pytest.approx(r) and t["p"] == pytest.approx(p)
    assert t["r"] < 0 and t["verdict"] == "holds"
    assert cl.pitman_morgan(list(y), list(x))["verdict"] == "does not hold"
    assert cl.pitman_morgan([1.0, 2.0], [2.0, 3.0])["verdict"] == "inconclusive"  # n < 3


def test_slope_and_appendix_d_on_planted_runs(tmp_path):
    assert cl.slope([0.1, 0.5, 0.9], [1.0, 0.6, 0.2]) == pytest.approx(-1.0)
    assert cl.slope([0.1, 0.5], [1.0, None]) is None
    # two methods over three fractions and three seeds: FA falls twice as fast as the baseline
    for frac in (0.1, 0.5, 0.9):
        models = {}
        for s in range(3):
            noise = 0.01 * s
            models[f"fa/seed-{s}"] = {"train/starc": 1.0 - 1.0 * frac + noise, "test/starc": 0.5}
            models[f"mm/seed-{s}"] = {"train/starc": 1.0 - 0.5 * frac - noise, "test/starc": 0.5}
        mx = {
            "models": models,
            "methods": {m: {"seeds": [0, 1, 2]} for m in ("fa", "mm")},
            "paired": {"fa vs mm": {}},
        }
        d = tmp_path / "points" / f"irl.pair_mix={frac}" / "evaluate"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps(mx))
    # the points the sweep compared; a stray directory of another grid is not read
    (tmp_path / "points" / "irl.lr=0.1").mkdir()
    runs = {p.name: str(p) for p in sorted((tmp_path / "points").glob("irl.pair_mix=*"))}
    (tmp_path / "comparison").mkdir()
    (tmp_path / "comparison" / "comparison.json").write_text(json.dumps({"runs": runs}))
    tests = {(t["metric"], t["test"], t["fa"]): t for t in cl.appendix_d(tmp_path)}
    assert tests["train/starc", "slope", "fa"]["mean"] == pytest.approx(-1.0)
    assert tests["train/starc", "slope FA - base", "fa"]["mean"] == pytest.approx(-0.5)
    assert tests["train/starc", "slope FA - base", "fa"]["verdict"] == "holds"
    assert tests["train/starc", "FA - base at 0.9", "fa"]["verdict"] == "holds"
    assert tests["test/starc", "slope", "fa"]["verdict"] == "inconclusive"  # flat, no spread


def test_the_seed_dispersion_jackknife_by_hand():
    # theta = mean(1, 2, 3) = 2; leaving out seed 0, 1, 2 gives 3, 2, 1; pseudo-values
    # 3 x 2 - 2 x theta_-i = 0, 2, 4: mean 2, sd 2, t(0.975, 2) = 4.302653
    a = {"0-1": 1.0, "0-2": 2.0, "1-2": 3.0}
    b = dict.fromkeys(a, 0.0)
    t = cl.jackknife_dispersion(a, b)
    half = 4.302652729911275 * 2 / math.sqrt(3)
    assert t["difference"] == 2.0 and t["mean"] == pytest.approx(2.0)
    assert t["ci95"] == pytest.approx([2 - half, 2 + half])
    assert t["n_seeds"] == 3 and t["verdict"] == "inconclusive"
    two = cl.jackknife_dispersion({"0-1": 1.0}, {"0-1": 0.0})
    assert two["verdict"] == "inconclusive" and two["ci95"] is None  # two seeds: no interval


@pytest.fixture(scope="module")
def result() -> dict:
    assert cl.CLAIMS_JSON.is_file(), f"no docs/claims.json: {FIX}"
    return json.loads(cl.CLAIMS_JSON.read_text())


def test_the_claims_report_is_current(result):
    rr = cl._readme_results()
    recorded = result["provenance"]["source"]
    assert recorded["paths"] == list(cl.SOURCES), FIX
    stale = rr.stale_files(recorded["files"], rr.source_files(cl.SOURCES))
    assert not stale, f"docs/claims.md was made from other sources ({', '.join(stale)}): {FIX}"
    assert cl.CLAIMS_MD.read_text() == cl.render(result), (
        f"docs/claims.md differs from docs/claims.json: {FIX} (--render-only when only the "
        "rendering changed)"
    )


def test_the_report_covers_every_claim_and_every_setting(result):
    assert set(result["claims"]) == set(cl.CLAIMS)
    for claim, by_setting in result["claims"].items():
        assert by_setting, f"{claim}: no setting tested it"
        for r in by_setting.values():
            assert r["tests"] and r["verdict"] in cl.VERDICTS
    assert result["seeds"] == cl.SEEDS and len(cl.SEEDS) >= 5
    ran = [name for name, why in result["ran"].items() if why is None]
    # every experiment that ran is reported: the report picks no setting
    for name in ran:
        assert any(s.split(",")[0] == name for c in result["claims"].values() for s in c), name
    assert "docs/claims.md" in (ROOT / "README.md").read_text()
