"""Choosing among the automatic adapter's candidates by running the model.

One forward pass records every candidate boundary of every block (through `hooks.py`,
as module-path sites) next to Hugging Face's own `output_hidden_states`. A candidate is
kept only where an identity holds in every layer:

- resid_pre + attn_out + mlp_out == resid_post, and resid_pre + attn_out == resid_mid;
- final_norm(resid_post of the last block) == the last hidden_states entry;
- embed (+ pos_embed) == the first hidden_states entry;
- the attention-input norm maps resid_pre to what the q projection reads.

`auto_model.py` then checks the sites built from these choices once more, through
`Model.run` itself, before it offers them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import torch
from torch import Tensor, nn

from ..hooks import hooked
from ..norms import frozen_norm
from ..sites import Site, SiteTable, View
from .adapter import Tap
from .auto import Guess


def _low_precision(t: Tensor) -> float | None:
    """4 ulps of a half-precision dtype (bfloat16 / float16); None for float32 and float64."""
    return 4 * torch.finfo(t.dtype).eps if t.is_floating_point() and t.element_size() < 4 else None


def close(a, b, tol: float = 1e-5) -> bool:
    """Equal up to float rounding, relative to b's size; False for mismatched shapes or non-tensors.
    Half-precision values are compared element by element, within a few ulps of each."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor) or a.shape != b.shape:
        return False
    ulps = _low_precision(b)
    if ulps is not None:
        a, b = a.float(), b.float()
        return bool(((a - b).abs() <= ulps * (a.abs() + b.abs()) + 1e-6).all())
    scale = float(b.detach().abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a.float(), b.float(), atol=tol * max(1.0, scale), rtol=tol))


@dataclass
class Choice:
    """What the recorded forward pass confirmed (None: nothing confirmed)."""

    attn_out: Tap | None = None
    mlp_out: Tap | None = None
    resid_mid: Tap | None = None
    final_norm: str | None = None
    final_identity: bool = False
    """The last hidden_states entry is the last block's output itself (no final norm)."""
    pos_embed: str | None = None
    pos_per_prompt: bool = False
    """The position embedding has one row per prompt (else one, broadcast over the batch)."""
    attn_in_norm: str | None = None
    parallel: bool | None = None
    """Attention and MLP read the same input; None when neither that nor resid_mid is confirmed."""
    gain_offset: float | None = 0.0
    """RMSNorm gain offset (1.0: weight + 1) that makes frozen_norm reproduce the norms."""
    resid_ok: bool = False
    mlp: str | None = None
    """The MLP module (its output is what hook_post @ W_out + b_out must give)."""
    recorded: dict[str, Tensor] = field(default_factory=dict)
    why_not: list[str] = field(default_factory=list)


def _name(layer: int | None, tap: Tap) -> str:
    return f"{'' if layer is None else layer}|{tap.module}|{tap.boundary}"


def candidate_table(guess: Guess, base: nn.Module, prefix: str) -> SiteTable:
    """Module-path sites for every candidate boundary (block-relative ones in every layer that
    has that module: dense and mixture-of-experts layers can alternate)."""
    taps = {Tap(""), Tap("", "in"), *guess.attn_out, *guess.mlp_out, *guess.resid_mid}
    taps |= {Tap(p, b) for p in (guess.q, guess.mlp_in, guess.mlp_gate, guess.mlp_down) if p for b in ("in", "out")}
    sites = []
    for layer in range(guess.n_layers):
        for tap in taps:
            path = f"{guess.blocks}.{layer}" + (f".{tap.module}" if tap.module else "")
            if not _exists(base, path):
                continue
            sites.append(Site(_name(layer, tap), prefix + path, tap.boundary, View(), ("batch", "..."), (None, None)))
    for path in (guess.embed, *guess.pos_embeds):
        sites.append(Site(_name(None, Tap(path)), prefix + path, "out", View(), ("batch", "..."), (None, None)))
    return SiteTable(sites, guess.n_layers, "candidates")


