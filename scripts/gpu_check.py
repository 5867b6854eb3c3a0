"""The parts of scripts/gpu_check.sh that need Python: an encoder built on the spot, and the
make-pairs sampling throughput of a GPT-NeoX of about 100M parameters. No download.

    python scripts/gpu_check.py encoder OUT_DIR    # a sentence-transformers encoder (random init)
    python scripts/gpu_check.py sampling           # completions/s on run.device=auto

`encoder`: the all-MiniLM-L6-v2 package (88 MB) is too large to carry to a lent GPU machine, so
the check embeds with a BERT of MiniLM's width (384) and depth (6) built there, randomly
initialised, on the toy world's tokenizer, mean-pooled and normalised as MiniLM is. Its
embeddings still tell the world's words apart (distinct random token vectors), which is all the
check needs: it tests placement and speed, not reward quality.

`sampling`: a randomly initialised GPT-NeoX shaped like Pythia (hidden 768, 6 layers, 50,304
embedding rows; 120M parameters) on the toy world's tokenizer, loaded through
`pipeline.policy.models.load_policy(inference=True)` as make-pairs loads the base model and the
expert (bf16 on a GPU), samples 20 new tokens for the world's prompts at the paper configs'
generation batch (64) and at 256. Prints completions/s per batch size and the peak GPU memory;
make-pairs samples two completions (base and expert) per pair.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config import WorldSection
from pipeline.world.build import get_world


def build_encoder(out: Path) -> Path:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    world = get_world(WorldSection())
    tok = AutoTokenizer.from_pretrained(str(world.tokenizer))
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=384,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=1536,
            max_position_embeddings=256,
            pad_token_id=tok.pad_token_id,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        bert.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        word = Transformer(tmp, max_seq_length=128)
        pool = Pooling(word.get_embedding_dimension(), "mean")
        SentenceTransformer(modules=[word, pool, Normalize()], device="cpu").save(str(out))
    print(f"gpu_check: encoder (BERT 384 x 6, random init) saved to {out}")
    return out


def sampling_throughput(batch_sizes=(64, 256), n_prompts: int = 1024) -> None:
    import json

    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    from pipeline.policy.models import load_policy, sample
    from pipeline.runtime import placement, resolve_placement, set_placement

    set_placement(resolve_placement("auto", "auto"))  # run.device: auto, run.precision: auto
    place = placement()
    world = get_world(WorldSection())
    tok = AutoTokenizer.from_pretrained(str(world.tokenizer))
    prompts = [json.loads(line)["prompt"]["text"] for line in open(world.prompts)][:n_prompts]
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=50304,  # Pythia's padded matrix: rows past the tokenizer are never sampled
            hidden_size=768,
            num_hidden_layers=6,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=2048,
            rotary_pct=0.25,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        model, tok = load_policy(tmp, "base model", inference=True)
    print(
        f"gpu_check: GPT-NeoX {n_params / 1e6:.0f}M parameters on {place.device} in "
        f"{str(place.dtype).removeprefix('torch.')}; {len(prompts)} prompts, 20 new tokens"
    )
    cuda = place.device.type == "cuda"
    for bs in batch_sizes:
        sample(model, tok, prompts[:bs], 20, seed=0)  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        done = 0
        for i in range(0, len(prompts), bs):
            *_, texts = sample(model, tok, prompts[i : i + bs], 20, seed=i)
            done += len(texts)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        print(
            f"gpu_check sampling batch={bs} completions_per_s={done / dt:.0f} "
            f"peak_mem_gb={mem:.2f} (20,000 pairs = 40,000 completions: "
            f"{40_000 / (done / dt) / 60:.1f} min)"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["encoder"] and len(sys.argv) == 3:
        build_encoder(Path(sys.argv[2]))
    elif sys.argv[1:] == ["sampling"]:
        sampling_throughput()
    else:
        raise SystemExit(__doc__)
