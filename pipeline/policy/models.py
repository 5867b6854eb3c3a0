"""Loading policies (by hub name or local path, pipeline.hub) and sampling from them.

PAD must differ from EOS (docs/ppo.md, detail 8): if a tokenizer has no pad token, or uses EOS
as pad (Pythia, SmolLM2), a dedicated `<|pad|>` token is added. The embedding matrix only ever
grows for it: where the matrix already has spare rows past the tokenizer (Pythia's 50304 rows
for 50277 tokens), PAD takes the first spare row; otherwise the embeddings are resized (the new
rows initialised from a fixed seed, so every process and every restart holds the same model).
PAD is never a response token: sampling suppresses it and every logprob excludes it, so a
response is exactly the tokens up to and including its first EOS. Prompts are left-padded and,
when too long, truncated from the left (the end of a prompt is what the response continues);
position ids follow the attention mask. Dropout is switched off (docs/ppo.md, detail 10).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.errors import FairlError
from pipeline.hub import resolve_model
from pipeline.runtime import apply_threads_for_model, placement
from pipeline.seeds import derive_seed

log = logging.getLogger("fairl.policy")
PAD_TOKEN = "<|pad|>"


def disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def load_tokenizer(path: str):
    from transformers import AutoTokenizer  # heavy, needed here only: imported on first use

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    tok.padding_side = "left"
    tok.truncation_side = "left"
    if tok.eos_token_id is None:
        raise FairlError(f"tokenizer of {path} has no EOS token; generation could never stop")
    return tok


def load_policy(name_or_path: str, what: str = "policy", inference: bool = False):
    """(model, tokenizer) ready for sampling and RL: PAD != EOS, left padding, dropout off, on
    run.device (pipeline.runtime.placement). `inference`: only sampled from, never trained, so
    in run.precision's dtype (bf16 on a GPU); otherwise float32."""
    from transformers import AutoModelForCausalLM  # heavy, needed here only: imported on first use

    path = resolve_model(name_or_path, what)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=False, dtype=torch.float32)
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": PAD_TOKEN})
        # grow only: a matrix padded beyond the tokenizer (Pythia: 50304 rows for 50277 tokens)
        # already has a spare row for PAD, and shrinking it would drop trained rows' neighbours
        # and change the model's shapes
        if len(tok) > model.get_input_embeddings().weight.shape[0]:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(0)  # the same new rows in every process
                model.resize_token_embeddings(len(tok), mean_resizing=False)
        log.info("%s: added a pad token distinct from EOS (id %d)", what, tok.pad_token_id)
    model.config.pad_token_id = tok.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    disable_dropout(model)
    model.eval()
    place = placement()
    model.to(place.device, place.dtype if inference else torch.float32)
    # A tiny policy's kernels are too short to share between threads when the machine is busy
    # (pipeline.runtime); a real one keeps every core. The user's own choice is kept.
    apply_threads_for_model(model, what)
    return model, tok


def parameter_count(model_dir: Path) -> int:
    """Parameters of a `save_pretrained` directory, read from its safetensors headers (shapes
    only, nothing loaded). Tied weights are stored, and counted, once."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FairlError(f"{model_dir} holds no .safetensors weights to count")
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():  # noqa: SIM118 (safe_open is not a mapping)
                total += math.prod(st.get_slice(k).get_shape())
    return total


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding: positions count real tokens only (cumsum(mask) - 1, clamped at 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def batch_seed(seed: int, *keys) -> int:
    """The sampling seed of one batch: derived from the run's seed and the batch's names."""
    return derive_seed(seed, *keys)


def never_emitted(model, tok) -> list[int]:
    """The ids a response never holds: PAD, and any row of the output matrix past the tokenizer
    (Pythia's spare rows: no text decodes to them). Sampling suppresses them and every logprob
    excludes them, so the two agree on the vocabulary."""
    out = model.get_output_embeddings()
    rows = (out if out is not None else model.get_input_embeddings()).weight.shape[0]
    return [tok.pad_token_id, *range(len(tok), rows)]


@torch.no_grad()
def sample(
    model,
    tok,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    max_prompt_tokens: int = 64,
):
    """Left-padded sampling without top-k or min-length (they bias the KL estimate; docs/ppo.md,
    detail 9).
    Returns (prompt_ids [B, P], prompt_mask, response_ids [B, R], response_mask, texts): the
    response is cut after its first EOS, which stays part of it."""
    if seed is not None:
        torch.manual_seed(seed)
    enc = tok(
        list(prompts),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_tokens,
    ).to(model.device)
    out = model.generate(
        input_ids=enc["input_ids"],
        attention_mask=enc["attention_mask"],
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        suppress_tokens=never_emitted(model, tok),
    )
    resp = out[:, enc["input_ids"].shape[1] :]
    is_eos = resp == tok.eos_token_id
    after_first_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    resp_mask = ~after_first_eos  # PAD is suppressed, so generate pads only after EOS
    resp = torch.where(resp_mask, resp, torch.full_like(resp, tok.pad_token_id))
    texts = tok.batch_decode(
        torch.where(resp_mask & ~is_eos, resp, tok.pad_token_id), skip_special_tokens=True
    )
    return enc["input_ids"], enc["attention_mask"], resp, resp_mask.long(), texts


def expert_card(report: dict, te, ground_truth: str) -> str:
    """README.md of the expert's `save_pretrained` directory: hub metadata (a hub base model is
    named as such; a local one is not, since the hub reads `base_model` as a repo id), how the
    expert was trained, its held-out toxicity and the sampling it was evaluated with (which
    its generation_config.json records)."""
    import yaml  # light; pyyaml is a dependency anyway

    base = report["base_model"]
    gen = te.generation
    front = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["fairl", "rlhf", "detoxification", te.algorithm],
        **({} if Path(base).exists() else {"base_model": base}),
    }
    b, e = report["base"], report["expert"]
    steps = te.ppo.steps if te.algorithm == "ppo" else te.trl.steps
    rows = [
        ("base model", base),
        ("algorithm", f"{te.algorithm}, {steps} steps"),
        ("reward", f"the ground truth: {ground_truth}"),
        (
            "held-out toxicity rate",
            f"{b['toxicity_rate']:.3f} (base) -> {e['toxicity_rate']:.3f} (expert) on "
            f"{report['n_eval_prompts']} prompts",
        ),
        ("KL to the base", f"{e.get('kl_to_base', float('nan')):.2f} nats per response"),
        (
            "sampling",
            f"temperature {gen.temperature}, top_p {gen.top_p}, no top-k, "
            f"{gen.max_new_tokens} new tokens",
        ),
    ]
    return (
        "---\n"
        + yaml.safe_dump(front, sort_keys=False)
        + "---\n\n# fairl expert\n\nA language model detoxified by RLHF with fairl "
        "(`fairl train-expert`): the expert whose internalised reward fairl's inverse RL "
        "recovers.\n\n| | |\n|---|---|\n"
        + "".join(f"| {k} | {v} |\n" for k, v in rows)
        + "\n```python\nfrom transformers import pipeline\n\n"
        'generate = pipeline("text-generation", model="<this directory>")\n'
        "generate(prompt)  # samples as fairl evaluated it (generation_config.json)\n```\n"
    )