def _exists(base: nn.Module, path: str) -> bool:
    try:
        base.get_submodule(path)
        return True
    except AttributeError:
        return False


def record(hf: nn.Module, table: SiteTable, call) -> dict[str, Tensor]:
    """Every site of `table` from one call of `call()`; a boundary the model never passes is
    absent. A module whose input is not its first argument or `hidden_states` cannot be read
    at its input: then only outputs are recorded."""
    got: dict[str, Tensor] = {}

    def keep(name, value):
        # a copy: some blocks add into a sublayer's output in place after it returns
        got[name] = value.detach().clone() if isinstance(value, Tensor) else value

    names = [s.name for s in table]
    try:
        with hooked(hf, table, record=names, on_record=keep):
            call()
    except (KeyError, IndexError):
        got.clear()
        with hooked(hf, table, record=[n for n in names if table[n].boundary == "out"], on_record=keep):
            call()
    return got


def choose(
    guess: Guess, rec: dict[str, Tensor], hidden: tuple[Tensor, ...], final: Callable[[str], nn.Module]
) -> Choice:
    """Pick the candidates for which the identities in the module docstring hold in every layer.
    `final(path)` returns a module by base-relative path (for the final norm)."""
    c, L = Choice(recorded=rec, mlp=guess.mlp or guess.mlp_down), guess.n_layers

    def at(layer: int | None, tap: Tap) -> Any:  # a Tensor, or None where nothing was recorded
        return rec.get(_name(layer, tap))

    pre = [at(i, Tap("", "in")) for i in range(L)]
    post = [at(i, Tap("")) for i in range(L)]
    if len(hidden) != L + 1:
        c.why_not.append(f"Hugging Face returns {len(hidden)} hidden states for {L} blocks")
        return c
    same = all(isinstance(p, Tensor) and torch.equal(p, h) for p, h in zip(post[:-1], hidden[1:-1]))
    same = same and isinstance(pre[0], Tensor) and torch.equal(pre[0], hidden[0])
    if not same:
        c.why_not.append("the block outputs differ from Hugging Face's hidden_states")
        return c
    if torch.equal(post[-1], hidden[-1]):
        c.final_identity = True
    else:
        with torch.no_grad():
            c.final_norm = next(
                (
                    p
                    for p in guess.final_norms
                    if close(final(p)(post[-1]), hidden[-1]) and not close(post[-1], hidden[-1])
                ),
                None,
            )
        if c.final_norm is None:
            c.why_not.append("no final norm maps the last block's output to the last hidden_states entry")
            return c
    c.resid_ok = True
    embed = at(None, Tap(guess.embed))
    c.pos_embed = next((p for p in guess.pos_embeds if exact_sum(hidden[0], embed, at(None, Tap(p)))), None)
    c.pos_per_prompt = c.pos_embed is not None and at(None, Tap(c.pos_embed)).shape[0] != 1
    _sublayers(c, guess, at, pre, post)
    _attn_norm(c, guess, at, pre)
    c.parallel = _parallel(c, guess, at, pre)
    with torch.no_grad():
        norm = (final(c.final_norm), post[-1]) if c.final_norm else None
        norm = norm or ((final(f"{guess.blocks}.0.{c.attn_in_norm}"), pre[0]) if c.attn_in_norm else None)
        c.gain_offset = gain_offset(*norm) if norm else 0.0
    return c


def gain_offset(module: nn.Module, x: Tensor) -> float | None:
    """The gain offset with which `frozen_norm` reproduces `module` on `x` (None: none does)."""
    bias = getattr(module, "bias", None)
    for offset in (0.0, 1.0):
        try:
            y = frozen_norm(module, x, offset)(x) + (0 if bias is None else bias)
        except (StopIteration, AttributeError, RuntimeError, TypeError):
            return None
        if close(y, module(x)):
            return offset
    return None


