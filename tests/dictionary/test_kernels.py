"""The native TopK kernels (kernels.c) against torch: the same selection and the same
sparse products, and a whole training step the same with and without them."""

from __future__ import annotations

import shutil

import pytest
import torch

from mechscope.dictionary import CoderConfig, build, grad_spares, kernels, selection

needs_kernels = pytest.mark.skipif(kernels.load() is None, reason="no C compiler: the torch kernels run instead")


def test_kernels_build_where_there_is_a_compiler():
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")
    assert kernels.load() is not None, "a compiler is here but the kernels did not build (see the warning logged)"


@needs_kernels
@pytest.mark.parametrize("d, k, blocks", [(4096, 32, 256), (1000, 8, 125), (64, 64, 64), (96, 6, 6)])
def test_native_topk_selects_what_torch_topk_selects(d, k, blocks):
    gen = torch.Generator().manual_seed(d)
    for pre in (
        torch.randn(300, d, generator=gen),
        torch.randint(0, 3, (300, d), generator=gen).float(),  # heavy ties
        torch.zeros(3, d),  # one value everywhere
        torch.randn(300, d, generator=gen).clamp(max=0.2),
    ):  # ties at the top
        values, idx = kernels.topk_rows(pre, k, blocks)
        want = pre.topk(k, dim=-1).values
        torch.testing.assert_close(values.sort(-1).values, want.sort(-1).values, atol=0, rtol=0)
        torch.testing.assert_close(pre.gather(1, idx), values, atol=0, rtol=0)
        assert bool((idx.sort(-1).values.diff(dim=-1) > 0).all())  # k distinct columns


@needs_kernels
@pytest.mark.parametrize("data", ["normal", "ties", "constant", "clamped"])
def test_merging_tiles_natively_selects_what_torch_topk_selects(monkeypatch, data):
    """The tiled encoder's native merge (a partial last tile, several row chunks, the bias
    added on the fly) against torch.topk over whole rows; ties may pick other columns of
    equal value."""
    monkeypatch.setattr(selection, "TILE_COLUMNS", 256)  # 12 tiles, the last 240 wide
    monkeypatch.setattr(selection, "CHUNK_ELEMENTS", 256 * 37)  # chunks of 37 rows
    gen = torch.Generator().manual_seed(5)
    n, d_in, d_sae, k = 100, 8, 3056, 16
    x = torch.randn(n, d_in, generator=gen)
    W = {
        "normal": torch.randn(d_in, d_sae, generator=gen),
        "ties": torch.randint(0, 2, (d_in, d_sae), generator=gen).float(),
        "constant": torch.ones(d_in, d_sae),
        "clamped": torch.randn(d_in, d_sae, generator=gen),
    }[data]
    b = torch.randn(d_sae, generator=gen) * 0.1 if data in ("normal", "clamped") else torch.zeros(d_sae)
    if data == "clamped":
        x = x.abs()
        W = W.clamp(max=0.0)  # many pre-activations exactly 0 + bias: ties at the top
        b = b.clamp(max=0.0)
    calls = []
    merge = kernels.topk_merge
    monkeypatch.setattr(kernels, "topk_merge", lambda *a: calls.append(1) or merge(*a))
    values, idx = selection.encode_tiled(x, W, b, k, 256)
    assert calls, "the native merge did not run"
    pre = x @ W + b
    torch.testing.assert_close(values.sort(-1).values, pre.topk(k, dim=-1).values.sort(-1).values)
    torch.testing.assert_close(pre.gather(1, idx), values)
    assert bool((idx.sort(-1).values.diff(dim=-1) > 0).all())  # k distinct columns


@needs_kernels
@pytest.mark.parametrize("where", [100, 2900])  # the first tile, a later one
def test_merging_tiles_falls_back_to_torch_on_nan(where):
    gen = torch.Generator().manual_seed(6)
    x, W, b = torch.randn(20, 8, generator=gen), torch.randn(8, 3056, generator=gen), torch.zeros(3056)
    W[:, where] = float("nan")  # NaN in every row at one column
    values, idx = selection.encode_tiled(x, W, b, 8, 256)
    assert bool((idx == where).any(-1).all()) and bool(values.isnan().any(-1).all())  # torch ranks NaN first
    if where >= 2816:  # the kernel itself declines a tile with NaN
        pre, floor = x @ W[:, 2816:], torch.zeros(20)
        assert not kernels.topk_merge(
            pre, b[2816:], 2816, torch.zeros(20, 8), torch.zeros(20, 8, dtype=torch.long), floor
        )


