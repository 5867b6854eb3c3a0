"""`fairl irl`: recover the reward the expert internalised (paper Sections 3-5, Algorithm 1).

Reads a pairs file (README: Pairs schema), writes `runs/<name>/irl/`:

    pairs.parquet        the validated pairs with pair_id and the resolved split (train/val/test)
    rewards/<method>/seed-<s>/   one reward each: reward.safetensors + reward.json
                                 (+ sentence-transformer/ export)
    categories/          with irl.categories (DR-IRL): <c>/rewards/<method>/seed-<s>/ per
                         category, categories.json (balancing rule and counts, routing
                         accuracy), centroids.safetensors (prompt / unsafe / safe per category)
    metrics.jsonl        per-epoch training metrics of every model (irl/train_loss, irl/val_loss,
                         irl/val_pair_acc, irl/failures, irl/lambda), tagged method and seed
    summary.json         per model: best epoch, epochs run, best validation loss; data counts
    training_curves.png  per method: training and validation loss, validation pairwise
                         accuracy by epoch (mean over seeds, their range), selected epochs
    manifest.json
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.artifacts import StageRun, require_stage, run_stage, write_json
from pipeline.config import ExperimentConfig, fingerprint
from pipeline.data.pairs import PairSet, load_pairs
from pipeline.data.splits import subsample_train, subtype_train
from pipeline.embed import Embedder, embed_pairs
from pipeline.errors import DataError
from pipeline.irl.bank import train_bank
from pipeline.irl.categories import balance, carries, centroids, resolve_categories, route
from pipeline.irl.common import Optim, PairTensors
from pipeline.irl.heads import make_head
from pipeline.irl.methods import method_spec
from pipeline.irl.plots import plot_training_curves
from pipeline.irl.reward import RewardModel, reward_dir
from pipeline.metrics import stage_sink
from pipeline.runtime import placement
from pipeline.seeds import derive_seed

log = logging.getLogger("fairl.irl")


def pairs_path(cfg: ExperimentConfig) -> Path:
    """irl.pairs if given, else the published make-pairs output."""
    if cfg.irl.pairs is not None:
        return cfg.irl.pairs
    require_stage(cfg.stage_dir("make_pairs"), "make_pairs", "make-pairs")
    return cfg.stage_dir("make_pairs") / "pairs.parquet"


def run(cfg: ExperimentConfig, force: bool = False) -> Path:
    irl = cfg.irl
    source = pairs_path(cfg)
    # 1. Validate the pairs and resolve the train / val / test split (by prompt).
    pairs = load_pairs(source, irl.null_scores, irl.test_fraction, irl.val_fraction, cfg.run.seed)
    if irl.subtype is not None:  # one subtype's pairs and the clean ones (Figure 3, left)
        df, kept = subtype_train(pairs.df, irl.subtype)
        rule = {"rule": "subtype", "reason": f"{irl.subtype} pairs and clean pairs", **kept}
        pairs = replace(pairs, df=df, split_rule={**pairs.split_rule, "train": rule})
    if irl.n_pairs is not None:  # a fixed number of training pairs, of a fixed mix (Appendix D)
        df, drawn = subsample_train(
            pairs.df, irl.n_pairs, irl.pair_mix, derive_seed(cfg.run.seed, "irl.n_pairs")
        )
        what = ", ".join(f"{v} {k}" for k, v in drawn["drawn"].items())
        rule = {"rule": "subsample", "reason": f"{what} of the training pairs", **drawn}
        pairs = replace(pairs, df=df, split_rule={**pairs.split_rule, "train": rule})
    if irl.categories is not None:  # DR-IRL: bad categories fail here, before any training
        resolve_categories(pairs.df, irl.categories)
    specs = [method_spec(m, irl) for m in irl.methods]
    needs = [s.name for s in specs if s.needs_labels]
    if needs and not pairs.has_labels:
        raise DataError(
            f"{', '.join(needs)} identify failures from ground-truth labels, and {source} has no "
            "chosen_toxic / rejected_toxic columns",
            hint="add the labels, or drop those methods from irl.methods "
            "(the *-margin variants need no labels)",
        )
    embedder = Embedder(irl.embed.encoder, irl.embed.batch_size, irl.embed.cache_dir)
    config = {"irl": fingerprint(irl), "run.seed": cfg.run.seed, "encoder": embedder.fingerprint}
    return run_stage(
        "irl",
        cfg,
        config,
        {"pairs": source},
        lambda run: _fit(run, cfg, pairs, specs, embedder),
        force=force,
        log=log.info,
    )


def _fit(run: StageRun, cfg: ExperimentConfig, pairs: PairSet, specs, embedder: Embedder) -> None:
    """Steps 2-4 of the recipe, into the stage's work directory."""
    irl = cfg.irl
    df = pairs.df
    counts = df["split"].value_counts().to_dict()
    log.info(
        "irl: %d pairs from %s (train %d, val %d, test %d)%s",
        len(df),
        pairs.source,
        counts.get("train", 0),
        counts.get("val", 0),
        counts.get("test", 0),
        f"; dropped {pairs.dropped} with null ground truth" if pairs.dropped else "",
    )
    df.to_parquet(run.path("pairs.parquet"), index=False)

    # 2. Embed every distinct text once, h(o) from the frozen encoder.
    with run.timed("embed"):
        h_pos, h_neg = embed_pairs(pairs, embedder, irl.embed.text)
    log.info(
        "irl: embeddings %s (%d cached, %d new)",
        tuple(h_pos.shape),
        embedder.stats["cached"],
        embedder.stats["embedded"],
    )
    # Batched float32 inference differs in the last bits with batch composition, so embeddings
    # depend slightly on the cache's history; their hash tells two runs' inputs apart.
    run.extra["embeddings_sha256"] = hashlib.sha256(
        torch.cat([h_pos, h_neg]).contiguous().numpy().tobytes()
    ).hexdigest()
    labels = {}
    if pairs.has_labels:  # y = +1 non-toxic, -1 toxic
        labels = {
            "y_pos": torch.tensor(
                1.0 - 2.0 * df["chosen_toxic"].to_numpy(float), dtype=torch.float32
            ),
            "y_neg": torch.tensor(
                1.0 - 2.0 * df["rejected_toxic"].to_numpy(float), dtype=torch.float32
            ),
        }
    split = df["split"].to_numpy()
    data = PairTensors(
        h_pos=h_pos,
        h_neg=h_neg,
        train=torch.tensor((split == "train").nonzero()[0]),
        val=torch.tensor((split == "val").nonzero()[0]),
        **labels,
    )

    # 3. Train every method x seed at once (Algorithm 1, vectorised; pipeline.irl.bank).
    head = make_head(irl.head, h_pos.shape[1], irl.hidden)
    optim = Optim(
        lr=irl.lr, batch_size=irl.batch_size, max_epochs=irl.max_epochs, patience=irl.patience
    )
    log.info("irl: training %d methods x %d seeds (%s head)", len(specs), len(irl.seeds), irl.head)
    with stage_sink(run, cfg.run.trackers, cfg.run.name) as sink:
        with run.timed("train"):
            trained = train_bank(
                data, specs, irl.seeds, head, optim, sink=sink, device=placement().device
            )  # run.device
        # 4. Save each reward: safetensors + JSON, and a plain sentence-transformers export.
        with run.timed("save"):
            summary = _save(run.work_dir, trained, head, irl, embedder, pairs)
        if irl.categories is not None:  # DR-IRL: one reward per harm category, balanced
            with run.timed("categories"):
                _fit_categories(run, cfg, pairs, data, specs, head, optim, embedder, sink)
    with run.timed("plots"):
        plot_training_curves(trained, run.path("training_curves.png"))
    write_json(
        run.path("summary.json"),
        {
            "pairs": {
                "source": str(pairs.source),
                "n": len(df),
                "dropped_null": pairs.dropped,
                "split": pairs.split_rule,
                **{f"n_{k}": int(v) for k, v in counts.items()},
            },
            "encoder": embedder.describe(),
            "embedding": embedder.stats,
            "head": head.describe(),
            "methods": [s.to_dict() for s in specs],
            "models": summary,
        },
    )
    run.extra["models"] = len(summary)
    log.info("irl: %d rewards written to %s", len(summary), run.final_dir)


