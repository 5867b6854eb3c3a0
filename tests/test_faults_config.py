"""Hostile and mistaken configs (issue 7 cases 1, 8, 11, 13): names that would reach outside the
run, duplicate YAML keys, non-finite numbers, and messages that point at the right place."""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_pairs_records, small_config, write_jsonl
from pydantic import BaseModel, ValidationError
from typer.testing import CliRunner

from cli.main import app
from pipeline.config import ExperimentConfig, format_validation_error, load_config
from pipeline.errors import ConfigError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# ------------------------------------------------------- case 1: names that become paths
@pytest.mark.parametrize(
    "name,victim",
    [
        ("../victim", "victim/irl"),  # a sibling of run.root
        ("..", "irl"),  # run.root's parent itself
        ("ABS", "abs/irl"),  # an absolute path (filled in below)
    ],
)
def test_a_run_name_outside_the_run_is_refused_and_deletes_nothing(tmp_path, name, victim):
    notes = tmp_path / victim / "notes.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("keep")
    if name == "ABS":
        name = str(tmp_path / "abs")
    cfg = small_config(
        tmp_path,
        write_jsonl(tmp_path / "p.jsonl", make_pairs_records(40)),
        methods=["mm"],
        seeds=[0],
    )
    res = invoke("irl", cfg, "--set", f"run.name={name}")
    assert res.exit_code == 2, res.output
    assert "run.name" in res.output and "plain name" in res.output
    assert "--set run.name=" in res.output and "Traceback" not in res.output
    assert notes.read_text() == "keep"
    assert not (tmp_path / victim / "manifest.json").exists()


BAD_NAMES = [
    "../x",
    "..",
    ".",
    "/tmp/x",
    "a/b",
    "a\\b",
    ".hidden",
    "",
    "a\nb",
    "tab\there",
    " lead",
    "trail ",
    "x" * 256,
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_that_are_not_plain_are_config_errors(name):
    with pytest.raises(ConfigError, match="plain name") as e:
        load_config(overrides=[f"run.name={json.dumps(name)}"])
    assert "run.name" in str(e.value)
    with pytest.raises(ConfigError, match="plain name") as e:  # they become re_rlhf/runs/<key>
        load_config(overrides=[f"re_rlhf.rewards={json.dumps({name: 'ground_truth'})}"])
    assert "re_rlhf.rewards key" in str(e.value)


def test_plain_and_numeric_names_are_accepted_as_written(tmp_path):
    for name in ["toy", "my run", "fa-irl", "über_lauf", "run.2", "x" * 255]:
        assert load_config(overrides=[f"run.name={json.dumps(name)}"]).run.name == name
    # a number is what the user wrote, not YAML's reading of it (007 would be 7, 0x1f 31)
    p = tmp_path / "c.yaml"
    p.write_text("run:\n  name: 2024\nre_rlhf:\n  rewards:\n    007: ground_truth\n")
    cfg = load_config(p)
    assert cfg.run.name == "2024" and list(cfg.re_rlhf.rewards) == ["007"]
    assert load_config(overrides=["run.name=0x1f"]).run.name == "0x1f"
    assert load_config(p, ["run.name=2025"]).stage_dir("irl") == Path("runs/2025/irl")
    # other non-text names: their YAML reading may not be what was written, so ask for quotes
    for value in ["1.5", "yes", "2024-01-01"]:
        with pytest.raises(ConfigError, match="in quotes"):
            load_config(overrides=[f"run.name={value}"])


# -------------------------------------------------------------- case 8: duplicate YAML keys
@pytest.mark.parametrize(
    "text,key,where,lines",
    [
        ("run:\n  name: a\nirl:\n  lr: 0.1\nrun:\n  name: b\n", "run", "at the top level", (1, 5)),
        ("irl:\n  seeds: [0]\n  lr: 0.1\n  seeds: [1, 2]\n", "seeds", "in section irl", (2, 4)),
        ("irl:\n  fa:\n    rounds: 3\n    rounds: 4\n", "rounds", "in section irl.fa", (3, 4)),
    ],
)
def test_duplicate_yaml_keys_are_config_errors_naming_key_line_and_section(
    tmp_path, text, key, where, lines
):
    p = tmp_path / "dup.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"'{key}' appears twice {where}" in msg and str(p) in msg
    assert f"lines {lines[0]} and {lines[1]}" in msg
    res = invoke("irl", p, "--set", f"run.root={tmp_path / 'runs'}")
    assert res.exit_code == 2 and "appears twice" in res.output and "Traceback" not in res.output


def test_duplicate_keys_in_a_set_value_and_merge_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"'rounds' appears twice in section irl\.fa"):
        load_config(overrides=["irl.fa={rounds: 3, rounds: 4}"])
    p = tmp_path / "merge.yaml"  # a YAML merge key may be overridden: that is not a duplicate
    p.write_text("irl:\n  <<: {lr: 0.1, batch_size: 8}\n  lr: 0.2\n")
    cfg = load_config(p)
    assert (cfg.irl.lr, cfg.irl.batch_size) == (0.2, 8)


