"""Several activation streams read as one: the input of a crosscoder.

`StackedSource` wraps streams (`ActivationSource` or `CacheReader`) and serves, under a
single key, the concatenation [x_1 | ... | x_n] of n sites, so `Trainer` trains a
crosscoder exactly as it trains an SAE on one site (same steps, checkpoints, resume, DDP):

    stream = layer_source(model, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"], data.train)
    stream = diff_source(base, finetune, "blocks.3.hook_resid_post", data.train)
    coder = fit_and_save(Trainer(stream, [crosscoder_config(stream, 4096)], cfg), out)[0]

Rows line up across blocks because every member stream reads the same token order: the
sites of one model come from one forward pass, and two models get two `ActivationSource`s
over the same contexts with the same `SourceConfig` (a pure function of the position).
The wrapper checks the positions agree at every step.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError
from .config import CoderConfig
from .source import ActivationSource, Batch, SourceConfig


class StackedSource:
    """Blocks `names[i]` = site `sites[i]` of `streams[i]`, concatenated under `self.key`."""

    def __init__(
        self,
        streams: Sequence,
        sites: Sequence[str],
        names: Sequence[str] | None = None,
        *,
        projections: dict[str, Float[Tensor, "d_site d"]] | None = None,
    ):
        names = list(sites if names is None else names)
        if not (len(streams) == len(sites) == len(names)) or not names:
            raise MechscopeError("give one stream and one site per block (and as many names)")
        if len(set(names)) != len(names):
            raise MechscopeError(f"block names must be distinct, got {names}: label the models (e.g. A, B)")
        self.members, self.blocks = list(zip(streams, sites)), tuple(names)
        self.projections = dict(projections or {})
        unknown = set(self.projections) - set(names)
        if unknown:
            raise MechscopeError(f"projections name {sorted(unknown)}, which are not blocks ({', '.join(names)})")
        for stream, site in self.members:
            if site not in stream.widths:
                raise MechscopeError(f"a stream holds no site '{site}' (it has {', '.join(stream.widths)})")
        self.d_block = _common_width(self)
        self.key = "+".join(names)
        self.sites = [self.key]
        self.widths = {self.key: self.d_block * len(names)}
        self._streams = list({id(s): s for s, _ in self.members}.values())
        if len({s.batch_tokens for s in self._streams}) != 1:
            raise MechscopeError("the stacked streams give batches of different sizes: give them one batch_tokens")

    @property
    def batch_tokens(self) -> int:
        return self._streams[0].batch_tokens

    @property
    def start(self):
        return self._streams[0].start

    def stack(self, parts: dict[int, Batch]) -> Tensor:
        """[tokens, n * d] from each stream's batch (keyed by id(stream))."""
        out = []
        for (stream, site), name in zip(self.members, self.blocks):
            x = parts[id(stream)][site]
            if name in self.projections:
                x = x @ self.projections[name].to(x)
            out.append(x)
        return torch.cat(out, dim=-1)

    def batches(self, position=None, *, rank: int = 0, world: int = 1) -> Iterator[tuple[Batch, object]]:
        """Endless (batch {key: [tokens, n * d]}, position after it), like the member streams."""
        iters = [s.batches(position, rank=rank, world=world) for s in self._streams]
        while True:
            got = [next(it) for it in iters]
            positions = [p for _, p in got]
            if any(p != positions[0] for p in positions):
                raise MechscopeError(
                    f"the stacked streams went out of step (positions {positions}): give every model "
                    "the same contexts and the same SourceConfig"
                )
            yield {self.key: self.stack({id(s): b for s, (b, _) in zip(self._streams, got)})}, positions[0]


def _common_width(stacked: StackedSource) -> int:
    widths = {}
    for (stream, site), name in zip(stacked.members, stacked.blocks):
        proj = stacked.projections.get(name)
        if proj is not None and (proj.dim() != 2 or proj.shape[0] != stream.widths[site]):
            raise MechscopeError(
                f"the projection of '{name}' is {tuple(proj.shape)}: it must be [{stream.widths[site]}, d]"
            )
        widths[name] = stream.widths[site] if proj is None else proj.shape[1]
    if len(set(widths.values())) > 1:
        listing = ", ".join(f"'{k}' is {v} wide" for k, v in widths.items())
        raise MechscopeError(
            f"a crosscoder's sites must have one width, but {listing}: declare a projection to a "
            "common width (projections={name: [d_site, d]}) or choose sites of equal width"
        )
    return next(iter(widths.values()))


