"""The `fairl` command: one thin Typer command per pipeline stage, plus `fairl run` to chain them.

Each command loads the YAML config, applies `--set` overrides, validates, and calls
`pipeline.stages.<stage>.run(cfg, force)` (the table `COMMANDS`). User errors print a message
and a hint and exit non-zero (1 other, 2 config, 3 data, 4 missing upstream artifact, 5 diverged
training, 130 interrupted); nothing half-written is ever published.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pipeline.artifacts import os_error
from pipeline.config import (
    STAGES,
    AuditSection,
    EvaluateSection,
    GroundTruthSection,
    IRLSection,
    MakePairsSection,
    PromptsSection,
    RefineSection,
    ReRLHFSection,
    RunSection,
    SweepSection,
    TrainExpertSection,
    WorldSection,
    describe_section,
    load_config,
)
from pipeline.distributed import (
    distributed_rank,
    is_distributed,
    rank_barrier_group,
    runs_on_this_rank,
    wait_for_all_ranks,
)
from pipeline.errors import ConfigError, FairlError

app = typer.Typer(
    name="fairl",
    help="Audit RLHF-aligned language models with Failure-Aware Inverse RL (FA-IRL).\n\n"
    "Stages chain through files: train-expert -> make-pairs -> irl -> evaluate -> re-rlhf, "
    "each writing runs/<run.name>/<stage>/ with a manifest.json.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigArg = Annotated[
    Path | None, typer.Argument(help="Experiment YAML (same as --config).", show_default=False)
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Experiment YAML: one section per stage (see configs/).",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override a config value, section.key=value (YAML value). Repeatable.",
        show_default=False,
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", help="Redo the stage even if its published output matches this config."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")]


# the sections every stage reads beside its own
SHARED_SECTIONS = (
    (RunSection, "run"),
    (WorldSection, "world"),
    (GroundTruthSection, "ground_truth"),
    (PromptsSection, "prompts"),
)


def _epilog(section_cls, name: str) -> str:
    keys = [k for cls, n in SHARED_SECTIONS for k in describe_section(cls, n)]
    keys += describe_section(section_cls, name)
    return "Config keys (YAML section, or --set key=value; defaults as YAML):\n\n" + "\n\n".join(
        keys
    )


def _version(value: bool) -> None:
    if value:
        from pipeline import __version__

        typer.echo(f"fairl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", help="Print fairl's version and exit.", callback=_version, is_eager=True
        ),
    ] = None,
) -> None:
    """Audit RLHF-aligned language models with Failure-Aware Inverse RL (FA-IRL)."""


def _setup_logging(quiet: bool) -> None:
    from pipeline.runtime import enable_flush_to_zero  # imports torch: not at the top (--help)

    enable_flush_to_zero()  # before any parallel torch kernel creates the worker pool
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers' weight-loading and shard-writing bars and datasets' map bars: noise next to
    # our own bars. The hub's download bars stay: a first paper run downloads about 1 GB.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        from huggingface_hub.utils import enable_progress_bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # transformers' own bars (and, as a side effect, hub's)
        if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:
            enable_progress_bars()  # the downloads' bars, unless the user switched them off
    except ImportError:  # pragma: no cover
        pass


def _invoke(fn: Callable[[], Path | str | None]) -> None:
    try:
        if is_distributed():
            rank_barrier_group()  # a data-parallel launch: join the ranks while they are in step
        out = fn()
    except FairlError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except OSError as e:
        # Disk full, a read-only or missing directory, a file where a directory belongs: the
        # machine's state, not a bug, so the path and a hint instead of a traceback (exit 1).
        err = os_error(e)
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the exit short
        typer.echo(
            "interrupted: nothing was published; the next run starts this stage afresh "
            "(or resumes it where the stage supports that)",
            err=True,
        )
        raise typer.Exit(130) from None
    if out is not None and distributed_rank() == 0:
        typer.echo(str(out))


def _load(config: Path | None, config_opt: Path | None, overrides: list[str] | None):
    """The validated config. Two different config paths are a config error (exit 2): which
    one was meant cannot be guessed. The same file named twice, by any spelling, is fine."""
    if (
        config is not None
        and config_opt is not None
        and config.absolute().resolve() != config_opt.absolute().resolve()
    ):
        raise ConfigError(
            f"two configs given: {config} (argument) and {config_opt} (--config)",
            hint="give the config once: as an argument or with --config, not both",
        )
    cfg = load_config(config_opt or config, overrides or [])
    from pipeline.runtime import resolve_placement, set_placement  # imports torch (not --help)

    set_placement(resolve_placement(cfg.run.device, cfg.run.precision))
    return cfg


# One table: each command, its stage module (pipeline/stages/<stage>.py), its config section.
COMMANDS = {
    "train-expert": (
        "train_expert",
        TrainExpertSection,
        "RLHF a base LM into a detoxified expert with PPO against a toxicity classifier.",
    ),
    "make-pairs": (
        "make_pairs",
        MakePairsSection,
        "Make preference pairs (base vs expert completions, or scored dataset continuations).",
    ),
    "irl": (
        "irl",
        IRLSection,
        "Recover the reward with Max-Margin, Max-Entropy and FA-IRL (every method x seed).",
    ),
    "evaluate": (
        "evaluate",
        EvaluateSection,
        "Score every recovered reward against the ground truth; write metrics.json, "
        "report.md and plots.",
    ),
    "re-rlhf": (
        "re_rlhf",
        ReRLHFSection,
        "Fine-tune a base model with an extracted reward and measure its toxicity.",
    ),
}


def _dispatch(stage: str, cfg, force: bool = False) -> Path | None:
    """`pipeline.stages.<stage>.run`, imported here (not at the top) so that `--help` does not
    load torch. Under a data-parallel launch, stages that are not data-parallel run on rank 0
    only."""
    if not runs_on_this_rank(stage):
        return None
    return importlib.import_module(f"pipeline.stages.{stage}").run(cfg, force=force)


def _stage_command(command: str, stage: str, section_cls, help_text: str) -> None:
    def cmd(
        config: ConfigArg = None,
        config_opt: ConfigOpt = None,
        set_: SetOpt = None,
        force: ForceOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        _setup_logging(quiet)
        _invoke(lambda: _dispatch(stage, _load(config, config_opt, set_), force))

    cmd.__doc__ = help_text
    app.command(command, epilog=_epilog(section_cls, stage), help=help_text)(cmd)


# The flywheel's stages (issue 11): not part of `fairl run`'s chain.
FLYWHEEL_COMMANDS = {
    "audit": (
        "audit",
        AuditSection,
        "Red-team one reward (audit.reward) with probe families judged by audit.judge; write "
        "findings.parquet, report.md and plots.",
    ),
    "refine": (
        "refine",
        RefineSection,
        "A new version of the audited reward from the triage's accepted findings (the parent "
        "is kept); write refine/reward/.",
    ),
}

for _command, (_stage, _section, _help) in {**COMMANDS, **FLYWHEEL_COMMANDS}.items():
    _stage_command(_command, _stage, _section, _help)


@app.command(
    "run",
    epilog="Stages run in pipeline order: " + ", ".join(STAGES) + ". Default: "
    "every stage whose section appears in the config file (or run.stages).",
)
def run_all(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    set_: SetOpt = None,
    defaults: Annotated[
        bool,
        typer.Option(
            "--defaults",
            help="Run without a config file: every stage on the paper defaults (hub models and "
            "data, hours on a GPU).",
        ),
    ] = False,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every stage of the config in order, skipping those already done with this config."""
    _setup_logging(quiet)

    def chain() -> None:
        if config is None and config_opt is None and not defaults:
            raise ConfigError(
                "fairl run needs a config file",
                hint="fairl run configs/toy.yaml (offline, minutes), or --defaults for every "
                "stage on the paper's defaults",
            )
        if defaults and (config is not None or config_opt is not None):
            raise ConfigError(
                "fairl run got a config file and --defaults", hint="give one of the two"
            )
        cfg = _load(config, config_opt, set_)
        from pipeline.stages import run as pipeline_run  # every stage: torch and the rest

        outputs = pipeline_run.run(cfg, force)
        if distributed_rank() > 0:
            return
        for stage in outputs:
            typer.echo(f"{stage}: {outputs[stage]}")
        if "re_rlhf" in outputs:
            typer.echo(f"curves: {outputs['re_rlhf'] / 'curves.png'}")
        if "evaluate" in outputs:
            typer.echo(f"report: {outputs['evaluate'] / 'report.md'}")

    _invoke(chain)


