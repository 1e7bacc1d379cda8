"""Edits at positions counted from each row's end, in a right-padded batch, against a run
of each prompt alone: positions=-1 must hit each row's own last real token and nothing
else (not the padded axis's last slot, not its neighbour). Plus `position_mask` read
against masks written out by hand."""

from __future__ import annotations

import pytest
import torch

import mechscope as ms
from mechscope import edits
from mechscope.edits import position_mask

from ..models.tiny import tiny_model

LENGTHS = (3, 7, 5)
SITE, LATER = "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"


def _padded(vocab=97):
    texts = [torch.randint(1, vocab, (n,), generator=torch.Generator().manual_seed(10 + n)) for n in LENGTHS]
    ids = torch.zeros(len(texts), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, t in enumerate(texts):
        ids[i, : len(t)], mask[i, : len(t)] = t, 1
    return texts, ids, mask


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("where", [-1, [-2], [0, -1]])
def test_edit_from_the_end_of_a_padded_row_matches_each_prompt_alone(kind, where):
    model = tiny_model(kind)
    texts, ids, mask = _padded()
    vec = 5.0 * torch.randn(model.dims.d_model, generator=torch.Generator().manual_seed(1))
    edit = edits.add(SITE, vec, positions=where)
    plain = model.run(ids, attention_mask=mask, record=[SITE])
    run = model.run(ids, attention_mask=mask, record=[SITE, LATER], edits=[edit])
    chosen = [where] if isinstance(where, int) else where
    for i, t in enumerate(texts):
        n = len(t)
        alone = model.run(t, record=[SITE, LATER], edits=[edit])
        assert torch.allclose(run.cache[SITE][i, :n], alone.cache[SITE][0], atol=1e-5)
        assert torch.allclose(run.cache[LATER][i, :n], alone.cache[LATER][0], atol=1e-5)
        assert torch.allclose(run.logits[i, :n], alone.logits[0], atol=1e-5)
        # the edit touched exactly the chosen positions of this row, padding included in "nothing else"
        changed = (run.cache[SITE][i] - plain.cache[SITE][i]).abs().amax(-1) > 1e-6
        expected = torch.zeros(ids.shape[1], dtype=torch.bool)
        expected[[p % n for p in chosen]] = True
        assert torch.equal(changed, expected), (i, changed)


def test_edit_at_a_padded_row_last_position_with_heads():
    model = tiny_model("llama")
    texts, ids, mask = _padded()
    z = "blocks.1.attn.hook_z"
    plain = model.run(ids, attention_mask=mask, record=[z]).cache[z]
    out = model.run(ids, attention_mask=mask, record=[z], edits=[edits.zero(z, positions=-1, heads=[1, 3])]).cache[z]
    changed = (out != plain).any(-1)  # [batch, pos, head]
    expected = torch.zeros_like(changed)
    for i, n in enumerate(LENGTHS):
        expected[i, n - 1, [1, 3]] = True
    assert torch.equal(changed, expected)


def test_position_mask_by_hand():
    lengths = torch.tensor([3, 7, 5])

    def hand(pick):
        mask = torch.zeros(3, 7, dtype=torch.bool)
        for row, n in enumerate(lengths.tolist()):
            for p in pick(n):
                mask[row, p] = True
        return mask

    assert torch.equal(position_mask(-1, lengths, 3, 7, "s", True), hand(lambda n: [n - 1]))
    assert torch.equal(position_mask([0, -1], lengths, 3, 7, "s", True), hand(lambda n: [0, n - 1]))
    assert torch.equal(position_mask(-3, lengths, 3, 7, "s", True), hand(lambda n: [n - 3]))
    assert torch.equal(position_mask(2, lengths, 3, 7, "s", True), hand(lambda n: [2]))
    assert torch.equal(position_mask(slice(1, None), lengths, 3, 7, "s", True), hand(lambda n: range(1, n)))
    assert torch.equal(position_mask(slice(-2, None), lengths, 3, 7, "s", True), hand(lambda n: [n - 2, n - 1]))
    # without lengths every row is full
    assert torch.equal(position_mask(-1, None, 2, 4, "s", True), torch.tensor([[0, 0, 0, 1]] * 2).bool())
    # a position that some row lacks: an error when strict, left alone there otherwise
    with pytest.raises(ms.MechscopeError, match=r"position 4 is outside the sequence at 's' \(lengths \[3, 5, 7\]\)"):
        position_mask(4, lengths, 3, 7, "s", True)
    with pytest.raises(ms.MechscopeError, match="position -4 is outside"):
        position_mask(-4, lengths, 3, 7, "s", True)
    assert torch.equal(position_mask(4, lengths, 3, 7, "s", False), hand(lambda n: [4] if n > 4 else []))
    assert torch.equal(position_mask(-4, lengths, 3, 7, "s", False), hand(lambda n: [n - 4] if n >= 4 else []))
    assert torch.equal(position_mask(3, lengths, 3, 7, "s", False), hand(lambda n: [3] if n > 3 else []))
    assert torch.equal(position_mask(-3, lengths, 3, 7, "s", True), hand(lambda n: [n - 3]))
    assert torch.equal(position_mask(7, None, 2, 7, "s", False), torch.zeros(2, 7, dtype=torch.bool))
    # a forward shorter than the lengths (generation: one new token) leaves absent positions alone
    assert torch.equal(position_mask(-1, torch.tensor([5, 6]), 2, 1, "s", False), torch.zeros(2, 1, dtype=torch.bool))
    assert torch.equal(position_mask(1, torch.tensor([5, 6]), 2, 1, "s", False), torch.zeros(2, 1, dtype=torch.bool))
    assert torch.equal(position_mask(0, torch.tensor([5, 6]), 2, 1, "s", False), torch.ones(2, 1, dtype=torch.bool))
