"""The seven architectures: recovery of a known synthetic dictionary, the fast TopK path
against the dense one, each method's defining invariant, and per-input normalisation.

Recovery budgets (512 unit atoms in d=64, ~5 active with U[0,1] coefficients, noise 0.01;
Adam at a constant lr on fresh batches of 128; mean best |cos| between true atoms and decoder
rows >= 0.9). Measured on one thread (a shared 2-core machine) with seeds 0 and 1; L0 on 4096
held-out inputs (eval mode: BatchTopK at its learned threshold); time per run including the
initialisation. "ln": input_norm="layer_norm" (each input standardised over its features):

    arch        d_sae  steps  lr    settings                                   recovery     L0       time
    topk        1024   400    1e-2  k=8                                        0.938 0.933  7.5-7.7  2.5-3 s
    relu        1024   400    1e-2  l1_coeff=0.3                               0.951 0.948  6.3      1.3 s
    gated       1024   800    5e-3  l1_coeff=0.6                               0.940 0.944  4.7-4.9  3.7 s
    switch      2048   1000   1e-2  k=8, 2 experts                             0.925 0.923  7.8      7-10 s
    batchtopk   1024   400    1e-2  k=8, ln                                    0.930 0.924  5.7-6.1  3-3.6 s
    matryoshka  1024   500    5e-3  k=8, prefixes (512, 1024), ln              0.933 0.929  6.8-6.9  3.7 s
    jumprelu    1024   500    1e-2  l0_coeff=2.25, bandwidth=0.3,              0.954 0.954  4.4-4.5  2.2 s
                                    theta0=0.168, Adam beta1=0, ln

Why ln for the three threshold methods: on this generator an input's norm grows with its number
of atoms. BatchTopK and Matryoshka (which builds on it) select by one threshold over the whole
batch, JumpReLU by per-latent thresholds, so without it the first latents to fire are fitted to
many-atom inputs, learn mixtures of atoms, and the rest die (batchtopk after 300-400 steps: ~100
latents fire on >3% of inputs, several times an atom's rate, with decoder cos ~0.5 to 4 atoms
each; ~60% dead; AuxK does not revive them: their pre-activations sit below 0, so the ReLU of the
AuxK top-k passes no gradient). Without ln (lr 1e-2; batchtopk and matryoshka with prefixes
(256, 1024) after 600 steps; jumprelu after 1000 at l0_coeff 6e-2, bandwidth 0.05, theta0 0.027,
the settings above in raw units): batchtopk 0.635/0.614, matryoshka 0.580/0.586, jumprelu
0.871/0.869; batchtopk still 0.78 after 2500 steps at lr 3e-3. The BatchTopK reference code
standardises every input the same way (input_unit_norm). TopK's per-input selection and ReLU's
soft L1 do not have that bias.

The ln settings are in standardised units: inputs there have norm sqrt(63) ~ 7.9 against a mean
raw norm of 1.23 here (6.5x), so JumpReLU's raw-unit settings scale by that (l0_coeff by its
square; theta0 = c sqrt(l0_coeff), c the encoder's init scale, see jumprelu.py); with the raw
settings under ln it reaches only 0.73/0.72 in 1000 steps (L0 ~50). Matryoshka with ln and
prefixes (256, 1024) plateaus below 0.9 (0.846/0.830 at lr 1e-2 after 800 steps, 0.899/0.896
at 5e-3 after 1000): an inner dictionary smaller than the 512 flat atoms learns mixtures that
the outer latents then correct (seed 0, lr 1e-2, 600 steps: the 256 inner rows are the best
match of 330 atoms, the 768 outer rows lie at median cos 0.47 to any atom); with (512, 1024)
at lr 1e-2 it levels off at 0.898/0.891 (600 steps).

Does ln help the others? TopK with ln (k=8, lr 1e-2): 0.906/0.892 after 200 steps (0.837/0.835
without), but 0.935/0.924 after 400 (0.938/0.933 without): faster early, no higher after. (Rows
fitted to centred inputs lose each atom's component along the all-ones direction, which caps the
mean cosine near 1 - 1/(2d) = 0.992.) relu, gated and switch were not measured with ln.

Switch needs 2 experts of 1024: inputs mix atoms at random, so each expert must hold every
atom, and each sees half the inputs: about twice TopK's steps, over the ~5 s aim.

Gated at lr 1e-2: 0.83/0.82 (L0 3); l1_coeff 0.8 (lr 3e-3, 1000 steps): 0.81/0.79 (L0 5.5).
JumpReLU beta1 = 0 is the paper's Adam setting (seed 0 without ln: 0.74 with the default 0.9).
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from mechscope.dictionary import ARCHITECTURES, CoderConfig, build, geometric_median
from mechscope.dictionary.config import INPUT_NORMS
from mechscope.dictionary.topk import TopKEncode
from mechscope.errors import MechscopeError

from .synthetic import recovery, train


class Budget(NamedTuple):
    d_sae: int
    steps: int
    lr: float
    cfg: dict
    betas: tuple[float, float] = (0.9, 0.999)


BUDGETS = {
    "topk": Budget(1024, 400, 1e-2, {"k": 8}),
    "batchtopk": Budget(1024, 400, 1e-2, {"k": 8, "input_norm": "layer_norm"}),
    "matryoshka": Budget(1024, 500, 5e-3, {"k": 8, "prefixes": (512, 1024), "input_norm": "layer_norm"}),
    "switch": Budget(2048, 1000, 1e-2, {"k": 8, "n_experts": 2}),
    "relu": Budget(1024, 400, 1e-2, {"l1_coeff": 0.3}),
    "gated": Budget(1024, 800, 5e-3, {"l1_coeff": 0.6}),
    "jumprelu": Budget(
        1024,
        500,
        1e-2,
        {"l0_coeff": 2.25, "bandwidth": 0.3, "init_threshold": 0.168, "input_norm": "layer_norm"},
        betas=(0.0, 0.999),
    ),
}


@pytest.mark.parametrize("arch", list(BUDGETS))
def test_recovers_a_known_dictionary(arch):
    b = BUDGETS[arch]
    coder, atoms = train(CoderConfig(arch, 64, b.d_sae, **b.cfg), steps=b.steps, batch=128, lr=b.lr, betas=b.betas)
    assert recovery(coder.W_dec.detach(), atoms) >= 0.9


@pytest.mark.parametrize("input_norm", INPUT_NORMS)
def test_fast_topk_path_equals_the_dense_path(input_norm):
    torch.manual_seed(0)
    coder = build(CoderConfig("topk", 24, 96, k=6, norm_scale=1.3, aux_k=16, input_norm=input_norm))
    with torch.no_grad():
        coder.b_enc.normal_(0, 0.3)
        coder.b_dec.normal_(0, 0.3)
    x, dead = torch.randn(40, 24), torch.rand(96) < 0.3
    results = []
    for fast in (True, False):
        coder.fast = fast
        coder.zero_grad()
        out = coder(x, dead_mask=dead)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in coder.named_parameters()}))
    (fast_out, fast_grads), (dense_out, dense_grads) = results
    for a, b in zip(fast_out[:3], dense_out[:3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name in dense_grads:
        torch.testing.assert_close(fast_grads[name], dense_grads[name], atol=1e-5, rtol=1e-5)
    # without AuxK, the encoder gradient lives only on columns some input selected
    coder.fast = True
    coder.zero_grad()
    out = coder(x)
    out.loss.backward()
    assert coder.W_enc.grad[:, ~(out.acts != 0).any(0)].abs().max() == 0


def test_topk_encode_backward_against_autograd_of_the_dense_formula():
    torch.manual_seed(1)
    x = torch.randn(8, 10, dtype=torch.float64, requires_grad=True)
    W = torch.randn(10, 30, dtype=torch.float64, requires_grad=True)
    b = torch.randn(30, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W, b: TopKEncode.apply(x, W, b, 4)[0], (x, W, b))


def test_batchtopk_keeps_k_per_input_on_average_and_learns_a_threshold():
    torch.manual_seed(0)
    coder = build(CoderConfig("batchtopk", 16, 64, k=5, threshold_momentum=0.0))
    x = torch.randn(32, 16)
    out = coder(x)
    assert int((out.acts > 0).sum()) == 5 * 32
    assert float(coder.threshold) == pytest.approx(float(out.acts.detach()[out.acts > 0].min()))
    coder.eval()
    pre = coder.pre_acts(x)
    torch.testing.assert_close(coder.encode(x), pre.relu() * (pre > coder.threshold), atol=0, rtol=0)


def test_matryoshka_loss_is_the_sum_over_prefixes():
    torch.manual_seed(0)
    coder = build(CoderConfig("matryoshka", 16, 64, k=5, prefixes=(8, 24, 64)))
    x = torch.randn(32, 16)
    out = coder(x)
    acts = out.acts.detach()
    total = sum(((acts[:, :m] @ coder.W_dec[:m] + coder.b_dec) - x).pow(2).sum(-1).mean() for m in (8, 24, 64))
    torch.testing.assert_close(out.loss.detach(), total.detach(), atol=1e-4, rtol=1e-5)
    assert set(out.parts) >= {"mse_8", "mse_24", "mse_64"}


def test_switch_routes_each_input_to_one_expert():
    torch.manual_seed(0)
    coder = build(CoderConfig("switch", 16, 64, k=3, n_experts=4))
    x = torch.randn(50, 16)
    out = coder(x)
    experts = (out.acts != 0).reshape(50, 4, 16).any(-1)
    assert bool((experts.sum(-1) == 1).all())
    torch.testing.assert_close(coder.decode(out.acts), out.x_hat, atol=1e-6, rtol=0)
    out.loss.backward()
    assert coder.W_router.grad.abs().sum() > 0  # the router learns through p_e
    # balanced routing with uniform router probabilities gives the minimum, 1
    with torch.no_grad():
        coder.W_router.zero_()
    assert float(coder(x).parts["balance"]) == pytest.approx(1.0, abs=1e-6)


def test_jumprelu_threshold_pseudo_gradient():
    """d loss / d theta = -(theta/eps) sum K(...) dL/dacts (JumpReLU) - l0/eps sum K(...) (L0)."""
    torch.manual_seed(0)
    coder = build(CoderConfig("jumprelu", 8, 16, l0_coeff=0.5, bandwidth=0.2, init_threshold=0.3))
    x = torch.randn(64, 8)
    out = coder(x)
    out.loss.backward()
    pre = coder.pre_acts(x).detach()
    theta = coder.threshold.detach()
    window = ((pre - theta).abs() < 0.1).double()
    acts = out.acts.detach().requires_grad_()
    recon = ((acts @ coder.W_dec.detach() + coder.b_dec.detach()) - x).pow(2).sum(-1).mean()
    (g_acts,) = torch.autograd.grad(recon, acts)
    d_theta = -(theta / 0.2) * (window * g_acts).sum(0) - 0.5 / 0.2 * window.sum(0) / 64
    torch.testing.assert_close(coder.log_threshold.grad.double(), (d_theta * theta).double(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.acts, pre * (pre > theta), atol=0, rtol=0)


def test_gated_acts_and_unit_norm_hooks():
    torch.manual_seed(0)
    coder = build(CoderConfig("gated", 8, 16))
    with torch.no_grad():
        coder.r_mag.normal_()
        coder.b_mag.normal_()
        coder.b_enc.normal_()
    x = torch.randn(20, 8)
    gate, mag = x @ coder.W_enc + coder.b_enc, x @ (coder.W_enc * coder.r_mag.exp()) + coder.b_mag
    torch.testing.assert_close(coder.encode(x), (gate > 0) * mag.relu(), atol=1e-5, rtol=1e-5)
    topk = build(CoderConfig("topk", 8, 16, k=2))
    topk(torch.randn(20, 8)).loss.backward()
    topk.before_step()
    assert (topk.W_dec.grad * topk.W_dec).sum(-1).abs().max() < 1e-5  # no component along the rows
    with torch.no_grad():
        topk.W_dec.mul_(3.0)
    topk.after_step()
    torch.testing.assert_close(topk.W_dec.norm(dim=-1), torch.ones(16))


@pytest.mark.parametrize("arch", ["relu", "topk", "gated", "jumprelu", "switch"])
def test_folding_norm_scale_keeps_the_map(arch):
    torch.manual_seed(0)
    coder = build(CoderConfig(arch, 8, 32, k=3, n_experts=2, norm_scale=3.0)).eval()
    with torch.no_grad():
        coder.b_dec.normal_()
    folded = coder.fold_norm_scale()
    assert not folded.training and coder.fold_norm_scale().train().fold_norm_scale().training  # mode carried over
    x = torch.randn(16, 8)
    torch.testing.assert_close(folded.encode(x), coder.encode(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded.decode(folded.encode(x)), coder.decode(coder.encode(x)), atol=1e-5, rtol=1e-5)


def test_geometric_median_ignores_outliers():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(200, 4) * 0.1 + 2.0, torch.full((20, 4), 1000.0)])
    median = geometric_median(x)
    assert (median - 2.0).abs().max() < 0.1 and (x.mean(0) - 2.0).abs().min() > 50


def _layer_norm_coder(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    coder = build(
        CoderConfig(
            arch,
            16,
            64,
            k=4,
            n_experts=4,
            prefixes=(16, 64) if arch == "matryoshka" else (),
            input_norm="layer_norm",
            norm_scale=2.5,
            dtype="float64",
        )
    )
    with torch.no_grad():
        coder.b_enc.normal_(0, 0.1)
        coder.b_dec.normal_(0, 0.3)
        coder(torch.randn(64, 16, dtype=torch.float64) * 3 + 1)  # batchtopk/matryoshka: the inference threshold
    return coder.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_layer_norm_maps_raw_inputs_back_and_is_equivariant(arch):
    """forward's x_hat = predict(x) = decode(encode(x), x=x), in raw units; the loss is in the
    standardised space; predict(a x + b 1) = a predict(x) + b 1 for a > 0 (up to the 1e-5 eps)."""
    coder = _layer_norm_coder(arch)
    x = torch.randn(32, 16, dtype=torch.float64) * 2 + 0.5
    with torch.no_grad():
        out = coder(x)
    torch.testing.assert_close(out.x_hat, coder.predict(x), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.x_hat, coder.decode(coder.encode(x), x=x), atol=1e-10, rtol=1e-10)
    mean, std = x.mean(-1, keepdim=True), x.std(-1, keepdim=True)
    standardised = (x - mean) / (std + 1e-5)
    torch.testing.assert_close(coder.pre_acts(x), coder.pre_acts(standardised), atol=1e-4, rtol=1e-4)
    loss_space_error = ((out.x_hat - mean) / std - standardised).pow(2).sum(-1).mean()
    assert float(out.parts["mse"]) == pytest.approx(float(loss_space_error), rel=1e-4)
    ones = torch.ones(16, dtype=torch.float64)
    for a, b in ((3.0, -1.5), (0.5, 2.0)):
        torch.testing.assert_close(
            coder.predict(a * x + b * ones), a * coder.predict(x) + b * ones, atol=1e-4, rtol=1e-4
        )
    with pytest.raises(MechscopeError, match=r"decode\(acts, x=x\)"):
        coder.decode(coder.encode(x))
    folded = coder.fold_norm_scale().eval()  # norm_scale is unused: nothing to fold
    assert folded.cfg.norm_scale == 1.0 and torch.equal(folded.predict(x), coder.predict(x))


def test_input_norm_is_checked():
    with pytest.raises(MechscopeError, match="unknown input_norm 'unit'.*none, layer_norm"):
        CoderConfig("topk", 16, 64, input_norm="unit")
    with pytest.raises(MechscopeError, match="single-site autoencoders"):
        CoderConfig("topk", 16, 64, d_out=8, target_hook="blocks.0.hook_mlp_out", input_norm="layer_norm")
    with pytest.raises(MechscopeError, match="single-site autoencoders"):
        CoderConfig("crosscoder", 16, 64, blocks=("a", "b"), input_norm="layer_norm")
