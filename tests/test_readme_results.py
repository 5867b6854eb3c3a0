"""The README's numbers, tables and figures are the ones the code produced, at this source.

`scripts/readme_results.py` runs the pipelines behind the README and writes docs/results/*.json
and the figures; its `render_blocks` turns them into the README's generated blocks. These tests
fail when a block differs from its rendering, a figure or result file is missing or altered, or
the sources a result came from have changed since (the fix is always: run the script).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
import re
from pathlib import Path

import pytest

from pipeline.errors import DataError, FairlError

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "readme_results", ROOT / "scripts" / "readme_results.py"
)
rr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rr)

FIX = "run `python scripts/readme_results.py` (or `--render-only` when only the README changed)"


@pytest.fixture(scope="module")
def results() -> dict:
    found = rr.load_results()
    assert found, f"no docs/results/*.json: {FIX}"
    return found


def test_readme_blocks_match_the_results(results):
    readme = (ROOT / "README.md").read_text()
    expected = rr.update_readme(readme, rr.render_blocks(results))
    diff = "".join(
        difflib.unified_diff(
            readme.splitlines(True),
            expected.splitlines(True),
            "README.md",
            "rendered from docs/results",
            n=1,
        )
    )
    assert readme == expected, f"README.md differs from docs/results/*.json; {FIX}:\n{diff}"


def test_every_result_and_figure_exists(results):
    readme = (ROOT / "README.md").read_text()
    assert set(results) == set(rr.NAMES), f"docs/results/ holds {sorted(results)}; {FIX}"
    # every figure the README shows is generated; every docs/results file it links exists
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme)
    assert figures and all(f.startswith("docs/results/") for f in figures), figures
    for link in set(figures) | set(re.findall(r"docs/results/[\w./-]+\.\w+", readme)):
        assert (ROOT / link).is_file(), f"README links {link}, which does not exist; {FIX}"
    for r in results.values():
        for fig in r.get("figures", {}).values():
            path = ROOT / fig["path"]
            assert path.is_file(), f"{fig['path']} is missing; {FIX}"
            assert hashlib.sha256(path.read_bytes()).hexdigest() == fig["sha256"], (
                f"{fig['path']} is not the figure of docs/results/{r['name']}.json; {FIX}"
            )


def test_results_come_from_the_current_sources(results):
    stale = {
        name: rr.stale_files(r["generated"]["source"]["files"], rr.source_files(rr.SOURCES[name]))
        for name, r in results.items()
    }
    stale = {name: files for name, files in stale.items() if files}
    assert not stale, (
        f"docs/results was made from other sources: {stale}; {FIX} and commit the "
        "results with the code"
    )


# ---------------------------------------------------------------- the machinery can fail
def test_a_changed_number_is_caught(results):
    """The guard is not vacuous: one number moved in the JSON changes the rendered README."""
    readme = (ROOT / "README.md").read_text()
    moved = copy.deepcopy(results)
    method = next(iter(moved["rtp-challenging"]["evaluate"].values()))
    method["mean"]["starc"] += 0.01
    assert rr.update_readme(readme, rr.render_blocks(moved)) != readme
    moved = copy.deepcopy(results)
    moved["toy"]["make_pairs"]["pairs"] += 1
    assert rr.update_readme(readme, rr.render_blocks(moved)) != readme


def test_update_readme_replaces_only_the_blocks():
    text = (
        "intro 1.0\n<!-- results:a -->\n\nold\n\n<!-- /results:a -->\n"
        "x <!-- results:b -->9<!-- /results:b -->.\n"
    )
    out = rr.update_readme(text, {"a": "| t |\n|---|", "b": "42"})
    assert out == (
        "intro 1.0\n<!-- results:a -->\n\n| t |\n|---|\n\n<!-- /results:a -->\n"
        "x <!-- results:b -->42<!-- /results:b -->.\n"
    )
    assert rr.update_readme(out, {"a": "| t |\n|---|", "b": "42"}) == out


@pytest.mark.parametrize(
    "text, blocks, message",
    [
        ("<!-- results:a -->x", {"a": "1"}, "never closed"),
        ("<!-- results:a --><!-- results:b -->", {}, "nested or repeated"),
        ("<!-- /results:a -->", {}, "closes no open block"),
        ("<!-- results:a -->x<!-- /results:a -->", {}, "no results"),
        ("no blocks here", {"a": "1"}, "lacks the blocks"),
    ],
)
def test_update_readme_rejects_bad_markers(text, blocks, message):
    with pytest.raises(FairlError, match=message):
        rr.update_readme(text, blocks)


def test_source_hash_sees_every_change(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "cfg.yaml").write_text("k: 1\n")
    before = rr.source_files(["pkg", "cfg.yaml"], tmp_path)
    assert list(before) == ["cfg.yaml", "pkg/a.py"]  # caches are not sources
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    (tmp_path / "pkg" / "b.py").write_text("")
    (tmp_path / "cfg.yaml").unlink()
    assert sorted(rr.stale_files(before, rr.source_files(["pkg", "cfg.yaml"], tmp_path))) == [
        "cfg.yaml (removed)",
        "pkg/a.py (changed)",
        "pkg/b.py (new)",
    ]


def test_missing_dataset_is_a_clear_error(tmp_path):
    cfg = tmp_path / "rtp.yaml"
    cfg.write_text(
        "run: {name: rtp}\nmake_pairs:\n  source: dataset\n  dataset:\n"
        f"    files: [{tmp_path / 'absent.jsonl'}]\n"
    )
    with pytest.raises(DataError, match="absent.jsonl.*does not exist") as e:
        rr.require_dataset_files(cfg)
    assert "../shared/data" in e.value.hint
