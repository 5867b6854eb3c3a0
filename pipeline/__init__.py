"""fairl: Failure-Aware Inverse RL for auditing RLHF-aligned language models.

The library behind the `fairl` command. Each command's recipe is `pipeline.stages.<stage>.run`;
the pieces a user scripts against are re-exported here. `RewardModel`, `load_reward` and
`reward_function` (a reward as a TRL reward function) need torch: they are imported on first
use (PEP 562 `__getattr__`), so that `import pipeline.config` and `fairl --help` do not load it.
"""

from pipeline.config import ExperimentConfig, load_config

__all__ = ["ExperimentConfig", "RewardModel", "load_config", "load_reward", "reward_function"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in ("RewardModel", "load_reward", "reward_function"):
        from pipeline.irl import reward  # torch: on first use only

        return getattr(reward, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
