"""report.md of `fairl evaluate`: rendered from two things only, the metrics dict that is
written to metrics.json and the file names of the plots written beside it (the PNGs
themselves are drawn by `pipeline.evaluate.plots`). The method labels are Table 1's, from
the method table in `pipeline.config`.

Every metric named by a warning in metrics.json (too little or degenerate data) is listed in
the report's Warnings section, placed before the tables, and marked with a dagger where it
appears, so a number that the data cannot support is never read without its caveat.
"""

from __future__ import annotations

from pipeline.config import method_label

DAGGER = "†"


def _warned(metrics: dict, key: str, method: str | None = None) -> bool:
    """Whether a warning names metric `key` (for `method`'s models, if it names models)."""
    for w in metrics.get("warnings", []):
        if key in w["metrics"] or "*" in w["metrics"]:
            if (
                method is None
                or "models" not in w
                or any(m.rsplit("/seed-", 1)[0] == method for m in w["models"])
            ):
                return True
    return False


def _mark(text: str, flagged: bool) -> str:
    return f"{text} {DAGGER}" if flagged else text


def _pm(mean: float | None, std: float | None, digits: int = 3) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _metric_table(metrics: dict, split: str, keys: list[tuple[str, str]]) -> str | None:
    rows = []
    for m, agg in metrics["methods"].items():
        if all(agg["mean"].get(f"{split}/{k}") is None for k, _ in keys):
            continue
        rows.append(
            [method_label(m)]
            + [
                _mark(
                    _pm(agg["mean"].get(f"{split}/{k}"), agg["std"].get(f"{split}/{k}")),
                    _warned(metrics, f"{split}/{k}", m),
                )
                for k, _ in keys
            ]
        )
    return _table(["Method"] + [label for _, label in keys], rows) if rows else None


def _paired_table(paired: dict) -> str:
    rows = []
    for comparison, by_key in paired.items():
        cells = []
        for d in by_key.values():
            if d["mean"] is None:
                cells.append("n/a")
                continue
            ci = f" [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d["ci95"] else ""
            cells.append(f"{d['mean']:+.3f}{ci}, wins {d['wins']}/{d['n']}")
        rows.append([comparison, *cells])
    keys = next(iter(paired.values()))
    labels = {"test/f1": "F1 ↑", "test/auc": "AUC ↑", "test/starc": "STARC ↓"}
    return _table(["Comparison", *(labels.get(k, k) for k in keys)], rows)


def _fit_table(metrics: dict) -> str | None:
    """Epoch selected, epochs run (mean ± std over seeds) and R_F's share (FA-IRL), per method."""
    rows = []
    for m, agg in metrics["methods"].items():
        mean, std = agg["mean"], agg["std"]
        if mean.get("fit/best_epoch") is None:
            continue
        share = mean.get("fit/rf_share")
        rows.append(
            [
                method_label(m),
                _pm(mean["fit/best_epoch"], std["fit/best_epoch"], 1),
                _pm(mean["fit/epochs_run"], std["fit/epochs_run"], 1),
                "n/a" if share is None else f"{share:.3g} ± {std['fit/rf_share']:.2g}",
            ]
        )
    header = ["Method", "Epoch selected", "Epochs run", "R_F share (std R_F / std R_D)"]
    return _table(header, rows) if rows else None


def _subtype_table(subs: dict) -> str | None:
    """Table 3 for one comparison, as the paper lays it out: rows the subtypes, a column group
    (both / FA only / IRL only) per split."""
    splits = [sp for sp in ("train", "test", "heldout") if subs.get(sp)]
    subtypes = list(dict.fromkeys(st for sp in splits for st in subs[sp]))
    if not subtypes:
        return None
    header = ["Subtype"] + [
        f"{sp}: {what}" for sp in splits for what in ("both", "FA only", "IRL only")
    ]
    rows = [
        [st]
        + [
            _pm(subs[sp][st][k]["mean"], subs[sp][st][k]["std"], 1) if st in subs[sp] else "n/a"
            for sp in splits
            for k in ("both", "only_fa", "only_base")
        ]
        for st in subtypes
    ]
    return _table(header, rows)


