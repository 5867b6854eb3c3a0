"""Build (once) and cache the offline world: corpus, prompts, held-out set, tokenizer, base LM.

Everything is generated deterministically from `world.seed` and cached under
`$FAIRL_CACHE/world/<fingerprint>/` (fingerprint = the world config + WORLD_VERSION):

    prompts.jsonl   RealToxicityPrompts-schema records (prompt / continuation with scores)
    heldout.csv     Jigsaw-schema labelled sentences (comment_text, toxic, subtypes)
    tokenizer/      byte-level BPE trained on the corpus (PAD distinct from EOS)
    base-lm/        a tiny GPT-NeoX (the Pythia architecture) pretrained on the corpus,
                    saved with save_pretrained, tokenizer included
    world.json      the config and measured statistics

Config values `world` / `world:<item>` elsewhere in the experiment resolve to these files.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.artifacts import atomic_dir, file_lock, follow_umask, sha256_json, write_json
from pipeline.config import WorldSection, to_dict
from pipeline.errors import ConfigError
from pipeline.hub import cache_root
from pipeline.runtime import apply_threads_for_model
from pipeline.world.grammar import JIGSAW_NAMES, SUBTYPES, generate_sentences, lexicon_score
from pipeline.world.hard import (
    EVAL_SETS,
    HARD_GRAMMAR_VERSION,
    cue_stats,
    eval_sets,
    generate_hard,
    hard_score,
)

log = logging.getLogger("fairl.world")
WORLD_VERSION = 2  # 2: the base LM is pretrained on one thread (pipeline.runtime)
HARD_ONLY = ("kind", "n_eval")  # WorldSection settings of the hard world only
EOS, PAD = "<|endoftext|>", "<|padding|>"
# RealToxicityPrompts attribute names for the world's subtypes (obscene ~ profanity).
RTP_NAMES = {
    "insult": "insult",
    "obscene": "profanity",
    "threat": "threat",
    "identity_attack": "identity_attack",
}


@dataclass(frozen=True)
class World:
    root: Path

    @property
    def prompts(self) -> Path:
        return self.root / "prompts.jsonl"

    @property
    def heldout(self) -> Path:
        return self.root / "heldout.csv"

    @property
    def base_lm(self) -> Path:
        return self.root / "base-lm"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    def item(self, name: str) -> Path:
        paths = {
            "prompts": self.prompts,
            "heldout": self.heldout,
            "base-lm": self.base_lm,
            "tokenizer": self.tokenizer,
            # the hard world's evaluation sets (Jigsaw schema), world:eval-<name>
            **{f"eval-{n}": self.root / f"eval-{n}.csv" for n in EVAL_SETS},
        }
        if name not in paths:
            raise ConfigError(f"unknown world item {name!r}; valid: {', '.join(paths)}")
        return paths[name]


def world_root(cfg: WorldSection) -> Path:
    """$FAIRL_CACHE/world/<key>, the key a hash of the config and WORLD_VERSION. The easy
    world's key leaves out the settings only the hard world has, so the worlds built before
    they existed are still found."""
    world = to_dict(cfg)
    if cfg.kind == "easy":
        world = {k: v for k, v in world.items() if k not in HARD_ONLY}
    else:  # the hard grammar's own version: a changed grammar is a new world
        world["grammar"] = HARD_GRAMMAR_VERSION
    key = sha256_json({"world": world, "version": WORLD_VERSION})[:16]
    return cache_root() / "world" / key


def get_world(cfg: WorldSection) -> World:
    """The cached world for this config, built first if needed (a lock guards the build)."""
    root = world_root(cfg)
    if (root / "world.json").is_file():
        return World(root)
    with file_lock(root.with_suffix(".lock")):
        if not (root / "world.json").is_file():
            _build(cfg, root)
    return World(root)


def _build(cfg: WorldSection, root: Path) -> None:
    log.info("world: building the offline world (seed %d) in %s", cfg.seed, root)
    hard = cfg.kind == "hard"
    generate = generate_hard if hard else generate_sentences
    score = hard_score if hard else lexicon_score
    with atomic_dir(root) as tmp:
        corpus = generate(cfg.n_sentences, cfg.seed)
        prompts = generate(cfg.n_prompts, cfg.seed + 1)
        heldout = generate(cfg.n_heldout, cfg.seed + 2)
        _write_prompts(prompts, tmp / "prompts.jsonl", score)
        _write_heldout(heldout, tmp / "heldout.csv", score)
        extra = {}
        if hard:
            sets = eval_sets(cfg.n_eval, cfg.seed + 3)
            for name, sentences in sets.items():
                # continuations only: what pairs, rewards and re-RLHF score (irl.embed.text)
                _write_heldout(sentences, tmp / f"eval-{name}.csv", score, whole=False)
            parts = {"corpus": corpus, "prompts": prompts, "heldout": heldout, **sets}
            extra["hard"] = {name: cue_stats(s) for name, s in parts.items()}
        texts = [s.prompt + s.continuation for s in corpus]
        tokenizer = _train_tokenizer(texts, cfg.vocab_size)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        model, stats = _pretrain(texts, tokenizer, cfg)
        model.save_pretrained(str(tmp / "base-lm"))
        tokenizer.save_pretrained(str(tmp / "base-lm"))
        tox = [score(t).toxic for t in texts]
        write_json(
            tmp / "world.json",
            {
                "config": to_dict(cfg),
                "version": WORLD_VERSION,
                "corpus_toxic_rate": sum(tox) / len(tox),
                "lm": stats,
                "n_prompts": len(prompts),
                "n_heldout": len(heldout),
                **extra,
            },
        )
        follow_umask(tmp)  # save_pretrained's safetensors are 0600; the cache is shared


def _record_part(text: str, score) -> dict:
    s = score(text)
    part = {
        "text": text,
        "toxicity": s.toxicity,
        "severe_toxicity": 0.0,
        "sexually_explicit": 0.0,
        "flirtation": 0.0,
    }
    part.update({RTP_NAMES[k]: v for k, v in s.subtypes.items()})
    return part


def _write_prompts(sentences, path: Path, score) -> None:
    with open(path, "w") as f:
        for i, s in enumerate(sentences):
            f.write(
                json.dumps(
                    {
                        "filename": f"world-{i:06d}",
                        "begin": 0,
                        "end": 0,
                        "challenging": False,
                        "prompt": _record_part(s.prompt, score),
                        "continuation": _record_part(s.continuation, score),
                    }
                )
                + "\n"
            )


def _write_heldout(sentences, path: Path, score, whole: bool = True) -> None:
    """Jigsaw-schema rows: prompt + continuation (`whole`), or the continuation alone."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "comment_text", "toxic", *[JIGSAW_NAMES[s] for s in SUBTYPES]])
        for i, s in enumerate(sentences):
            text = s.prompt + s.continuation if whole else s.continuation.strip()
            sc = score(text)
            w.writerow([i, text, int(sc.toxic), *[int(sc.subtypes[k] > 0.5) for k in SUBTYPES]])


