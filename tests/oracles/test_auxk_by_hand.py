"""The TopK SAE's AuxK loss against its definition written out by hand (Gao et al. 2024,
"Scaling and evaluating sparse autoencoders", and EleutherAI/sparsify): the aux_k dead
latents with the largest pre-activations (ReLU'd) reconstruct the residual error
e = target - x_hat through the decoder without its bias, and the loss is normalised by the
error's variance around its batch mean:

    aux = ||e_hat - e||^2 / ||e - mean_batch(e)||^2

The inputs here have a large mean, so an error normalised without centring is far off."""

from __future__ import annotations

import pytest
import torch

from mechscope.dictionary import CoderConfig, build
from mechscope.dictionary.topk import aux_loss

D_IN, D_SAE, K, AUX_K = 16, 64, 4, 6


def _coder(seed=0):
    torch.manual_seed(seed)
    coder = build(CoderConfig("topk", D_IN, D_SAE, k=K, aux_k=AUX_K))
    with torch.no_grad():
        coder.b_dec.copy_(torch.randn(D_IN))
        coder.b_enc.copy_(0.1 * torch.randn(D_SAE))
    return coder


def _inputs(seed=1, n=32):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=gen) + 4.0  # mean far from 0


def _dead(seed=2):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(D_SAE, dtype=torch.bool)
    mask[torch.randperm(D_SAE, generator=gen)[:20]] = True
    return mask


def _aux_by_hand(coder, x, x_hat, target, dead_mask, aux_k=AUX_K):
    W_enc, b_enc = coder.W_enc.detach().double(), coder.b_enc.detach().double()
    W_dec, b_dec = coder.W_dec.detach().double(), coder.b_dec.detach().double()
    x, x_hat, target = x.double(), x_hat.detach().double(), target.double()
    dead = dead_mask.nonzero()[:, 0]
    error = target - x_hat
    total_err, total_var = 0.0, 0.0
    mean_error = error.mean(0)
    for b in range(len(x)):
        pre = (x[b] - b_dec) @ W_enc[:, dead] + b_enc[dead]  # dead latents only
        order = sorted(range(len(dead)), key=lambda j: -float(pre[j]))[: min(aux_k, len(dead))]
        e_hat = sum(max(float(pre[j]), 0.0) * W_dec[dead[j]] for j in order)  # no decoder bias
        total_err += float((e_hat - error[b]).pow(2).sum())
        total_var += float((error[b] - mean_error).pow(2).sum())
    return total_err / total_var


def test_aux_loss_is_the_centred_normalised_error_reconstruction():
    coder, x, dead = _coder(), _inputs(), _dead()
    gen = torch.Generator().manual_seed(5)
    target = x + 0.5 * torch.randn(x.shape, generator=gen)
    x_hat = target - (3.0 + torch.randn(x.shape, generator=gen))  # an error with a large mean
    expected = _aux_by_hand(coder, x, x_hat, target, dead)
    uncentred = expected * float(
        ((target - x_hat) - (target - x_hat).mean(0)).pow(2).sum() / (target - x_hat).pow(2).sum()
    )
    assert abs(uncentred - expected) > 0.5 * expected  # the two normalisations really differ here
    fast = aux_loss(coder, x, x_hat, target, dead, b_dec=coder.b_dec)  # encoder subtracts b_dec
    plain = aux_loss(coder, coder.centered(x), x_hat, target, dead)  # already centred input
    assert float(fast.detach()) == pytest.approx(expected, rel=1e-4)
    assert float(plain.detach()) == pytest.approx(expected, rel=1e-4)
    # fewer dead latents than aux_k: all of them are used
    few = torch.zeros(D_SAE, dtype=torch.bool)
    few[[3, 17, 40]] = True
    assert float(aux_loss(coder, x, x_hat, target, few, b_dec=coder.b_dec).detach()) == pytest.approx(
        _aux_by_hand(coder, x, x_hat, target, few), rel=1e-4
    )
    # nothing dead: no loss
    assert float(aux_loss(coder, x, x_hat, target, torch.zeros(D_SAE, dtype=torch.bool))) == 0.0
    assert float(aux_loss(coder, x, x_hat, target, None)) == 0.0


@pytest.mark.parametrize("fast", [True, False])
def test_forward_adds_aux_coeff_times_the_hand_aux_loss(fast):
    coder, x, dead = _coder(seed=3), _inputs(seed=4), _dead(seed=6)
    coder.fast = fast
    out = coder(x, dead_mask=dead)
    x_hat = out.x_hat
    expected = _aux_by_hand(coder, x, x_hat, x, dead)
    assert float(out.parts["aux"]) == pytest.approx(expected, rel=1e-4)
    mse = float((x_hat.detach().double() - x.double()).pow(2).sum(-1).mean())
    assert float(out.loss) == pytest.approx(mse + coder.cfg.aux_coeff * expected, rel=1e-4)
    # the AuxK term adds encoder gradient in the dead columns only
    out.loss.backward()
    alive = ~dead
    assert coder.W_enc.grad is not None and float(coder.W_enc.grad[:, dead].abs().sum()) > 0
    without = _coder(seed=3)
    without.fast = fast
    plain = without(x)
    assert "aux" not in plain.parts
    assert float(plain.loss) == pytest.approx(mse, rel=1e-4)
    plain.loss.backward()
    assert not torch.allclose(coder.W_enc.grad[:, dead], without.W_enc.grad[:, dead])
    assert torch.allclose(coder.W_enc.grad[:, alive], without.W_enc.grad[:, alive], atol=1e-5)