@app.command("push")
def push(
    reward: Annotated[
        Path,
        typer.Argument(
            help="A reward directory (runs/<name>/irl/rewards/<method>/seed-<s>, or a refined "
            "version).",
            show_default=False,
        ),
    ],
    repo_id: Annotated[
        str, typer.Argument(help="The hub repo, org/name (created if needed).", show_default=False)
    ],
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to push to.", show_default=False)
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Upload a reward (weights, reward.json, sentence-transformers export) and its model card
    to the Hugging Face Hub; `load_reward("hf:org/name")` loads it back. Needs `hf auth login`."""
    _setup_logging(quiet)

    def go() -> str:
        from pipeline.hub import push_reward
        from pipeline.irl.reward import load_reward  # torch: not at the top

        card = load_reward(reward).card()  # the reward is verified before anything is uploaded
        return push_reward(reward, repo_id, card, private, revision)

    _invoke(go)


@app.command("env")
def env() -> None:
    """Print versions, devices, threads and cache paths (paste it into a bug report)."""
    import yaml

    from pipeline.env import environment  # imports torch: not at the top (--help)

    typer.echo(yaml.safe_dump(environment(), sort_keys=False, width=100).rstrip())


@app.command(
    "sweep",
    epilog="Config keys (YAML section, or --set key=value):\n\n"
    + "\n\n".join(describe_section(SweepSection, "sweep")),
)
def sweep(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    set_: SetOpt = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            "-g",
            help="A swept key and its values, key=v1,v2,... (YAML values); adds to sweep.grid. "
            "Repeatable.",
            show_default=False,
        ),
    ] = None,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run every combination of sweep.grid as its own run (shared upstream stages once), then
    compare them."""
    _setup_logging(quiet)

    def go() -> Path:
        path = config_opt or config
        if path is None:
            raise ConfigError(
                "fairl sweep needs a config file", hint="fairl sweep CONFIG --grid ..."
            )
        _load(config, config_opt, set_)  # the config errors before anything runs
        from pipeline.stages.sweep import sweep as run_sweep  # the stages: torch and the rest

        return run_sweep(path, set_ or [], grid or [], force)

    _invoke(go)


@app.command("triage")
def triage(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    set_: SetOpt = None,
    oracle: Annotated[
        str | None,
        typer.Option(
            "--oracle",
            help="A judge decides every undecided finding: ground_truth, or a reward directory.",
            show_default=False,
        ),
    ] = None,
    export: Annotated[
        Path | None,
        typer.Option(
            "--export", help="Write the findings as a CSV to decide in.", show_default=False
        ),
    ] = None,
    import_: Annotated[
        Path | None,
        typer.Option(
            "--import", help="Read the decisions of a CSV made by --export.", show_default=False
        ),
    ] = None,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="Serve the triage web page on 127.0.0.1 (extra fairl[ui])."),
    ] = False,
    port: Annotated[int, typer.Option("--port", help="The page's port.")] = 7860,
    who: Annotated[
        str | None,
        typer.Option("--who", help="Who decides (default: the user name).", show_default=False),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Decide on the findings of `fairl audit` (accept, reject, relabel); every way in appends
    to runs/<name>/triage/triage.jsonl."""
    _setup_logging(quiet)

    def go() -> Path:
        cfg = _load(config, config_opt, set_)
        chosen = [x for x in (oracle, export, import_) if x is not None] + ([1] if serve else [])
        if len(chosen) != 1:
            raise ConfigError(
                "fairl triage needs exactly one of --serve, --oracle, --export, --import",
                hint="e.g. fairl triage CONFIG --serve, or --oracle ground_truth",
            )
        from pipeline.stages import triage as stage  # pandas and the scorers

        if serve:
            return stage.serve(cfg, port, who)
        if oracle is not None:
            return stage.oracle(cfg, oracle)
        if export is not None:
            return stage.export(cfg, export)
        return stage.import_(cfg, import_, who)

    _invoke(go)


@app.command("flywheel")
def flywheel(
    config: ConfigArg = None,
    config_opt: ConfigOpt = None,
    set_: SetOpt = None,
    cycles: Annotated[
        int, typer.Option("--cycles", help="Audit -> triage -> refine cycles.", min=1)
    ] = 3,
    oracle: Annotated[
        str,
        typer.Option(
            "--oracle", help="The judge that triages: ground_truth or a reward directory."
        ),
    ] = "ground_truth",
    rl: Annotated[
        bool,
        typer.Option(
            "--re-rlhf",
            help="Then re-RLHF the base LM with the ground truth, version 0 and the last "
            "version (re_rlhf.seeds) and report how much of the toxicity gap it closes.",
        ),
    ] = False,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Its directory under runs/<name>/: another name keeps several flywheels of one "
            "run side by side (other audit.seed / refine.seed, another oracle).",
        ),
    ] = "flywheel",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Audit, triage (by the oracle) and refine the reward audit.reward, `--cycles` times; then
    a report over the versions (runs/<name>/<out>/report/)."""
    _setup_logging(quiet)

    def go() -> Path:
        cfg = _load(config, config_opt, set_)
        from pipeline.stages import flywheel as stage  # every stage: torch and the rest

        return stage.run(cfg, cycles, oracle, force, rl, out) / "report.md"

    _invoke(go)


@app.command("compare")
def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run directories (<run.root>/<run.name>, each with evaluate/ and irl/), two or "
            "more.",
            metavar="RUN_DIR...",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Where to write report.md and comparison.json."),
    ] = Path("runs/compare"),
    quiet: QuietOpt = False,
) -> None:
    """Compare runs that evaluated the same test pairs: what differs in their configs, and each
    method's test F1, AUC and STARC in every run."""
    _setup_logging(quiet)

    def go() -> Path:
        from pipeline.evaluate.compare import compare_runs  # pandas: not for --help

        return compare_runs(runs, out) / "report.md"

    _invoke(go)


def _end_distributed() -> None:
    """Tear the process group down before exit: gloo aborts the process otherwise."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        wait_for_all_ranks()  # rank 0 may still be evaluating or writing
        dist.destroy_process_group()


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if e.code in (0, None):
            _end_distributed()
        if e.code == 130:
            # Interrupted: everything is already cleaned up (nothing was published). Leave now,
            # so interpreter teardown (library threads, a late second signal) cannot turn the
            # documented exit status 130 into a kill by SIGINT.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise


if __name__ == "__main__":
    main()
