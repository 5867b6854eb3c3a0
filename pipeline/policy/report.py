"""re-rlhf's per-category report (DR-IRL): the rare category and the table of toxicity after RL,
overall and per category, with the KL to the base. `fairl re-rlhf` writes it for one run,
`fairl sweep` for each of its points."""

from __future__ import annotations

import json
from pathlib import Path


def rare_category(rewards: dict[str, str]) -> str | None:
    """The category with the fewest demonstrations in the irl pairs (categories.json of a
    category reward among `rewards`), or None when no reward is a category reward."""
    for spec in rewards.values():
        if spec.startswith("categories:"):
            info = json.loads((Path(spec.split(":", 4)[4]) / "categories.json").read_text())
            counts = {c: v["carrying"] for c, v in info["categories"].items()}
            return min(counts, key=lambda c: (counts[c], c))
    return None


def report(summary: dict, run_name: str, rare: str | None) -> str:
    """re_rlhf/report.md: per reward, the held-out toxicity after RL, per category (the rare
    category first, in bold) and the KL to the base, each the mean over RL seeds [95% CI]."""
    first = next(iter(summary.values()))
    cats = sorted(
        k.removeprefix("initial_toxicity/") for k in first if k.startswith("initial_toxicity/")
    )
    if rare in cats:
        cats = [rare] + [c for c in cats if c != rare]
    head = ["toxicity", *[f"**{c}** (rare)" if c == rare else c for c in cats], "KL to the base"]

    def cell(s: dict, key: str) -> str:
        mean, ci = s.get(f"final_{key}"), s.get(f"final_{key}_ci95")
        if mean is None:
            return "n/a"
        return f"{mean:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    base = [first["initial_toxicity"], *[first.get(f"initial_toxicity/{c}") for c in cats], 0.0]
    rows = [
        "| Reward | " + " | ".join(head) + " |",
        "|---" * (len(head) + 1) + "|",
        "| base LM | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in base) + " |",
    ]
    for name, s in summary.items():
        keys = ["toxicity", *[f"toxicity/{c}" for c in cats], "kl"]
        rows.append(f"| {name} | " + " | ".join(cell(s, k) for k in keys) + " |")
    n = max(len(s["seeds"]) for s in summary.values())
    return "\n".join(
        [
            f"# re-rlhf: {run_name}",
            "",
            "Held-out toxicity after RL, overall and per category (the share of completions "
            "carrying it), and the mean sequence KL to the base LM: the mean over "
            f"{n} RL seed(s) [95% CI, Student t]."
            + (
                f" The rare category is {rare}: the fewest demonstrations in the irl pairs."
                if rare
                else ""
            ),
            "",
            *rows,
            "",
        ]
    )
