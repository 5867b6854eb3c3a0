"""A recovered reward as a durable artifact, and as a scorer `texts -> rewards`.

On disk, one directory per reward:

    reward.safetensors   base.<param> (R_D) and, for FA-IRL, failure.<param> (R_F); float32;
                         a refined version (`fairl refine`) adds correction-<k>.<param>, one
                         small head of the same kind per refinement, on top of its parent
    reward.json          format, head, encoder (name + fingerprint), text mode, method, seed,
                         training summary; everything needed to rebuild the scorer
    sentence-transformer/  (optional) the same reward as a plain sentence-transformers model:
                         encoder modules + Dense layers, R_D + R_F folded into one head, so
                         `SentenceTransformer(path).encode(texts)[:, 0]` gives the reward with
                         no fairl installed

    >>> from pipeline import load_reward
    >>> r = load_reward("runs/x/irl/rewards/fa-me-margin/seed-0")
    >>> r.score(["a completion", "another one"])          # tensor([...]), higher is better
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pipeline.artifacts import atomic_dir, atomic_path, write_json, write_text
from pipeline.embed import Embedder
from pipeline.errors import FairlError, MissingArtifactError
from pipeline.hub import download_reward, is_repo_id
from pipeline.irl.heads import RewardHead, make_head

FORMAT = "fairl-reward"
VERSION = 1


def reward_dir(irl_dir: Path, method: str, seed: int) -> Path:
    """Where `fairl irl` publishes the reward of one method and seed (README: Artifacts)."""
    return Path(irl_dir) / "rewards" / method / f"seed-{seed}"


class RewardModel:
    """R(o) = R_D(h(o)) + R_F(h(o)) + sum_k C_k(h(o)) on a frozen encoder h: the C_k are the
    corrections of refined versions (`fairl refine`), none for a reward `fairl irl` wrote."""

    def __init__(
        self,
        head: RewardHead,
        base: dict[str, torch.Tensor],
        failure: dict[str, torch.Tensor] | None,
        meta: dict,
        corrections: list[dict[str, torch.Tensor]] | None = None,
    ):
        self.head, self.base, self.failure, self.meta = head, base, failure, meta
        self.corrections = list(corrections or [])
        folded = head.fold(base, failure) if failure else base
        for c in self.corrections:  # the parent's units first, each correction's beside them
            folded = head.fold(folded, c)
        self._folded = folded
        self._embedder = None

    def without_corrections(self, keep: int = 0) -> RewardModel:
        """This reward with only its first `keep` corrections: `keep=k` is the version k
        refinements in, `keep=0` the reward `fairl irl` trained. Scores equal to that version's
        own (the same parameters folded the same way)."""
        if not 0 <= keep <= len(self.corrections):
            raise ValueError(
                f"keep={keep}: this reward has versions 0 to {len(self.corrections)} (corrections)"
            )
        meta = dict(self.meta)
        if "lineage" in meta:
            meta["lineage"] = meta["lineage"][:keep]
        return RewardModel(self.head, self.base, self.failure, meta, self.corrections[:keep])

    # ------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def score_embeddings(self, h: torch.Tensor) -> torch.Tensor:
        """h [n, d] -> R [n], through the folded single head (what the export computes)."""
        return self.head.forward_one(self._folded, h.float())

    @torch.no_grad()
    def path_scores(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(R_D(h), R_F(h)), [n] each, the two paths of Eq. 3 apart (R_F None for plain IRL):
        how much of the reward the failure path carries (evaluate's `fit/rf_share`)."""
        h = h.float()
        r_f = self.head.forward_one(self.failure, h) if self.failure else None
        return self.head.forward_one(self.base, h), r_f

    def score(
        self, texts: Sequence[str], prompts: Sequence[str] | None = None, batch_size: int = 64
    ) -> torch.Tensor:
        """Rewards for completions (prompts prepended if this reward embeds prompt+completion)."""
        if self.meta.get("text") == "prompt+completion":
            if prompts is None:
                raise FairlError("this reward was trained on prompt+completion; pass prompts=")
            texts = [p + c for p, c in zip(prompts, texts)]
        return self.score_embeddings(self.embedder(batch_size).embed(list(texts)))

    def embedder(self, batch_size: int = 64):
        if self._embedder is None:
            enc = self.meta["encoder"]
            self._embedder = Embedder(enc["name"], batch_size=batch_size)
            if self._embedder.fingerprint != enc.get("fingerprint"):
                logging.getLogger(__name__).warning(
                    "encoder %s resolves to files (%s) other than the ones this reward was "
                    "trained on (%s): scores may differ",
                    enc["name"],
                    self._embedder.fingerprint,
                    enc.get("fingerprint"),
                )
        return self._embedder

    # ------------------------------------------------------------------------------ i/o
    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {f"base.{k}": v.contiguous() for k, v in self.base.items()}
        if self.failure:
            tensors.update({f"failure.{k}": v.contiguous() for k, v in self.failure.items()})
        for i, c in enumerate(self.corrections, 1):
            tensors.update({f"correction-{i}.{k}": v.contiguous() for k, v in c.items()})
        with atomic_path(path / "reward.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
        corrections = [{"hidden": _hidden(c)} for c in self.corrections]
        write_json(
            path / "reward.json",
            {
                "format": FORMAT,
                "version": VERSION,
                **self.head.describe(),
                **self.meta,
                **({"corrections": corrections} if corrections else {}),
            },
        )
        write_text(path / "README.md", self.card())

    def card(self) -> str:
        """This reward's model card (README.md): `model_card` of its description."""
        return model_card({**self.head.describe(), **self.meta})

    @classmethod
    def load(cls, path: Path) -> RewardModel:
        """Load a reward directory, validated: a damaged one would otherwise crash deep inside
        torch or, worse (NaN or foreign weights), score every text silently wrong. Whatever is
        wrong on disk is a MissingArtifactError naming the file."""
        path = Path(path)
        meta_path, weights = path / "reward.json", path / "reward.safetensors"
        missing = [p.name for p in (meta_path, weights) if not p.is_file()]
        if missing:
            raise MissingArtifactError(
                f"{path} is not a fairl reward directory (no {' or '.join(missing)})",
                hint=f"expected reward.json and reward.safetensors inside it; {_REWRITE}",
            )
        meta = _read_meta(meta_path)
        head = make_head(meta["head"], meta["in_dim"], meta.get("hidden", 0))
        try:
            tensors = load_file(str(weights))
        except Exception as e:  # SafetensorError (truncated, not safetensors) or OSError
            raise _damaged(weights, f"cannot be read ({type(e).__name__}: {e})") from None
        base = {k.removeprefix("base."): v for k, v in tensors.items() if k.startswith("base.")}
        failure = {
            k.removeprefix("failure."): v for k, v in tensors.items() if k.startswith("failure.")
        } or None
        n_corr = len(meta.get("corrections", []))
        prefixes = ("base.", "failure.", *(f"correction-{i}." for i in range(1, n_corr + 1)))
        stray = sorted(k for k in tensors if not k.startswith(prefixes))
        if stray:
            raise _damaged(
                weights,
                f"holds tensors {stray} that are neither base.*, failure.* nor one of the "
                f"{n_corr} correction-<k>.* reward.json lists",
            )
        _check_params(weights, head, "base", base)
        if failure is not None:
            _check_params(weights, head, "failure", failure)
        corrections = []
        for i, c in enumerate(meta.get("corrections", []), 1):
            params = {
                k.removeprefix(f"correction-{i}."): v
                for k, v in tensors.items()
                if k.startswith(f"correction-{i}.")
            }
            c_head = make_head(meta["head"], meta["in_dim"], c.get("hidden", 0))
            _check_params(weights, c_head, f"correction-{i}", params)
            corrections.append(params)
        drop = ("format", "version", "head", "in_dim", "hidden", "activation", "corrections")
        return cls(
            head, base, failure, {k: v for k, v in meta.items() if k not in drop}, corrections
        )

    # --------------------------------------------------------------------------- export
    def export_sentence_transformers(
        self, path: Path, encoder_dir: Path, link_from: Path | None = None
    ) -> None:
        """Write a plain sentence-transformers model: the encoder's modules, then one Dense
        layer per head layer, the dual path folded exactly into a single MLP.

        `link_from`: an earlier export with the same encoder; its weight files are hard-linked
        instead of copied (30 rewards then cost one encoder on disk, not 30). A hard-linked file
        is shared: never save a model into an export in place (write a new directory).
        """
        from sentence_transformers import (
            SentenceTransformer,
            models,
        )  # heavy, needed here only: imported on first use

        dense = []
        for W, b, act in self.head.dense_layers(self._folded):
            layer = models.Dense(
                W.shape[1],
                W.shape[0],
                bias=True,
                activation_function=torch.nn.ReLU() if act == "relu" else torch.nn.Identity(),
            )
            with torch.no_grad():
                layer.linear.weight.copy_(W)
                layer.linear.bias.copy_(b)
            dense.append(layer)
        with atomic_dir(Path(path)) as tmp:
            if link_from is not None and (link_from / "modules.json").is_file():
                # Same encoder: hard-link its files, then write only the Dense modules afresh.
                shutil.copytree(link_from, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
                modules = json.loads((tmp / "modules.json").read_text())
                n_enc = len(modules) - len(dense)
                for i, layer in enumerate(dense):
                    sub = tmp / modules[n_enc + i]["path"]
                    shutil.rmtree(sub)  # unlink, never write through a shared inode
                    sub.mkdir()
                    layer.save(str(sub))
            else:
                encoder = SentenceTransformer(str(encoder_dir), device="cpu")
                SentenceTransformer(modules=[*encoder, *dense], device="cpu").save(str(tmp))
                _transformer_into_subfolder(tmp)
            (tmp / "README.md").unlink(
                missing_ok=True
            )  # may be a hard link: never write through it
            (tmp / "README.md").write_text(
                _EXPORT_README.format(
                    method=self.meta.get("method"),
                    seed=self.meta.get("seed"),
                    text=self.meta.get("text", "completion"),
                )
            )


TRANSFORMER_DIR = "0_Transformer"


def _transformer_into_subfolder(export: Path) -> None:
    """Move the encoder's Transformer module out of the export's top directory into
    `0_Transformer/`. With a config.json on top, `AutoModelForSequenceClassification` (and so
    TRL, handed the path) would "load" the export as a classifier with a freshly initialised
    head whose outputs have nothing to do with the reward; without one it refuses, loudly.
    sentence-transformers finds the module through modules.json either way."""
    modules = json.loads((export / "modules.json").read_text())
    top = [m for m in modules if m["path"] in ("", ".")]
    if not top:
        return
    keep = {"modules.json", "config_sentence_transformers.json", "README.md"}
    keep |= {m["path"] for m in modules if m["path"] not in ("", ".")}
    sub = export / TRANSFORMER_DIR
    sub.mkdir()
    for f in list(export.iterdir()):
        if f.name not in keep and f != sub:
            f.rename(sub / f.name)
    for m in top:
        m["path"] = TRANSFORMER_DIR
    (export / "modules.json").write_text(json.dumps(modules, indent=2))


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link the encoder's weight files (tens of MB each), copy everything else."""
    if src.endswith((".safetensors", ".bin")):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


_EXPORT_README = """# fairl reward ({method}, seed {seed})

A reward model recovered by fairl (Failure-Aware IRL), as a plain sentence-transformers model.

```python
from sentence_transformers import SentenceTransformer
reward = SentenceTransformer("<this directory>")
scores = reward.encode(texts)[:, 0]   # one reward per text, higher is better
```

Input text: the {text}. The last Dense layers are the reward head (base and failure paths folded
into one). The canonical artifact, with the paths kept apart, is ../reward.safetensors.
"""


_REWRITE = "if `fairl irl` wrote it, re-run `fairl irl --force` with the same config to rewrite it"


def _hidden(params: dict[str, torch.Tensor]) -> int:
    """An MLP head's hidden width from its parameters (0 for a linear head)."""
    return int(params["b1"].shape[0]) if "b1" in params else 0


def _damaged(file: Path, what: str) -> MissingArtifactError:
    return MissingArtifactError(f"reward file {file} {what}", hint=_REWRITE)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _read_meta(meta_path: Path) -> dict:
    """reward.json, checked for everything `load` and the scorer read from it."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
        raise _damaged(meta_path, f"is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _damaged(meta_path, f"holds a JSON {type(meta).__name__}, not an object")
    required = ["format", "version", "head", "in_dim", "encoder"]
    if meta.get("head") == "mlp":
        required.append("hidden")
    absent = [k for k in required if k not in meta]
    if absent:
        raise _damaged(meta_path, f"lacks the key(s) {', '.join(absent)}")
    if meta["format"] != FORMAT or meta["version"] != VERSION or isinstance(meta["version"], bool):
        raise _damaged(
            meta_path,
            f"has format {meta['format']!r} version {meta['version']!r}; "
            f"this fairl reads {FORMAT!r} version {VERSION}",
        )
    if meta["head"] not in ("linear", "mlp"):
        raise _damaged(meta_path, f"names head {meta['head']!r}; expected 'linear' or 'mlp'")
    corr = meta.get("corrections", [])
    if not isinstance(corr, list) or not all(
        isinstance(c, dict) and (meta["head"] == "linear" or _positive_int(c.get("hidden")))
        for c in corr
    ):
        raise _damaged(meta_path, f"has corrections {corr!r}; expected a list of {{hidden: n}}")
    for key in [k for k in ("in_dim", "hidden") if k in required]:
        if not _positive_int(meta[key]):
            raise _damaged(meta_path, f"has {key} {meta[key]!r}; expected a positive integer")
    enc = meta["encoder"]
    if not isinstance(enc, dict) or not isinstance(enc.get("name"), str):
        raise _damaged(
            meta_path, f'has encoder {enc!r}; expected {{"name": ..., "fingerprint": ...}}'
        )
    if meta.get("text", "completion") not in ("completion", "prompt+completion"):
        raise _damaged(
            meta_path, f"has text {meta['text']!r}; expected 'completion' or 'prompt+completion'"
        )
    return meta


def _check_params(file: Path, head: RewardHead, prefix: str, params: dict) -> None:
    """`params` are exactly the parameters of `head` (names, shapes, float32) and finite."""
    # Parameter names do not depend on the sizes: ask a 1 x 1 head of the same kind.
    names = sorted(make_head(head.kind, 1, 1).init(torch.Generator()))
    if sorted(params) != names:
        raise _damaged(
            file, f"holds {prefix}.* tensors {sorted(params)}; a {head.kind} head has {names}"
        )
    for name in names:
        t, want = params[name], head.shape(name)
        if tuple(t.shape) != want or t.dtype != torch.float32:
            raise _damaged(
                file,
                f"holds {prefix}.{name} as {t.dtype} {list(t.shape)}; "
                f"reward.json's head expects float32 {list(want)}",
            )
        if not torch.isfinite(t).all():
            raise _damaged(file, f"holds non-finite values (NaN or inf) in {prefix}.{name}")


def load_reward(path: Path | str, revision: str | None = None) -> RewardModel:
    """Load a reward saved by `fairl irl` or `fairl refine` (the directory holding
    reward.json), or one pushed to the hub by `fairl push` (`hf:org/name`)."""
    if is_repo_id(str(path)):
        path = download_reward(str(path), revision)
    return RewardModel.load(Path(path))


def model_card(meta: dict) -> str:
    """README.md of a reward directory (and of its hub repo): YAML metadata for the hub, then
    what the reward is, how it was trained, and how to load it."""
    import yaml  # light; pyyaml is a dependency anyway

    enc = meta.get("encoder", {})
    tr = meta.get("training", {})
    front = {
        "library_name": "fairl",
        "tags": ["fairl", "reward-model", "inverse-reinforcement-learning", "fa-irl"],
        "base_model": enc.get("name"),
        "model-index": None,
    }
    front = {k: v for k, v in front.items() if v is not None}
    lineage = meta.get("lineage", [])
    rows = [
        ("method", meta.get("method")),
        ("seed", meta.get("seed")),
        ("head", f"{meta.get('head')} (hidden {meta.get('hidden', 0)})"),
        ("encoder", f"{enc.get('name')} (file fingerprint {enc.get('fingerprint')})"),
        ("input text", meta.get("text", "completion")),
        ("training pairs", meta.get("pairs")),
        ("best epoch / epochs run", f"{tr.get('best_epoch')} / {tr.get('epochs_run')}"),
        ("best validation loss", tr.get("best_val_loss")),
        ("refinements (fairl refine)", len(lineage)),
    ]
    name = f"{meta.get('method')}, seed {meta.get('seed')}"
    return (
        "---\n"
        + yaml.safe_dump(front, sort_keys=False)
        + "---\n\n"
        + f"# fairl reward ({name})\n\n"
        + "A reward recovered by inverse RL with fairl (Failure-Aware IRL): R(o) = R_D(h(o)) + "
        "R_F(h(o)) on a frozen sentence encoder h, higher is better.\n\n"
        + "| | |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in rows)
        + "\n```python\nimport pipeline  # pip install fairl\n\n"
        'reward = pipeline.load_reward("<this directory, or hf:<repo id>>")\n'
        "scores = reward.score(texts)            # one reward per completion\n"
        'reward_fn = pipeline.reward_function("<this directory, or hf:<repo id>>")  # TRL\n```\n\n'
        "`sentence-transformer/` (where present) computes the same scores with "
        "sentence-transformers alone: `SentenceTransformer(path).encode(texts)[:, 0]`. It is "
        "not a sequence classifier.\n"
    )


def reward_function(path: str | Path, batch_size: int = 64):
    """The reward at `path` as a TRL reward function: `f(prompts, completions, **kwargs)` ->
    one float per completion, as GRPOTrainer and RLOOTrainer call it
    (`GRPOTrainer(reward_funcs=[reward_function(path)], ...)`). Conversational completions
    (lists of messages) are scored on their last message's content; a reward trained on
    prompt+completion gets the prompts prepended. Its `__name__` names it in TRL's logs."""
    reward = load_reward(path)

    def text(x) -> str:
        if isinstance(x, list):  # conversational: [{"role": ..., "content": ...}, ...]
            return x[-1]["content"] if x else ""
        return x

    def fairl_reward(prompts=None, completions=None, **_) -> list[float]:
        completions = [text(c) for c in completions]
        ps = [text(p) for p in prompts] if prompts is not None else None
        if reward.meta.get("text") == "prompt+completion":
            completions = [p + c for p, c in zip(ps or [], completions, strict=True)]
        # not through the disk cache: RL samples are new texts, one shard per call helps nobody
        h = reward.embedder(batch_size).embed(completions, cache=False)
        return reward.score_embeddings(h).double().tolist()

    fairl_reward.__name__ = f"fairl_{reward.meta.get('method', 'reward')}"
    return fairl_reward
