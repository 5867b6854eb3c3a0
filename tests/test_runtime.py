"""The thread policy (pipeline.runtime): tiny models run single-threaded, IRL training and big
models keep every core, and a count the user chose is never changed.

Thread counts are process-wide, so each scenario runs in a fresh interpreter; the tests only
read what it printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from pipeline.runtime import SMALL_WORK_PARAMS, default_threads, threads_for

ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
D = default_threads()

# Loads a tiny policy the way every stage does, then trains under the IRL context; prints the
# thread count at each point and whether the OpenMP workers flush denormals during training.
SCENARIO = """
import json, sys, torch
from pipeline.runtime import enable_flush_to_zero, run_flushing_denormals
from pipeline.policy.models import load_policy
from pipeline.runtime import SMALL_WORK_PARAMS, apply_threads_for_model

out = {"start": torch.get_num_threads(), "ftz_start": enable_flush_to_zero()}
if len(sys.argv) > 2:
    torch.set_num_threads(int(sys.argv[2]))         # the user's own choice, before fairl runs
load_policy(sys.argv[1])
out["small"] = torch.get_num_threads()
out["training"], out["ftz_training"] = run_flushing_denormals(
    lambda stop: (torch.get_num_threads(), enable_flush_to_zero()))
out["after_training"] = torch.get_num_threads()
big = torch.nn.Linear(SMALL_WORK_PARAMS // 1000, 1000)   # just above the threshold
out["big"] = apply_threads_for_model(big), torch.get_num_threads()
torch.set_num_threads(out["start"] + 1)             # the user's choice, after fairl set one
load_policy(sys.argv[1])
out["small_after_user"] = torch.get_num_threads()
out["training_after_user"] = run_flushing_denormals(lambda stop: torch.get_num_threads())
print(json.dumps(out))
"""


def run_python(code: str, *args: str, **env_vars: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(env_vars)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from tiny_models import build_causal_lm

    return str(build_causal_lm("gpt_neox", tmp_path_factory.mktemp("tiny") / "neox"))


@pytest.fixture(scope="module")
def default_run(tiny_policy):
    return run_python(SCENARIO, tiny_policy)


needs_cores = pytest.mark.skipif(D < 2, reason="one core: there is no thread count to choose")


def test_policy_choice_for_small_and_large_work():
    assert threads_for(150_000) == 1  # the offline world's GPT-NeoX
    assert threads_for(SMALL_WORK_PARAMS - 1) == 1
    assert threads_for(SMALL_WORK_PARAMS) == D
    assert threads_for(22_700_000) == D  # all-MiniLM-L6-v2
    assert threads_for(405_000_000) == D  # Pythia-410m


def test_default_threads_is_torchs_own_default(default_run):
    """The user's torch.set_num_threads is detected as a count different from torch's default,
    so default_threads() must be exactly what a fresh process gets."""
    assert default_run["start"] == D


@needs_cores
def test_small_policy_runs_single_threaded_and_training_keeps_every_core(default_run):
    r = default_run
    assert r["ftz_start"]
    assert r["small"] == 1
    # IRL training gets every core back, and the workers still flush denormals to zero
    assert r["training"] == D and r["ftz_training"]
    assert r["after_training"] == 1


@needs_cores
def test_big_model_keeps_every_core(default_run):
    assert default_run["after_training"] == 1 and default_run["big"] == [D, D]


@needs_cores
@pytest.mark.parametrize("var", ENV_VARS)
def test_thread_environment_variable_is_honoured(tiny_policy, default_run, var):
    r = run_python(SCENARIO, tiny_policy, **{var: str(D)})
    assert default_run["small"] == 1  # without the variable fairl picks one thread
    assert r["start"] == r["small"] == r["training"] == r["after_training"] == D
    assert r["big"] == [D, D]


@needs_cores
def test_torch_set_num_threads_by_the_user_is_honoured(tiny_policy, default_run):
    user = D + 1
    r = run_python(SCENARIO, tiny_policy, str(user))
    assert default_run["small"] == 1
    assert r["small"] == r["training"] == r["after_training"] == user
    assert r["big"] == [user, user]
    assert r["ftz_training"]
    # set after fairl had chosen one thread: kept too
    assert default_run["small_after_user"] == default_run["training_after_user"] == D + 1
