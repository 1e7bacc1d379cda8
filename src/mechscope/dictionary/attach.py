"""Using a dictionary inside a model's forward pass.

`attach(model, coder)` encodes the activation at the coder's site on every forward, keeps
the latents (`.acts`, [batch, pos, d_sae]) and, with replace=True, substitutes the
reconstruction for the activation:

    replace=False                   the forward is untouched; latents are only read
    replace=True, keep_error=True   x_hat(acts') + (x - x_hat(acts)) with the error detached: with
                                    acts' = acts the output is exactly unchanged while gradients reach
                                    x only through the dictionary (SAELens's use_error_term convention)
    replace=True, keep_error=False  x_hat(acts'): the model runs on the reconstruction

`acts'` is `edit_acts(acts)` when given (clamp or zero features), else acts (a coder with
input_norm 'layer_norm' decodes them with the activation's own mean and std). It works
through `mechscope.edits.replace` with a callable, so it composes with other edits.
Site activations with head axes (hook_z: [batch, pos, head, d_head]) are read flattened to
[batch, pos, head * d_head], as SAELens does.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from .. import edits
from ..errors import MechscopeError
from .base import SparseCoder

log = logging.getLogger(__name__)


def warn_if_other_model(model, coder) -> None:
    """A dictionary read on another model than the one it was trained on is allowed (a
    fine-tune, a renamed copy) but said, naming both: its features may mean nothing there.
    Two spellings of one local folder (relative, absolute) are the same model."""
    trained_on = getattr(coder.cfg, "model_name", "")
    if trained_on and not same_model(trained_on, model.name):
        log.warning(
            "this dictionary was trained on %s, not %s: its features may not carry over", trained_on, model.name
        )


def same_model(a: str, b: str) -> bool:
    """Whether two model names mean the same model: equal, or two paths to one folder."""
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.is_dir() and pb.is_dir() and pa.resolve() == pb.resolve()


def site_of(model, coder: SparseCoder, site: str | None) -> str:
    """The site to use (default: the coder's hook_name), checked against the coder's width."""
    if getattr(coder.cfg, "transcoder", False):
        raise MechscopeError(
            "a transcoder writes another site than it reads, so it cannot be attached in place: "
            "use model.run(ids, edits=mechscope.dictionary.splice(transcoder))"
        )
    site = site or coder.cfg.hook_name
    if not site:
        raise MechscopeError("this dictionary does not say which site it reads (cfg.hook_name is empty): pass site=")
    warn_if_other_model(model, coder)
    info = model.table[site]  # unknown sites fail here, with suggestions
    if info.dims[:2] != ("batch", "pos"):
        raise MechscopeError(f"site '{site}' has dims {info.dims}: dictionaries read [batch, pos, ...] sites")
    sizes = info.sizes[2:]
    if None not in sizes and math.prod(sizes) != coder.cfg.d_in:
        raise MechscopeError(
            f"dictionary reads width d_in={coder.cfg.d_in} but site '{site}' has width "
            f"{math.prod(sizes)} ({info.describe()}): use a dictionary trained on this site"
        )
    return site


class Attached:
    """A dictionary attached at a site: a context manager (`with attach(...) as a:`) and an
    `Edit` (`a.edit`) for `model.run(edits=[...])`; `a.acts` holds the last forward's latents."""

    def __init__(
        self,
        model,
        coder: SparseCoder,
        site: str,
        replace: bool,
        keep_error: bool,
        edit_acts: Callable[[Tensor], Tensor] | None,
    ):
        self.model, self.coder, self.site = model, coder, site
        self.replace, self.keep_error, self.edit_acts = replace, keep_error, edit_acts
        self.acts: Float[Tensor, "batch pos d_sae"] | None = None
        self.edit = edits.replace(site, self._apply)
        self._held: AbstractContextManager | None = None

    def _apply(self, x: Tensor) -> Tensor:
        flat = x.reshape(*x.shape[:2], -1)
        acts = self.coder.encode(flat)
        self.acts = acts if torch.is_grad_enabled() else acts.detach()
        if not self.replace:
            return x
        new_acts = self.edit_acts(acts) if self.edit_acts is not None else acts
        x_hat = self.coder.decode(new_acts, x=flat).to(x.dtype)
        if self.keep_error:
            # x + x_hat(acts') - x_hat(acts), written so the value is exactly x when nothing is
            # edited (t - t.detach() == 0) and gradients reach x only through the dictionary
            clean = x_hat if new_acts is acts else self.coder.decode(acts, x=flat).to(x.dtype)
            x_hat = flat.detach() + (x_hat - clean.detach())
        return x_hat.reshape(x.shape)

    def __enter__(self) -> Attached:
        self._held = self.model.edit(self.edit)
        self._held.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        held, self._held = self._held, None
        assert held is not None  # entered before
        held.__exit__(*exc)


def attach(
    model,
    coder: SparseCoder,
    site: str | None = None,
    *,
    replace: bool = False,
    keep_error: bool = True,
    edit_acts: Callable[[Tensor], Tensor] | None = None,
) -> Attached:
    """Attach `coder` at `site` (default: its hook_name); see the module docstring."""
    return Attached(model, coder, site_of(model, coder, site), replace, keep_error, edit_acts)
