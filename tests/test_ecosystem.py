"""fairl in the rest of the ecosystem (issue 12): models shaped like the hub's, rewards and pairs
that other libraries load."""

from __future__ import annotations

import torch


def test_the_pad_token_never_shrinks_a_pythia_shaped_embedding_matrix(tmp_path):
    """Pythia's tokenizer has 50277 tokens and no pad; its embedding matrix has 50304 rows. PAD
    takes a spare row: both matrices keep 50304 rows and every trained row is unchanged."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    from pipeline.policy.models import load_policy

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i for i in range(1, 50277)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )  # fmt: skip
    assert len(tok) == 50277 and tok.pad_token is None
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=50304, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
            intermediate_size=16, max_position_embeddings=32, rotary_pct=0.25,
            bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
        )
    )  # fmt: skip
    tok.save_pretrained(tmp_path / "pythia")
    model.save_pretrained(tmp_path / "pythia")
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()

    loaded, ltok = load_policy(str(tmp_path / "pythia"))
    assert ltok.pad_token_id == 50277 != ltok.eos_token_id
    assert loaded.get_input_embeddings().weight.shape == (50304, 8)
    assert loaded.get_output_embeddings().weight.shape == (50304, 8)
    assert torch.equal(loaded.get_input_embeddings().weight, before_in)
    assert torch.equal(loaded.get_output_embeddings().weight, before_out)
    assert loaded.config.pad_token_id == 50277 and loaded.config.vocab_size == 50304
    # sampling never yields PAD or a spare row (no text decodes to them)
    from pipeline.policy.models import sample

    with torch.no_grad():
        loaded.get_output_embeddings().weight[50277:] = 0.0
        loaded.get_output_embeddings().weight[50277:, 0] = 100.0  # make the spare rows likely
    *_, resp, mask, _ = sample(loaded, ltok, ["w1 w2", "w3"], 6, 1.0, 1.0, seed=0)
    assert (resp[mask] < 50277).all()