@needs_kernels
def test_native_topk_declines_rows_with_nan_and_unsupported_input():
    pre = torch.randn(8, 512)
    pre[3, 7] = float("nan")
    values, idx = kernels.topk_rows(pre, 4, 32)  # torch.topk ranks NaN first
    assert torch.isnan(values[3]).any() and not torch.isnan(values[[0, 1, 2, 4, 5, 6, 7]]).any()
    assert kernels.topk_rows(torch.randn(8, 512, dtype=torch.float64), 4, 32) is None
    assert kernels.topk_rows(torch.randn(512, 8).T, 4, 32) is None  # not contiguous
    values, _ = selection.topk_select(pre, 4)  # and topk_select still answers
    assert values.shape == (8, 4)


@needs_kernels
def test_native_scatter_equals_the_sparse_product():
    gen = torch.Generator().manual_seed(0)
    n, k, rows, d = 70, 5, 300, 24
    idx = torch.randint(0, rows, (n, k), generator=gen)  # repeats within a row too
    g, x = torch.randn(n, k, generator=gen), torch.randn(n, d, generator=gen)
    want = torch.zeros(rows, d, dtype=torch.float64).index_add_(
        0, idx.reshape(-1), (g[..., None].double() * x[:, None, :].double()).reshape(-1, d)
    )
    got = kernels.scatter_columns(idx, g, x, rows)
    assert got.shape == (d, rows)
    torch.testing.assert_close(got.double(), want.T, atol=1e-5, rtol=1e-5)


@needs_kernels
@pytest.mark.parametrize("need_values, need_w", [(True, True), (True, False), (False, True)])
def test_native_decoder_backward_equals_autograd(need_values, need_w):
    gen = torch.Generator().manual_seed(1)
    n, k, rows, d = 90, 6, 200, 40  # d not a multiple of 16
    idx = torch.stack([torch.randperm(rows, generator=gen)[:k] for _ in range(n)])
    v, w = torch.randn(n, k, generator=gen), torch.randn(rows, d, generator=gen)
    e = torch.randn(n, d, generator=gen)
    vr, wr = v.double().requires_grad_(), w.double().requires_grad_()
    out = torch.nn.functional.embedding_bag(idx, wr, per_sample_weights=vr, mode="sum")
    want_v, want_w = torch.autograd.grad((out * e.double()).sum(), (vr, wr))
    got_v, got_w = kernels.decode_backward(idx, v, e, w, need_values, need_w)
    assert (got_v is None) != need_values and (got_w is None) != need_w
    if need_values:
        torch.testing.assert_close(got_v.double(), want_v, atol=1e-5, rtol=1e-5)
    if need_w:
        torch.testing.assert_close(got_w.double(), want_w, atol=1e-5, rtol=1e-5)
    assert kernels.decode_backward(idx + rows, v, e, w, True, True) is None  # an index outside w: refused


def _step(coder, x, dead):
    coder.zero_grad()
    with coder.sparse_acts():
        out = coder(x, dead_mask=dead)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in coder.named_parameters()}


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16-selection", "fp32-selection"])
def test_a_training_step_is_the_same_with_and_without_the_native_kernels(monkeypatch, bf16):
    monkeypatch.setattr(selection, "CHUNK_ELEMENTS", 64 * 2048)  # several chunks
    if not bf16:
        monkeypatch.setattr(kernels, "bf16_selection", lambda: False)
    torch.manual_seed(0)
    coder = build(CoderConfig("topk", 48, 2048, k=12, aux_k=64))
    x, dead = torch.randn(300, 48), torch.rand(2048) < 0.3
    native, native_grads = _step(coder, x, dead)
    monkeypatch.setattr(kernels, "load", lambda: None)
    plain, plain_grads = _step(coder, x, dead)
    torch.testing.assert_close(native.loss, plain.loss, atol=1e-6, rtol=1e-6)
    native_acts, plain_acts = native.acts.to_dense(), plain.acts.to_dense()
    assert torch.equal(native_acts != 0, plain_acts != 0)  # the same latents selected
    torch.testing.assert_close(native_acts, plain_acts, atol=1e-6, rtol=1e-6)  # (bf16 selection: fp32 dots)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(native_grads[name], grad, atol=1e-5, rtol=1e-5)