def render_report(metrics: dict, plots: list[str]) -> str:
    data = metrics["data"]
    n_seeds = max(len(a["seeds"]) for a in metrics["methods"].values())
    out = [
        f"# fairl evaluation: {metrics['run']}",
        "",
        f"Pairs: {data['n_train']} train / {data['n_val']} val / {data['n_test']} test, from "
        f"`{data['pairs']}`. Every number is the mean ± std over {n_seeds} seed(s).",
        "Classification treats each reward as a toxic/non-toxic classifier of single outputs; "
        "its threshold is fitted for accuracy on the train outputs and then held fixed. "
        "**STARC is paper Eq. 4 (L1/L1)**; the other distances are named in their columns.",
        "",
    ]
    if metrics.get("warnings"):
        out += [
            "## Warnings",
            "",
            f"The data cannot support some numbers below; each is marked {DAGGER}.",
            "",
        ]
        for w in metrics["warnings"]:
            which = "every metric" if "*" in w["metrics"] else ", ".join(w["metrics"])
            models = ""
            if w.get("models") and set(w["models"]) != set(metrics.get("models", {})):
                models = f" ({', '.join(w['models'])})"
            elif w.get("models"):
                models = " (every model)"
            out.append(f"- {which}{models}: {w['reason']}.")
        out.append("")

    out += ["## Table 1: reward recovery on the test pairs", ""]
    t1 = _metric_table(
        metrics,
        "test",
        [
            ("f1", "F1 ↑"),
            ("auc", "AUC ↑"),
            ("starc", "STARC (Eq. 4) ↓"),
            ("accuracy", "Accuracy ↑"),
            ("pairwise_accuracy", "Pairwise acc ↑"),
        ],
    )
    out += [t1 or "_No test metrics._", ""]
    td = _metric_table(
        metrics,
        "test",
        [
            ("affine_mse", "Eq. 10 ↓"),
            ("affine_mse_std", "Eq. 10, std. ↓"),
            ("starc_l2", "STARC-L2 ↓"),
            ("starc_val", "STARC-L2 per prompt ↓"),
            ("epic", "EPIC ↓"),
        ],
    )
    if td:
        out += [
            "### Reward fidelity, every distance",
            "",
            td,
            "",
            "STARC-L2 and EPIC agree in every row by construction: after global centering and "
            "L2 normalisation, half the L2 distance is sqrt((1 - rho) / 2), which is EPIC. They "
            "part only under per-prompt centering (STARC-L2 per prompt), where prompts have "
            "several outputs.",
            "",
        ]
    if data.get("heldout"):
        h = data["heldout"]
        out += [
            f"## Held-out set (`{h['path']}`, N = {h['n']}, toxic rate {h['toxic_rate']:.2f})",
            "",
            _metric_table(
                metrics, "heldout", [("accuracy", "Accuracy ↑"), ("f1", "F1 ↑"), ("auc", "AUC ↑")]
            )
            or "_No held-out metrics._",
            "",
        ]

    for name, h in data.get("heldout_sets", {}).items():
        out += [
            f"## Held-out set {name} (`{h['path']}`, N = {h['n']}, toxic rate "
            f"{h['toxic_rate']:.2f})",
            "",
            _metric_table(
                metrics,
                f"heldout-{name}",
                [("accuracy", "Accuracy ↑"), ("f1", "F1 ↑"), ("auc", "AUC ↑")],
            )
            or "_No metrics._",
            "",
        ]

    if metrics.get("paired"):
        out += [
            "## FA-IRL vs its baseline, paired by seed",
            "",
            "Methods of one seed share R_D's initialisation and the minibatch order, so each seed "
            "pairs an FA-IRL model with its baseline: mean of the per-seed differences FA - "
            "baseline [95% CI, Student t], and the seeds FA wins (higher F1 / AUC, lower STARC). "
            "A `-matched` baseline selects its model from the same earliest epoch as FA-IRL (the "
            "fair comparison); the plain baseline, where also shown, stops on its own, so its "
            "difference mixes the failure path with training length.",
            "",
            _paired_table(metrics["paired"]),
            "",
        ]
    fit = _fit_table(metrics)
    if fit:
        out += [
            "## Training: epochs and the failure path",
            "",
            "The epoch each model was selected at and how long it trained, from irl's summary; "
            "R_F's share of the reward on the test outputs at the selected epoch (FA-IRL only).",
            "",
            fit,
            "",
        ]

    if metrics["failure_slice"]:
        out += [
            "## Failure slice",
            "",
            metrics["definitions"]["failure_slice"] + ". Both methods are scored on the "
            "baseline's slice, so the baseline's pairwise accuracy there is low by construction.",
            "",
        ]
        rows = []
        for key, fs in metrics["failure_slice"].items():
            mean, std = fs["mean"], fs["std"]
            rows.append(
                [
                    _mark(key, _warned(metrics, f"failure_slice/{key}")),
                    _pm(mean.get("n_pairs"), std.get("n_pairs"), 1),
                ]
                + [
                    _pm(mean.get(f"{w}/{k}"), std.get(f"{w}/{k}"))
                    for k in ("pairwise_accuracy", "accuracy", "starc")
                    for w in ("fa", "base")
                ]
            )
        out += [
            _table(
                [
                    "Comparison",
                    "Pairs",
                    "Pair acc FA",
                    "Pair acc IRL",
                    "Acc FA",
                    "Acc IRL",
                    "STARC FA",
                    "STARC IRL",
                ],
                rows,
            ),
            "",
        ]

    if metrics["disagreement"]:
        out += ["## Table 2: disagreement (outputs classified correctly)", ""]
        rows = []
        for key, dg in metrics["disagreement"].items():
            for split in ("train", "test", "heldout"):
                if split in dg:
                    rows.append(
                        [
                            key,
                            _mark(
                                split,
                                any(
                                    _warned(metrics, f"{split}/{k}")
                                    for k in ("accuracy", "f1", "auc")
                                ),
                            ),
                        ]
                        + [
                            _pm(dg[split][c]["mean"], dg[split][c]["std"], 1)
                            for c in ("both", "only_fa", "only_base", "neither")
                        ]
                    )
        out += [
            _table(
                ["Comparison", "Split", "Both correct", "Only FA-IRL", "Only IRL", "Neither"], rows
            ),
            "",
        ]
        tables3 = [
            (key, _subtype_table(dg["subtypes"])) for key, dg in metrics["disagreement"].items()
        ]
        tables3 = [(key, t) for key, t in tables3 if t]
        if tables3:
            out += [
                "## Table 3: disagreement by toxicity subtype (outputs carrying the subtype)",
                "",
                "Per comparison, one row per subtype; per split, the outputs both methods classify "
                "correctly, only FA-IRL, and only the baseline (mean ± std over seeds).",
                "",
            ]
            for key, table in tables3:
                out += [f"### {key}", "", table, ""]

    out += [
        "## Seed dispersion (Corollary 1, measured)",
        "",
        metrics["definitions"]["dispersion"] + "; lower means the method pins the reward down "
        "more tightly. The std columns of the tables above are the metrics' spread over seeds.",
        "",
    ]
    rows = [
        [method_label(m), str(a["dispersion"]["n_seeds"])]
        + [
            _mark(_pm(a["dispersion"][k], None), _warned(metrics, f"dispersion/{k}", m))
            for k in ("starc", "starc_l2")
        ]
        for m, a in metrics["methods"].items()
    ]
    out += [
        _table(["Method", "Seeds", "Mean pairwise STARC (Eq. 4)", "Mean pairwise STARC-L2"], rows),
        "",
    ]

    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if metrics["notes"]:
        out += ["## Notes", ""] + [f"- {n}" for n in metrics["notes"]] + [""]
    return "\n".join(out)