def crosscoder_config(
    stream: StackedSource, d_sae: int, *, arch: str = "crosscoder", model_name: str = "", **kwargs
) -> CoderConfig:
    """The `CoderConfig` of a crosscoder reading `stream` (hook_name = its key, blocks = its names)."""
    return CoderConfig(
        arch,
        stream.widths[stream.key],
        d_sae,
        hook_name=stream.key,
        blocks=stream.blocks,
        model_name=model_name,
        **kwargs,
    )


def layer_source(
    model, sites: Sequence[str], contexts: Int[Tensor, "n ctx"], cfg: SourceConfig = SourceConfig(), **kwargs
) -> StackedSource:
    """Several sites of one model (one forward pass feeds them all), in forward order."""
    source = ActivationSource(model, sites, contexts, cfg)
    if len(source.sites) < 2:
        raise MechscopeError(f"a crosscoder needs at least two sites, got {source.sites}")
    return StackedSource([source] * len(source.sites), source.sites, **kwargs)


def check_same_inputs(model_a, model_b) -> None:
    """Two models can be diffed on the same tokens only if they read tokens alike: the same
    tokenizer vocabulary when they have tokenizers, else the same vocabulary size."""
    ta, tb = model_a.tokenizer, model_b.tokenizer
    if (ta is None) != (tb is None):
        raise MechscopeError(
            f"{model_a.name} and {model_b.name} do not read tokens alike (one has a tokenizer, "
            "the other none): a diff runs both models on the same token ids"
        )
    if ta is not None and ta.get_vocab() != tb.get_vocab():
        raise MechscopeError(
            f"{model_a.name} and {model_b.name} have different tokenizers: a diff runs both on the "
            "same token ids, so compare models that share a tokenizer (e.g. a base and its fine-tune)"
        )
    if model_a.dims.d_vocab != model_b.dims.d_vocab:
        raise MechscopeError(
            f"{model_a.name} has {model_a.dims.d_vocab} tokens and {model_b.name} "
            f"{model_b.dims.d_vocab}: a diff needs two models over the same vocabulary"
        )


def diff_source(
    model_a,
    model_b,
    site: str,
    contexts: Int[Tensor, "n ctx"],
    cfg: SourceConfig = SourceConfig(),
    *,
    labels: tuple[str, str] | None = None,
    site_b: str | None = None,
    **kwargs,
) -> StackedSource:
    """The same site (or `site` of A and `site_b` of B) of two models on the same contexts;
    blocks are named "label:site" (labels default to the model names)."""
    check_same_inputs(model_a, model_b)
    labels = labels or (model_a.name, model_b.name)
    if labels[0] == labels[1]:
        raise MechscopeError(f"both models are called {labels[0]!r}: pass labels=(A, B) to tell them apart")
    site_b = site_b or site
    streams = [ActivationSource(model_a, site, contexts, cfg), ActivationSource(model_b, site_b, contexts, cfg)]
    sites = [s.sites[0] for s in streams]
    return StackedSource(streams, sites, [f"{label}:{s}" for label, s in zip(labels, sites)], **kwargs)


def train_crosscoder(
    model,
    sites: str | Sequence[str],
    d_sae: int,
    cfg=None,
    *,
    data: Int[Tensor, "n ctx"],
    vs=None,
    labels: tuple[str, str] | None = None,
    arch: str = "crosscoder",
    source: SourceConfig = SourceConfig(),
    out=None,
    progress: bool = True,
    **coder_kwargs,
):
    """Train a crosscoder on several `sites` of `model`, or (with `vs`, another model) on one
    site of both, over token contexts `data`; saved to `out` (resumable) like `train`'s SAEs.

        cc = train_crosscoder(model, ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"], 4096, cfg, data=d)
        cc = train_crosscoder(base, "blocks.3.hook_resid_post", 4096, cfg, data=d, vs=chat, labels=("base", "chat"))
    """
    from dataclasses import replace

    from .train import Trainer, fit_and_save
    from .trainer_config import TrainConfig

    cfg = cfg or TrainConfig()
    src = replace(source, batch_tokens=cfg.batch_tokens, seed=cfg.seed)
    if vs is not None:
        site = sites if isinstance(sites, str) else (sites[0] if len(sites) == 1 else None)
        if site is None:
            raise MechscopeError("with vs (model diffing) give one site: the crosscoder reads it in both models")
        stream, name = diff_source(model, vs, site, data, src, labels=labels), f"{model.name} vs {vs.name}"
    else:
        from .source import resolve_sites

        stream, name = layer_source(model, resolve_sites(model, sites), data, src), model.name
    coder_cfg = crosscoder_config(stream, d_sae, arch=arch, model_name=name, **coder_kwargs)
    return fit_and_save(Trainer(stream, [coder_cfg], cfg, device=model.device), out, progress=progress)[0]
