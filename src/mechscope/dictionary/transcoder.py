"""Transcoders: a sparse dictionary that reads one site and predicts another, most often an
MLP's input and output (Dunefsky et al. 2024), so that the MLP can be replaced by sparse,
interpretable latents.

    cfg = transcoder_config(model, layer=1, arch="topk", width=2048, k=32, skip=True)
    tc = train(model, cfg.hook_name, cfg, TrainConfig(...), data=data.train)
    evaluate(model, tc, data.heldout)      # FVU against the MLP output; CE / KL with tc spliced in

A transcoder is a `SparseCoder` with `cfg.d_out` and `cfg.target_hook` set (optionally
`cfg.skip`, a learned linear map added to the output); it trains, saves and loads like any
dictionary (cfg.json + sae.safetensors).

Sites: there is no site for the MLP's normalised input, so by default a transcoder reads
`blocks.{l}.hook_resid_mid` (the residual stream before the MLP's norm) and predicts
`blocks.{l}.hook_mlp_out`: it then absorbs the norm as well as the MLP. Blocks that run
attention and the MLP in parallel have no resid_mid; pass site= there (hook_resid_pre).

Splicing (`splice`): two edits for `model.run(edits=...)`. The first, at the input site,
passes the value on unchanged and keeps it; the second, at the target site, replaces the
MLP's output with the transcoder's output on the kept value. The input site runs earlier in
the same forward, so the MLP's own output is simply discarded: the model then runs with the
transcoder in place of the MLP.
"""

from __future__ import annotations

from torch import Tensor

from .. import edits
from ..errors import MechscopeError
from .config import CoderConfig
from .source import site_width

INPUT, TARGET = "blocks.{}.hook_resid_mid", "blocks.{}.hook_mlp_out"


def mlp_sites(layer: int) -> tuple[str, str]:
    """(input, target) site names of the MLP of block `layer`."""
    return INPUT.format(layer), TARGET.format(layer)


def transcoder_config(
    model,
    layer: int | None = None,
    *,
    site: str | None = None,
    target: str | None = None,
    arch: str = "topk",
    width: int = 4096,
    **fields,
) -> CoderConfig:
    """A `CoderConfig` for a transcoder on `model`: from `layer`'s MLP sites, or explicit
    `site` and `target`; widths are read from the model; other CoderConfig fields pass through."""
    if layer is not None:
        default_site, default_target = mlp_sites(layer)
        site, target = site or default_site, target or default_target
    if not site or not target:
        raise MechscopeError("a transcoder needs its sites: give layer=, or both site= and target=")
    check_order(model, site, target)
    return CoderConfig(
        arch,
        site_width(model, site),
        width,
        d_out=site_width(model, target),
        hook_name=site,
        target_hook=target,
        model_name=model.name,
        **fields,
    )


def check_order(model, site: str, target: str) -> None:
    """The input site must be computed before the target in the forward pass."""
    first = model.table.resolve([site, target])
    if site == target or first[0] != site:
        raise MechscopeError(
            f"a transcoder reads '{site}' and replaces '{target}': the input must come earlier in "
            "the forward than the target (e.g. blocks.1.hook_resid_mid -> blocks.1.hook_mlp_out)"
        )


class _Relay:
    """Keeps the input site's value of the current forward for the target's edit."""

    def __init__(self):
        self.value: Tensor | None = None

    def keep(self, x: Tensor) -> None:
        self.value = x


def splice(coder, keep: Tensor | None = None, *, zero: bool = False) -> list[edits.Edit]:
    """Edits that run the model with `coder` (a transcoder) in place of what computes its
    target site. `keep` ([batch, pos] bool) limits the replacement to those positions;
    `zero=True` zero-ablates the target there instead (the baseline)."""
    cfg = coder.cfg
    if not cfg.transcoder:
        raise MechscopeError(
            "splice needs a transcoder (cfg.d_out and cfg.target_hook set); for an SAE use mechscope.dictionary.attach"
        )
    relay = _Relay()

    def replace(value: Tensor) -> Tensor:
        flat = value.flatten(2)
        if zero:
            new = flat.new_zeros(flat.shape)
        else:
            if relay.value is None:
                raise MechscopeError(f"'{cfg.hook_name}' did not run before '{cfg.target_hook}' in this forward")
            new = coder.predict(relay.value.flatten(2).float()).to(flat.dtype)
        relay.value = None
        out = new if keep is None else (new.where(keep[..., None].to(flat.device), flat))
        return out.view(value.shape)

    target_edit = edits.replace(cfg.target_hook, replace)
    return [target_edit] if zero else [edits.observe(cfg.hook_name, relay.keep), target_edit]
