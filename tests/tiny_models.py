"""Tiny models of the paper's real architectures, built locally (no hub): GPT-NeoX (Pythia),
Llama (SmolLM2), Gemma3 policies, and a RoBERTa toxicity classifier. Each gets a byte-level BPE
tokenizer trained here whose special tokens mirror the real model's (Pythia and SmolLM2 have no
pad token, Gemma3 has one), and is saved with save_pretrained so the code path under test is
exactly from_pretrained on a directory."""

from __future__ import annotations

from pathlib import Path

import torch

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "you are a stupid idiot and i hate you",
    "have a lovely day with your family",
    "people think that we are just a bunch of idiots",
    "thank you so much for the help",
    "what the hell is wrong with you",
    "the weather is nice today and the garden looks green",
    "shut up and leave me alone",
] * 20


def _tokenizer(special: dict, vocab_size: int = 300, **kwargs):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tokens = [t for t in special.values() if t]
    tok.train_from_iterator(
        TEXTS,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=tokens,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special, **kwargs)


def build_causal_lm(arch: str, out: Path) -> Path:
    """arch: gpt_neox | llama | gemma3. Returns the save_pretrained directory."""
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(0)
    if arch == "gpt_neox":  # Pythia: <|endoftext|> is bos and eos, no pad token
        tok = _tokenizer(
            {
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            }
        )
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=len(tok),
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=128,
                rotary_pct=0.25,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
    elif arch == "llama":  # SmolLM2: <|im_start|>/<|im_end|> style, eos, no pad token
        tok = _tokenizer(
            {
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
            },
            additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        )
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=128,
                tie_word_embeddings=True,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
            )
        )
    elif arch == "gemma3":  # Gemma3: <bos>, <eos>, and a real <pad>
        tok = _tokenizer(
            {
                "bos_token": "<bos>",
                "eos_token": "<eos>",
                "pad_token": "<pad>",
                "unk_token": "<unk>",
            },
            add_bos_token=True,
        )
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(
                vocab_size=len(tok),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                max_position_embeddings=128,
                sliding_window=16,
                bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        )
    else:
        raise ValueError(arch)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def build_roberta_classifier(out: Path, labels=("neutral", "toxic")) -> Path:
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    tok = _tokenizer(
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "cls_token": "<s>",
            "sep_token": "</s>",
            "mask_token": "<mask>",
        }
    )
    model = RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=160,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