def _parallel(c: Choice, guess: Guess, at, pre) -> bool | None:
    """False when resid_mid is confirmed; True when the MLP reads resid_pre through a norm
    (the attention's own, or one of its own); None when neither can be confirmed."""
    if c.resid_mid is not None or c.mlp_out is None:
        return False if c.resid_mid is not None or guess.mlp is None else None
    if guess.mlp is None:  # as before: no recorded input, so no verdict
        return None
    n = guess.n_layers
    mlp_in = _series(at, Tap(guess.mlp, "in"), n)
    if mlp_in is None:
        return None
    attn = _series(at, c.attn_out, n)
    assert attn is not None  # c.attn_out was chosen where every layer recorded it (_sublayers)
    for norm in guess.norms:  # it reads resid_pre, and detectably not resid_pre + attn_out
        reads_pre = norm == c.attn_in_norm or all(
            close(at(i, Tap(norm, "in")), pre[i]) and not _adds_up(at(i, Tap(norm, "in")), pre[i], attn[i])
            for i in range(n)
        )
        if reads_pre and all(close(at(i, Tap(norm)), mlp_in[i]) for i in range(n)):
            return True
    return None


def _series(at, tap: Tap | None, n: int) -> list | None:
    """The values at `tap` in every layer (zeros for no tap), or None if one is missing."""
    values = [0 if tap is None else at(i, tap) for i in range(n)]
    return values if tap is None or all(isinstance(v, Tensor) for v in values) else None


def _sublayers(c: Choice, guess: Guess, at, pre, post) -> None:
    n = guess.n_layers
    mlp_outs: list[Tap | None] = [*guess.mlp_out] or [None]
    for a, m in product(guess.attn_out, mlp_outs):
        attn, mlp = _series(at, a, n), _series(at, m, n)
        if a != m and attn and mlp and all(exact_sum(post[i], pre[i], attn[i], mlp[i]) for i in range(n)):
            c.attn_out, c.mlp_out = a, m
            break
    if c.attn_out is None:
        c.why_not.append("no attention / MLP outputs add up to resid_post - resid_pre: no hook_attn_out, hook_mlp_out")
        return
    attn = _series(at, c.attn_out, n)
    assert attn is not None  # c.attn_out was chosen where every layer recorded it
    c.resid_mid = next(
        (t for t in guess.resid_mid if all(exact_sum(at(i, t), pre[i], attn[i]) for i in range(n))), None
    )


def exact_sum(total, *parts) -> bool:
    """total == sum(parts) up to rounding, and conclusively: leaving out any one part breaks it
    (in low precision a small part could otherwise hide inside the tolerance)."""
    if not _adds_up(total, *parts):
        return False
    real = [i for i, p in enumerate(parts) if isinstance(p, Tensor)]
    return len(real) < 2 or not any(_adds_up(total, *[parts[j] for j in real if j != i]) for i in real)


def _adds_up(total, *parts) -> bool:
    """total == sum(parts) up to rounding; False when a part is missing or the shapes do not broadcast."""
    if not all(isinstance(p, (Tensor, int)) for p in (total, *parts)):
        return False
    try:
        ulps = _low_precision(total)
        if ulps is None:
            return close(sum(parts[1:], parts[0]), total)
        # half precision: the model rounded after each addition; allow that, element by element
        parts32 = [p.float() if isinstance(p, Tensor) else p for p in parts]
        bound = ulps * (sum(abs(p) if isinstance(p, Tensor) else 0 for p in parts32) + total.float().abs()) + 1e-6
        return bool(((sum(parts32[1:], parts32[0]) - total.float()).abs() <= bound).all())
    except RuntimeError:
        return False


def _attn_norm(c: Choice, guess: Guess, at, pre) -> None:
    """The norm that reads resid_pre and feeds the q projection (None when none does)."""
    if guess.q is None:
        return
    for norm in guess.norms:
        reads_pre = close(at(0, Tap(norm, "in")), pre[0])
        if reads_pre and all(close(at(i, Tap(norm)), at(i, Tap(guess.q, "in"))) for i in range(guess.n_layers)):
            c.attn_in_norm = norm
            return
