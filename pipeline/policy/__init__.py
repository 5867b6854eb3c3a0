"""The policy side: models and sampling (models), PPO (ppo), the RL driver (rl), the stages."""


def train_expert_run(cfg, force: bool = False):
    from pipeline.policy.stages import train_expert_run as run

    return run(cfg, force=force)


def re_rlhf_run(cfg, force: bool = False):
    from pipeline.policy.stages import re_rlhf_run as run

    return run(cfg, force=force)