# ---------------------------------------------------------- case 11b: non-finite numbers
def _float_keys(model: type[BaseModel], prefix: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann, key = field.annotation, f"{prefix}{name}"
        optional = typing.get_origin(ann) in (typing.Union, types.UnionType)
        kinds = typing.get_args(ann) if optional else (ann,)  # Optional[X] -> X
        sections = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if sections:
            out += _float_keys(sections[0], key + ".")
        elif float in kinds:
            out.append(key)
    return out


FLOAT_KEYS = _float_keys(ExperimentConfig, "")


def test_every_float_setting_rejects_inf_and_nan():
    assert {
        "irl.lr",
        "irl.fa.gamma_end",
        "train_expert.ppo.max_grad_norm",
        "evaluate.near_tie",
        "world.lr",
    } <= set(FLOAT_KEYS)
    accepted = []
    for key in FLOAT_KEYS:
        for value in (".inf", "-.inf", ".nan"):
            try:
                load_config(overrides=[f"{key}={value}"])
                accepted.append(f"{key}={value}")
            except ConfigError as e:
                assert key in str(e)
    assert not accepted


def test_an_infinite_learning_rate_in_the_file_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("irl:\n  lr: .inf\n")
    with pytest.raises(ConfigError, match=r"irl\.lr: Input should be a finite number \(got inf\)"):
        load_config(p)


# ------------------------------------------------------------------ case 13: the messages
def test_set_errors_are_attributed_to_the_set_not_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("irl:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, ["irl.batch_size=0"])
    msg = str(e.value)
    assert not msg.startswith(f"invalid {p}")
    assert msg.startswith(f"invalid config (from {p} and --set overrides)")
    assert (
        "irl.batch_size: Input should be greater than 0 (got 0) (from --set irl.batch_size=0)"
        in msg
    )
    p.write_text("irl:\n  lr: -1\n")  # the file's own error still names the file
    with pytest.raises(ConfigError) as e:
        load_config(p, ["irl.batch_size=0", "irl.margin=2"])
    msg = str(e.value)
    assert f"irl.lr: Input should be greater than 0 (got -1) (from {p})" in msg
    assert "(from --set irl.batch_size=0)" in msg
    p.write_text("irl:\n  lr: 0.1\n")  # a section-wide check names the --set it involves
    with pytest.raises(ConfigError, match=r"margin_fail.*\(with --set irl\.margin=2\)"):
        load_config(p, ["irl.margin=2"])
    res = invoke("irl", p, "--set", "irl.batch_size=0")
    assert res.exit_code == 2 and "(from --set irl.batch_size=0)" in res.output


def test_a_config_path_that_is_a_directory_says_so(tmp_path):
    res = invoke("irl", tmp_path)
    assert res.exit_code == 2
    assert "is a directory" in res.output and "does not exist" not in res.output


def test_giving_two_configs_is_a_config_error(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("irl: {}\n")
    b.write_text("irl: {}\n")
    res = invoke("irl", a, "--config", b)
    assert res.exit_code == 2, res.output
    assert "a.yaml" in res.output and "b.yaml" in res.output and "once" in res.output


def test_validation_messages_print_plain_values_not_numpy_reprs():
    with pytest.raises(ValidationError) as e:
        ExperimentConfig.model_validate(
            {"irl": {"batch_size": np.int64(0), "seeds": [np.int64(1), "x"]}}
        )
    msg = format_validation_error(e.value)
    assert "np." not in msg and "(got 0)" in msg and "(got 'x')" in msg


def test_an_unknown_compare_method_is_a_config_error(tmp_path):
    res = invoke(
        "evaluate",
        "--set",
        f"run.root={tmp_path}",
        "--set",
        "evaluate.compare=[[fa-me-margin, maxent]]",
    )
    assert res.exit_code == 2, res.output
    assert "evaluate.compare" in res.output and "'maxent'" in res.output


# ------------------------------------------------------------ existing behaviour is kept
def test_every_shipped_config_loads():
    """Not a fault: the guard that the stricter loader refuses none of configs/**/*.yaml."""
    paths = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(paths) >= 8  # experiments/ included
    for path in paths:
        assert load_config(path).run.name == path.stem
