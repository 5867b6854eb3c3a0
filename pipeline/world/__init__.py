"""The offline detoxification world (grammar.py: corpus and exact ground truth; build.py: the
cached files and base LM). `resolve` turns config values `world` / `world:<item>` into paths."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.world.build import get_world
from pipeline.world.hard import CUE


def style_markers(cfg) -> dict[str, str]:
    """Phrases whose rate in a policy's samples re-rlhf tracks (metric `<name>`): the hard
    world's spurious cue, which carries no ground-truth weight; none elsewhere."""
    if cfg.world is not None and cfg.world.kind == "hard":
        return {"cue_rate": CUE}
    return {}


def is_ref(value) -> bool:
    return isinstance(value, (str, Path)) and (
        str(value) == "world" or str(value).startswith("world:")
    )


def resolve(value, cfg, default_item: str) -> str:
    """The path a `world` reference stands for (building the world if needed); other values
    are returned unchanged."""
    if not is_ref(value):
        return str(value)
    if cfg.world is None:
        raise ConfigError(
            f"the config refers to {value!r} but has no `world` section",
            hint="add `world: {}` (defaults) to build the offline world",
        )
    item = str(value).split(":", 1)[1] if ":" in str(value) else default_item
    return str(get_world(cfg.world).item(item))