def _save(
    root: Path, trained, head, irl, embedder: Embedder, pairs: PairSet, meta=None, link=None
) -> list[dict]:
    """Each trained reward under root/rewards/<method>/seed-<s>/ (safetensors + JSON, and the
    plain sentence-transformers export); `meta(r, model)` adds keys to a reward's reward.json.
    Returns each one's training summary."""
    summary = []
    first_export = link
    for r in trained:
        out = reward_dir(root, r.method.name, r.seed)
        model = RewardModel(
            head,
            r.base,
            r.failure,
            meta={
                "method": r.method.name,
                "seed": r.seed,
                "spec": r.method.to_dict(),
                "encoder": embedder.describe(),
                "text": irl.embed.text,
                "training": r.summary(),
                "pairs": str(pairs.source),
                "reward": "R(o) = R_D(h(o)) + R_F(h(o)), higher is better",
            },
        )
        if meta is not None:
            model.meta.update(meta(r, model))
        model.save(out)
        if irl.export_sentence_transformers:
            model.export_sentence_transformers(
                out / "sentence-transformer", embedder.path, link_from=first_export
            )
            first_export = first_export or out / "sentence-transformer"
        summary.append(r.summary())
    return summary


def _fit_categories(run: StageRun, cfg, pairs: PairSet, data, specs, head, optim, embedder, sink):
    """DR-IRL's category rewards (pipeline.irl.categories): per category, every method x seed
    trained on that category's balanced training rows, early-stopped on the validation pairs
    that carry it (all validation pairs when none does); each reward's reward.json records the
    mean and std of its scores on the training pairs' outputs (`standardise`: RL sums or routes
    the standardised rewards). Writes irl/categories/: the rewards, categories.json (the rule,
    the counts, routing accuracy) and centroids.safetensors (per category, the mean direction of
    its demonstrations' prompts, unsafe and safe outputs)."""
    irl, df = cfg.irl, pairs.df
    names = resolve_categories(df, irl.categories)
    rows, report = balance(df, names, cfg.run.seed)
    root = run.path("categories")
    val = df["split"].to_numpy() == "val"
    train_outputs = torch.cat([data.h_pos[data.train], data.h_neg[data.train]])
    # the demonstrating (rejected) side's prompt: in RTP pairs the two sides are different records
    side = "rejected_prompt" if "rejected_prompt" in df else "prompt"
    prompts = embedder.embed(df[side].tolist())
    mu: dict[str, list[torch.Tensor]] = {"prompt": [], "unsafe": [], "safe": []}
    link = None
    for c in names:
        own = np.flatnonzero((df["split"] == "train").to_numpy() & carries(df, c))
        mu["prompt"].append(centroids(prompts, own))
        mu["unsafe"].append(centroids(data.h_neg, own))
        mu["safe"].append(centroids(data.h_pos, own))
        c_val = np.flatnonzero(val & carries(df, c))
        fallback = len(c_val) == 0
        if fallback:
            log.warning("irl: no validation pair carries %s: early stopping on all of them", c)
        report["categories"][c]["val_fallback"] = fallback
        cat_data = replace(
            data,
            train=torch.as_tensor(rows[c]),
            val=data.val if fallback else torch.as_tensor(c_val),
        )
        log.info(
            "irl: category %s: %d pairs (%d own, %d resampled)",
            c,
            len(rows[c]),
            report["categories"][c]["carrying"],
            report["categories"][c]["resampled"],
        )
        trained = train_bank(
            cat_data, specs, irl.seeds, head, optim, sink=sink.tagged(category=c),
            device=placement().device,
        )  # fmt: skip

        def meta(r, model, c=c):
            s = model.score_embeddings(train_outputs)
            std = float(s.std()) if len(s) > 1 and float(s.std()) > 1e-8 else 1.0
            return {
                "category": c,
                "balance": report["rule"],
                "standardise": {"mean": float(s.mean()), "std": std},
            }

        report["categories"][c]["models"] = _save(
            root / c, trained, head, irl, embedder, pairs, meta=meta, link=link
        )
        if irl.export_sentence_transformers and link is None:
            link = reward_dir(root / c, specs[0].name, irl.seeds[0]) / "sentence-transformer"
    stacked = {k: torch.stack(v).contiguous() for k, v in mu.items()}
    routed = route(prompts[torch.as_tensor(np.flatnonzero(val))], stacked["prompt"]).numpy()
    for i, c in enumerate(names):  # of the val pairs carrying c, the share routed to c
        here = carries(df, c)[val]
        report["categories"][c]["routing_accuracy"] = (
            float((routed[here] == i).mean()) if here.any() else None
        )
    meta = {"categories": ",".join(names)}
    save_file(stacked, str(root / "centroids.safetensors"), metadata=meta)
    write_json(root / "categories.json", {"categories_order": names, **report})
