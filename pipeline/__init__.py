"""fairl: Failure-Aware Inverse RL for auditing RLHF-aligned language models.

The library behind the `fairl` command. Stages live in `pipeline.<stage>.run(cfg)`; the pieces
a user scripts against are re-exported here.
"""

from pipeline.config import ExperimentConfig, load_config
from pipeline.irl.reward import RewardModel, load_reward

__all__ = ["ExperimentConfig", "RewardModel", "load_config", "load_reward"]
__version__ = "0.1.0"
