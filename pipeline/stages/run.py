"""`fairl run`: every stage of the config, in pipeline order, each skipped when its published
output already matches the config (pipeline.artifacts.run_stage).

The chain is the one module allowed to import the other stages (tests/test_imports.py): it is
the pipeline's recipe at the top level, train-expert -> make-pairs -> irl -> evaluate -> re-rlhf,
reading and writing nothing itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from pipeline.config import ExperimentConfig
from pipeline.distributed import runs_on_this_rank, wait_for_all_ranks
from pipeline.stages import evaluate, irl, make_pairs, re_rlhf, train_expert

log = logging.getLogger("fairl")

STAGE_RUNNERS: dict[str, Callable[[ExperimentConfig, bool], Path]] = {
    "train_expert": train_expert.run,
    "make_pairs": make_pairs.run,
    "irl": irl.run,
    "evaluate": evaluate.run,
    "re_rlhf": re_rlhf.run,
}


def run(cfg: ExperimentConfig, force: bool = False) -> dict[str, Path | None]:
    """Run `cfg.stages_to_run()` in order; returns each stage's published directory (None on
    the ranks of a data-parallel launch that do not run it)."""
    if cfg.sweep.grid:
        log.warning(
            "the config has a sweep.grid (%s), which `fairl run` ignores: it runs the config as "
            "it is; `fairl sweep` runs the grid",
            ", ".join(cfg.sweep.grid),
        )
    outputs: dict[str, Path | None] = {}
    for stage in cfg.stages_to_run():
        log.info("== %s ==", stage)
        outputs[stage] = STAGE_RUNNERS[stage](cfg, force) if runs_on_this_rank(stage) else None
        wait_for_all_ranks()  # data-parallel launch: the next stage reads what rank 0 wrote
    return outputs
