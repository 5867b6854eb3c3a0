"""The policy side: models and sampling (models), PPO (ppo), the RL loop (rl), curves (plots)."""
