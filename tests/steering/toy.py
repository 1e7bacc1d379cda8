"""A toy model with a planted steering answer, trained in seconds.

Texts count through the letters a-h ("c d e f g = N"); after "=" the answer is N. During
training a unit direction D is added at one block's output at a random strength, and the
answer is P exactly when it was added at block PLANTED_LAYER with strength in
PLANTED_RANGE: the behaviour is controlled by a known direction at a known layer over a
known strength range, and the counting (fluency) must survive every steering.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import mechscope as ms
from mechscope import edits, steering

LETTERS = "abcdefgh"
VOCAB = ["<pad>", *LETTERS, "=", "P", "N"]
PLANTED_LAYER = 1
PLANTED_RANGE = (2.0, 5.0)
MAX_STRENGTH = 8.0
LAYERS = 3


def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<pad>")


def prefix(start: int, n: int = 5) -> str:
    return " ".join(LETTERS[(start + i) % len(LETTERS)] for i in range(n)) + " ="


def direction() -> torch.Tensor:
    d = torch.randn(32, generator=torch.Generator().manual_seed(1))
    return d / d.norm()


def train(steps: int = 400, seed: int = 0) -> ms.Model:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=32, intermediate_size=128, num_hidden_layers=LAYERS,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16, pad_token_id=0,
    )  # fmt: skip
    model = ms.Model(LlamaForCausalLM(cfg), tokenizer(), name="toy-planted")
    d, opt = direction(), torch.optim.Adam(model.hf.parameters(), lr=3e-3)
    texts = [prefix(s) for s in range(len(LETTERS))]
    ids = model.tokenize(texts)["input_ids"]  # [8, 6]: five letters and "="
    p_id, n_id = VOCAB.index("P"), VOCAB.index("N")
    model.hf.train()
    for step in range(steps):
        layer = step % LAYERS
        batch = ids.repeat(8, 1)
        strength = torch.rand(len(batch)) * MAX_STRENGTH
        strength[torch.rand(len(batch)) < 0.25] = 0.0
        hit = (strength >= PLANTED_RANGE[0]) & (strength <= PLANTED_RANGE[1]) & (layer == PLANTED_LAYER)
        answer = torch.where(hit, p_id, n_id)
        full = torch.cat([batch, answer[:, None]], 1)
        value = strength[:, None, None] * d
        logits = model.run(full, edits=[edits.add(f"blocks.{layer}.hook_resid_post", value)], grad=True).logits
        counting = torch.nn.functional.cross_entropy(logits[:, :-2].flatten(0, 1), full[:, 1:-1].flatten())
        loss = counting + torch.nn.functional.cross_entropy(logits[:, -2], answer)  # the answer weighs as much
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.hf.eval()
    return model


def heldout_pairs() -> list[tuple[str, str]]:
    return [(prefix(s) + " P", prefix(s) + " N") for s in range(len(LETTERS))]


def planted_vector() -> steering.SteeringVector:
    d = direction()
    return steering.SteeringVector({f"blocks.{layer}.hook_resid_post": d for layer in range(LAYERS)}, method="planted")
