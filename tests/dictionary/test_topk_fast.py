"""The fast TopK path against plain dense autograd: the two-stage selection, the chunked
encoder, its sparse backward (with and without the b_dec shortcut), the sparse latents the
trainer asks for, the sparse decoder backward, and the least-squares encoder initialisation."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionary import CoderConfig, build, selection
from mechscope.dictionary.selection import topk_select
from mechscope.dictionary.topk import TopKEncode, encoder_init_scale, sparse_decode


@pytest.mark.parametrize("d, k", [(4096, 32), (1000, 8), (512, 4), (96, 6), (64, 64)])
def test_two_stage_selection_keeps_the_same_values_as_topk(d, k):
    gen = torch.Generator().manual_seed(d + k)
    for pre in (
        torch.randn(64, d, generator=gen),  # no ties
        torch.randint(0, 4, (64, d), generator=gen).float(),  # heavy ties
        torch.randn(64, d, generator=gen).clamp(max=0.5),
    ):  # ties at the top
        values, idx = topk_select(pre, k)
        ref = pre.topk(k, dim=-1, sorted=False).values
        torch.testing.assert_close(values.sort(-1).values, ref.sort(-1).values, atol=0, rtol=0)
        torch.testing.assert_close(pre.gather(1, idx), values, atol=0, rtol=0)  # indices point at them
        assert bool((idx.sort(-1).values.diff(dim=-1) > 0).all())  # distinct columns


def test_two_stage_selection_picks_the_same_columns_without_ties():
    pre = torch.randn(32, 2048, generator=torch.Generator().manual_seed(0))
    idx = topk_select(pre, 16)[1]
    assert torch.equal(idx.sort(-1).values, pre.topk(16, dim=-1).indices.sort(-1).values)


def _dense_reference(x, W, b, k, b_dec):
    pre = (x - b_dec if b_dec is not None else x) @ W + b
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(1, idx, values.relu())


@pytest.mark.parametrize("tiled", [False, True], ids=["rows", "tiles"])
@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("x_grad", [True, False])
def test_chunked_encoder_and_sparse_backward_equal_dense_autograd(monkeypatch, centred, x_grad, tiled):
    monkeypatch.setattr(selection, "CHUNK_ELEMENTS", 7 * 512)  # 7-row chunks, a partial last one
    if tiled:  # tiles of 96 latents (5 whole, a partial 32-wide one) and 37 rows (a partial last chunk)
        monkeypatch.setattr(selection, "TILE_COLUMNS", 96)
    gen = torch.Generator().manual_seed(1)
    n, d_in, d_sae, k = 40, 12, 512, 4
    leaves = [
        torch.randn(n, d_in, generator=gen, dtype=torch.float64),
        torch.randn(d_in, d_sae, generator=gen, dtype=torch.float64),
        torch.randn(d_sae, generator=gen, dtype=torch.float64) * 0.3,
        torch.randn(d_in, generator=gen, dtype=torch.float64) * 0.3,
    ]
    upstream = torch.randn(n, d_sae, generator=gen, dtype=torch.float64)  # a random gradient on the latents
    grads = []
    for fast in (True, False):
        x, W, b, b_dec = [t.clone().requires_grad_(i != 0 or x_grad) for i, t in enumerate(leaves)]
        b_dec = b_dec if centred else None
        if fast:
            values, idx = TopKEncode.apply(x, W, b, k, b_dec)
            dense = torch.zeros(n, d_sae, dtype=x.dtype).scatter(1, idx, values)
        else:
            dense = _dense_reference(x, W, b, k, b_dec)
        loss = (dense * upstream).sum() + dense.pow(2).sum()
        grads.append(
            (
                dense.detach(),
                torch.autograd.grad(loss, [t for t in (x, W, b, b_dec) if t is not None and t.requires_grad]),
            )
        )
    (fast_acts, fast_grads), (ref_acts, ref_grads) = grads
    torch.testing.assert_close(fast_acts, ref_acts, atol=1e-12, rtol=0)
    assert len(fast_grads) == len(ref_grads) == 2 + x_grad + centred
    for got, want in zip(fast_grads, ref_grads):
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_the_tiled_encoder_selects_what_whole_rows_select(monkeypatch):
    """Width 10,000 with 2,048-latent tiles (a partial last one), float32 and the native
    kernels: the same values and columns as the whole-row path."""
    gen = torch.Generator().manual_seed(3)
    x, W, b = torch.randn(300, 64, generator=gen), torch.randn(64, 10_000, generator=gen), torch.randn(10_000) * 0.1
    assert selection._tile_columns(x, 10_000, 32) == 2048
    tiled = TopKEncode.apply(x, W, b, 32)
    monkeypatch.setattr(selection, "TILE_COLUMNS", 10**6)  # whole rows
    rows = TopKEncode.apply(x, W, b, 32)
    order_t, order_r = tiled[1].argsort(-1), rows[1].argsort(-1)
    assert torch.equal(tiled[1].gather(1, order_t), rows[1].gather(1, order_r))
    assert torch.equal(tiled[0].gather(1, order_t), rows[0].gather(1, order_r))


def test_sparse_backward_passes_gradcheck_with_b_dec():
    gen = torch.Generator().manual_seed(2)
    args = [
        torch.randn(6, 5, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(5, 64, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(64, generator=gen, dtype=torch.float64, requires_grad=True),
        torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True),
    ]
    assert torch.autograd.gradcheck(lambda x, W, b, c: TopKEncode.apply(x, W, b, 3, c)[0], args)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_training_step_matches_the_dense_path_with_sparse_latents_and_auxk(monkeypatch, arch):
    """A coder in sparse-latent mode (the trainer's) gives the same loss, reconstruction and
    gradients as with dense latents, and its sparse latents densify to the dense ones."""
    monkeypatch.setattr(selection, "CHUNK_ELEMENTS", 8 * 1024)
    torch.manual_seed(0)
    coder = build(CoderConfig(arch, 32, 1024, k=6, norm_scale=1.4, aux_k=16))
    with torch.no_grad():
        coder.b_enc.normal_(0, 0.3)
        coder.b_dec.normal_(0, 0.3)
    x, dead = torch.randn(50, 32), torch.rand(1024) < 0.4
    results = []
    for sparse in (True, False):
        coder.zero_grad()
        with coder.sparse_acts() if (sparse and arch == "topk") else torch.enable_grad():
            out = coder(x, dead_mask=dead)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in coder.named_parameters()}))
    (sp, sp_grads), (de, de_grads) = results
    if arch == "topk":
        assert sp.acts.is_sparse and not de.acts.is_sparse and not coder._sparse_acts  # the context restores
    torch.testing.assert_close(sp.acts.to_dense() if sp.acts.is_sparse else sp.acts, de.acts, atol=0, rtol=0)
    torch.testing.assert_close(sp.x_hat, de.x_hat, atol=0, rtol=0)
    assert float(sp.parts["aux"]) > 0
    for name in de_grads:
        torch.testing.assert_close(sp_grads[name], de_grads[name], atol=0, rtol=0)
    # and the fast TopK path equals the plain dense one (AuxK included)
    if arch == "topk":
        coder.fast = False
        coder.zero_grad()
        ref = coder(x, dead_mask=dead)
        ref.loss.backward()
        torch.testing.assert_close(ref.loss, de.loss, atol=1e-5, rtol=1e-5)
        for name, p in coder.named_parameters():
            torch.testing.assert_close(de_grads[name], p.grad, atol=1e-5, rtol=1e-5)


def test_trainer_dead_counts_from_sparse_latents_equal_dense_ones():
    from mechscope.dictionary.train import Trainer
    from mechscope.dictionary.trainer_config import TrainConfig

    class Stream:
        sites, widths, batch_tokens, start = ["x"], {"x": 16}, 64, 0

    trainer = Trainer(Stream(), [CoderConfig("topk", 16, 256, k=3)], TrainConfig(total_tokens=640, batch_tokens=64))
    coder = build(CoderConfig("topk", 16, 256, k=3, hook_name="x"))
    x = torch.randn(64, 16)
    x[:5] = 0.0  # all-zero rows: selected values may be 0
    with torch.no_grad():
        coder.b_enc.fill_(-0.5)  # some selected latents stay at 0 (not fired)
        dense = coder(x).acts
        with coder.sparse_acts():
            sparse = coder(x).acts
    via_sparse, via_dense = trainer._fired(sparse), trainer._fired(dense)
    assert torch.equal(via_sparse, via_dense)
    assert 0 < int(via_sparse.sum()) < 256


def test_encoder_init_scale_is_the_least_squares_scale_at_init():
    """c = 1 / (1 + A - Q/A) minimises |x - c top-k reconstruction|^2 at init, for isotropic or not."""
    torch.manual_seed(0)
    d_in, d_sae, k = 128, 2048, 16
    coder = build(CoderConfig("topk", d_in, d_sae, k=k))
    c = encoder_init_scale(k, d_sae, d_in)
    torch.testing.assert_close(coder.W_enc.detach(), c * coder.W_dec.detach().T)
    x = torch.randn(2048, d_in) * torch.linspace(0.2, 2.0, d_in)  # anisotropic inputs
    with torch.no_grad():
        recon = coder.decode(coder.encode(x))  # = c * (reconstruction at scale 1)
        best = float((x * recon).sum() / recon.pow(2).sum())  # least-squares multiple of it
    assert 0.3 < c < 0.9 and best == pytest.approx(1.0, abs=0.03)
    assert encoder_init_scale(k, d_sae, 100 * d_in) == pytest.approx(1.0, abs=0.01)  # wide inputs: ~1
    relu = build(CoderConfig("relu", d_in, d_sae))  # L1 coders keep W_enc = W_dec^T
    torch.testing.assert_close(relu.W_enc.detach(), relu.W_dec.detach().T)


def test_sparse_decode_backward_equals_embedding_bag_autograd():
    gen = torch.Generator().manual_seed(3)
    n, k, d_sae, d_out = 30, 5, 200, 16
    idx = torch.stack([torch.randperm(d_sae, generator=gen)[:k] for _ in range(n)])  # distinct, unsorted
    leaves = [
        torch.randn(n, k, generator=gen, dtype=torch.float64),
        torch.randn(d_sae, d_out, generator=gen, dtype=torch.float64),
        torch.randn(d_out, generator=gen, dtype=torch.float64),
    ]
    upstream = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
    grads = []
    for fast in (True, False):
        v, W, b = [t.clone().requires_grad_() for t in leaves]
        out = (
            sparse_decode(v, idx, W, b)
            if fast
            else torch.nn.functional.embedding_bag(idx, W, per_sample_weights=v, mode="sum") + b
        )
        grads.append(torch.autograd.grad((out * upstream).sum(), (v, W, b)))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    args = [t.clone().requires_grad_() for t in leaves]
    assert torch.autograd.gradcheck(lambda v, W, b: sparse_decode(v, idx, W, b), args)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_decoder_projection_and_renormalisation_equal_the_plain_formulas(arch):
    """before_step / after_step (one native pass over every row where the kernels are built)
    give SparseCoder's plain torch formulas, up to summation order."""
    from mechscope.dictionary.base import SparseCoder

    torch.manual_seed(0)
    coder = build(CoderConfig(arch, 24, 300, k=4))
    with torch.no_grad():
        coder.W_dec.mul_(torch.rand(300, 1) + 0.5)  # rows off unit norm
    coder.W_dec.grad = torch.randn(300, 24)
    grad, weights = coder.W_dec.grad.clone(), coder.W_dec.detach().clone()
    coder.before_step()
    reference = grad - (grad * weights).sum(-1, keepdim=True) * weights / weights.pow(2).sum(-1, keepdim=True)
    torch.testing.assert_close(coder.W_dec.grad, reference, rtol=1e-5, atol=1e-6)
    coder.after_step()
    torch.testing.assert_close(coder.W_dec.detach(), weights / weights.norm(dim=-1, keepdim=True))
    SparseCoder.after_step(coder)  # the plain formula on unit rows changes nothing more
    torch.testing.assert_close(coder.W_dec.detach(), weights / weights.norm(dim=-1, keepdim=True))
