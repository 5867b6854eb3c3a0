"""The stages: one module per `fairl` command, each with `run(cfg, force)`."""
