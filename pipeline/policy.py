"""The policy side: `fairl train-expert` and `fairl re-rlhf` (PPO against a reward).

Not built yet. Both commands exist so the pipeline's shape is complete; they exit non-zero with
a plain message and write nothing, rather than fake a result.
"""

from __future__ import annotations

from pipeline.config import ExperimentConfig
from pipeline.errors import NotBuiltError


def train_expert_run(cfg: ExperimentConfig, force: bool = False):
    raise NotBuiltError(
        "fairl train-expert (PPO against a toxicity classifier) is not built yet; nothing was written",
        hint="bring pairs from elsewhere: `fairl irl` and `fairl evaluate` work on any pairs file")


def re_rlhf_run(cfg: ExperimentConfig, force: bool = False):
    raise NotBuiltError(
        "fairl re-rlhf (fine-tuning with an extracted reward) is not built yet; nothing was written",
        hint="the rewards from `fairl irl` load today with pipeline.load_reward(path).score(texts)")