needs_bf16 = pytest.mark.skipif(not kernels.bf16_selection(), reason="no native bfloat16 products on this CPU")


def _exact_top(x, W, b, k):
    return (x.double() @ W.double() + b.double()).topk(k, dim=-1)


@needs_bf16
def test_bf16_selection_picks_the_fp32_top_k():
    gen = torch.Generator().manual_seed(0)
    n, d, width, k = 700, 96, 1024, 16  # several chunks, a partial one
    x = torch.randn(n, d, generator=gen) * torch.linspace(0.1, 3, d)
    W = torch.randn(d, width, generator=gen) / d**0.5
    b = torch.randn(width, generator=gen)
    values, idx = kernels.encode_topk_bf16(x, W, b, k, chunk_rows=256)
    want = _exact_top(x, W, b, k)
    assert torch.equal(idx.sort(-1).values, want.indices.sort(-1).values)
    torch.testing.assert_close(values.double().sort(-1).values, want.values.sort(-1).values, atol=1e-5, rtol=1e-5)


@needs_bf16
def test_bf16_selection_resolves_what_bfloat16_cannot():
    """Columns that differ by a relative 1e-5 (bfloat16 resolves 4e-3): the bf16 products tie,
    the fp32 dots of the candidates decide, and the top k is the fp32 one."""
    gen = torch.Generator().manual_seed(1)
    d, width, k = 64, 512, 8
    base = torch.randn(d, 1, generator=gen)
    W = base * (1 + 1e-5 * torch.randperm(width, generator=gen).float())  # a shuffled ladder of near-copies
    x = torch.randn(40, d, generator=gen)
    x = x * torch.sign(x @ base)  # x . base > 0: the ladder ranks them
    b = torch.zeros(width)
    values, idx = kernels.encode_topk_bf16(x, W, b, k, chunk_rows=16)
    assert torch.equal(idx.sort(-1).values, _exact_top(x, W, b, k).indices.sort(-1).values)
    big = torch.randn(width, generator=gen) * 1e3  # a bias that dwarfs the products
    values, idx = kernels.encode_topk_bf16(x, W * 1e-3, big, k, chunk_rows=16)
    assert torch.equal(idx.sort(-1).values, _exact_top(x, W * 1e-3, big, k).indices.sort(-1).values)


@needs_bf16
def test_bf16_selection_declines_nan_and_can_be_switched_off(monkeypatch):
    x, W, b = torch.randn(20, 32), torch.randn(32, 256), torch.zeros(256)
    x[4, 3] = float("nan")
    assert kernels.encode_topk_bf16(x, W, b, 4, chunk_rows=8) is None  # the fp32 path ranks NaN first
    monkeypatch.setattr(kernels, "bf16_selection", lambda: False)
    assert kernels.encode_topk_bf16(torch.randn(20, 32), W, b, 4, chunk_rows=8) is None


@needs_kernels
def test_handed_back_gradients_are_overwritten_in_place_with_fresh_values():
    """The trainer hands W_enc's and W_dec's used gradients back (`grad_spares.give_back`); the
    next sparse backward writes into those very tensors, and every entry equals what a fresh
    tensor would hold (stale contents, here NaN, never leak through)."""
    torch.manual_seed(0)
    coder = build(CoderConfig("topk", 32, 512, k=4))
    x = torch.randn(64, 32)

    def grads():
        coder.zero_grad(set_to_none=True)
        with coder.sparse_acts():
            coder(x).loss.backward()
        return coder.W_enc.grad, coder.W_dec.grad

    fresh = [g.clone() for g in grads()]
    grad_spares.give_back(coder.W_enc, torch.full_like(fresh[0], float("nan")))
    grad_spares.give_back(coder.W_dec, torch.full_like(fresh[1], float("nan")))
    # only the spares hold them now, as in the trainer (a second reference would make
    # autograd copy the gradient instead of keeping it)
    handed = [t.data_ptr() for t in grad_spares._spares.values()]
    try:
        reused = grads()
        assert [g.data_ptr() for g in reused] == handed  # the same memory
        for got, want in zip(reused, fresh):
            assert torch.equal(got, want)
    finally:
        grad_spares.drop_spares()
    assert not grad_spares._spares and not grad_spares._scratches