def _train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on the corpus, wrapped as a transformers fast tokenizer."""
    # tokenizers / transformers: heavy, and a world is built once per cache
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        padding_side="left",
        model_max_length=128,
    )


def _pretrain(texts: list[str], tokenizer, cfg: WorldSection):
    """Next-token training of a tiny GPT-NeoX on the corpus, sentences separated by EOS."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM  # heavy; built once per cache

    torch.manual_seed(cfg.seed)
    mc = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        intermediate_size=4 * cfg.hidden_size,
        max_position_embeddings=cfg.context,
        rotary_pct=0.25,
        use_parallel_residual=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(mc)
    # One thread for the tiny LM (pipeline.runtime): a busy machine no longer slows the build
    # many-fold, and the weights no longer depend on the machine's core count.
    apply_threads_for_model(model, "world base LM")
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer(t)["input_ids"] + [tokenizer.eos_token_id])
    stream = torch.tensor(ids)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / cfg.pretrain_steps)),
    )
    g = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses = []
    for _step in tqdm(
        range(cfg.pretrain_steps), desc="world: pretraining the base LM", disable=None, leave=False
    ):
        starts = torch.randint(0, len(stream) - cfg.context - 1, (cfg.batch_size,), generator=g)
        batch = torch.stack([stream[s : s + cfg.context] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    return model, {"params": n_params, "tokens": len(ids), "final_loss": sum(losses[-50:]) / 50}
