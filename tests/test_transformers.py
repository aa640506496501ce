"""linear_cross_entropy as the loss of Hugging Face causal language models.

Tiny models are built from a config with random weights, so nothing is
downloaded. The fused loss on the model's hidden states must give the value
and the gradient of every parameter that the model's own loss gives
(``model(input_ids, labels=labels).loss``).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (pip install 'lossgrad[hf]')"
)

from lossgrad import linear_cross_entropy  # noqa: E402

VOCAB = 97


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def tiny_gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=64,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_gemma2():
    # A soft cap small enough to bend the logits of a random tiny model.
    config = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
        final_logit_softcapping=0.1,
    )
    return transformers.Gemma2ForCausalLM(config)


def fused_causal_lm_loss(model, input_ids, attention_mask, labels, num_items=None):
    """The recipe of docs/linear.md: hidden states, shifted labels, the fused head."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    # Token t predicts token t + 1; the last position has nothing to predict.
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
    head = model.get_output_embeddings()
    return linear_cross_entropy(
        hidden, head.weight, shifted, linear_bias=head.bias, num_items=num_items,
        softcap=getattr(model.config, "final_logit_softcapping", None),
    )


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (3, 11), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0  # right padding
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[0, :4] = -100  # a prompt that is not trained on
    return input_ids, attention_mask, labels


@pytest.mark.parametrize(
    "build", [tiny_llama, tiny_gpt2, tiny_gemma2], ids=["llama", "gpt2-tied", "gemma2-softcap"]
)
def test_matches_model_loss_and_gradients(build):
    torch.manual_seed(0)
    model = build()
    input_ids, attention_mask, labels = batch()
    parameters = [p for p in model.parameters() if p.requires_grad]

    expected = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    want = torch.autograd.grad(expected, parameters)
    loss = fused_causal_lm_loss(model, input_ids, attention_mask, labels)
    got = torch.autograd.grad(loss, parameters)

    assert_close(loss, expected, "loss")
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    for name, mine, theirs in zip(names, got, want):
        assert_close(mine, theirs, f"grad {name}", kind="grad")


def test_num_items_matches_model_gradient_accumulation():
    torch.manual_seed(0)
    model = tiny_llama()
    input_ids, attention_mask, labels = batch(seed=1)
    counted = (F.pad(labels, (0, 1), value=-100)[:, 1:] != -100).sum()
    expected = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
    total = 0
    for rows in (slice(0, 1), slice(1, 3)):
        total = total + fused_causal_lm_loss(
            model, input_ids[rows], attention_mask[rows], labels[rows], num_items=counted
        )
    assert_close(total, expected, "accumulated loss", rtol=1e-5)
