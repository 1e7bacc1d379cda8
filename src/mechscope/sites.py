"""One string namespace for every activation, compatible with TransformerLens hook names.

A `Site` says which module boundary an activation is read at and how to view the raw
tensor there (a `View`, views.py: e.g. split a fused qkv projection into heads).
`SiteTable` builds the sites of one model from its adapter and resolves names and globs,
with errors that say what exists.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Iterable

from .errors import MechscopeError
from .models.adapter import Adapter
from .views import (
    CopyView,
    ExpertWeightsView,
    FusedQKVView,
    HeadsView,
    PatternView,
    ReadOnlyView,
    RouterView,
    ScaledView,
    View,
)


@dataclass(frozen=True)
class Dims:
    """The sizes of a transformer that every method needs."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int


@dataclass(frozen=True)
class Site:
    """One named activation: which module boundary it is read at and how it is viewed there.

    Invariants: `name` is unique in its model's `SiteTable` (TransformerLens-compatible,
    `blocks.{l}.hook_resid_post`); `dims` names the axes of the viewed value (`batch pos
    head d_head ...`) and `sizes` their sizes (None where they vary); reading it never
    changes the model, and writing back through `view` gives the raw tensor's layout.

        site = model.table["blocks.0.attn.hook_z"]
        site.describe()    # 'blocks.0.attn.hook_z [batch, pos, head=4, d_head=8]'
    """

    name: str
    module: str
    """Path of the module, relative to the full Hugging Face model."""
    boundary: str
    """'in': the module's first input; 'out': its output."""
    view: View
    dims: tuple[str, ...]
    sizes: tuple[int | None, ...]
    layer: int | None = None
    rows_from: str | None = None
    """Where the raw tensor holds tokens flattened to [batch * pos, ...]: the module (the
    block) whose input's [batch, pos] shape they are unflattened to, and flattened back on
    writing."""

    @property
    def pos_dim(self) -> int | None:
        return self.dims.index("q_pos") if "q_pos" in self.dims else (1 if "pos" in self.dims else None)

    def describe(self) -> str:
        shape = ", ".join(d if s is None else f"{d}={s}" for d, s in zip(self.dims, self.sizes))
        return f"{self.name} [{shape}]"


def _qkv_view(adapter: Adapter, part: int, n: int, d_head: int, n_kv: int) -> View:
    """n: query heads, n_kv: key/value heads (a fused view needs both to split)."""
    if adapter.qkv_layout == "separate":
        return HeadsView(n if part == 0 else n_kv, d_head)
    return FusedQKVView(part, adapter.qkv_layout, n, d_head, n_kv)


def _sublayer_view(adapter: Adapter, tap) -> View:
    """hook_attn_out / hook_mlp_out: what the residual receives (scaled where the family scales)."""
    if adapter.residual_scale != 1.0:
        return ScaledView(adapter.residual_scale)  # a new tensor, never changed in place
    return CopyView() if tap.copy else View()


def _mid_sites(
    blk: str, module: str, boundary, resid: tuple[tuple[str, ...], tuple[int | None, ...]], layer: int, flat: str | None
) -> list[Site]:
    """hook_resid_mid, and hook_mlp_in where the stream is read at the MLP norm's input.
    There the block has already kept its own copy of the stream for the skip connection, so
    an edit reaches the MLP only: that is hook_mlp_in (as in TransformerLens), and
    hook_resid_mid is read-only (an edit would leave the residual stream as it was)."""
    if boundary != "in":  # read after the norm that produces the stream itself (post-LN): editable
        return [Site(blk + "hook_resid_mid", module, boundary, View(), *resid, layer, rows_from=flat)]
    why = (
        f"the block keeps its own copy of the residual stream before the MLP reads it, so an edit here would "
        f"reach the MLP only: edit {blk}hook_mlp_in (what the MLP reads) or {blk}hook_attn_out (what joins the "
        "residual stream)"
    )
    return [
        Site(blk + "hook_resid_mid", module, boundary, ReadOnlyView(why), *resid, layer, rows_from=flat),
        Site(blk + "hook_mlp_in", module, boundary, View(), *resid, layer, rows_from=flat),
    ]


def _block_sites(adapter: Adapter, dims: Dims, layer: int, prefix: str, parallel: bool) -> list[Site]:
    def path(rel: str) -> str:
        return prefix + adapter.block(layer, rel)

    blk, d = f"blocks.{layer}.", dims
    resid = (("batch", "pos", "d_model"), (None, None, d.d_model))
    per_head = lambda n: (("batch", "pos", "head", "d_head"), (None, None, n, d.d_head))  # noqa: E731
    block = prefix + f"{adapter.blocks}.{layer}"
    sites = [Site(blk + "hook_resid_pre", block, "in", View(), *resid, layer=layer)]
    n_kv = d.n_kv_heads
    sites += [
        Site(
            blk + "attn.hook_q",
            path(adapter.q),
            "out",
            _qkv_view(adapter, 0, d.n_heads, d.d_head, n_kv),
            *per_head(d.n_heads),
            layer,
        ),
        Site(
            blk + "attn.hook_k",
            path(adapter.k),
            "out",
            _qkv_view(adapter, 1, d.n_heads, d.d_head, n_kv),
            *per_head(n_kv),
            layer,
        ),
        Site(
            blk + "attn.hook_v",
            path(adapter.v),
            "out",
            _qkv_view(adapter, 2, d.n_heads, d.d_head, n_kv),
            *per_head(n_kv),
            layer,
        ),
        Site(
            blk + "attn.hook_pattern",
            path(adapter.attention),
            "out",
            PatternView(),
            ("batch", "head", "q_pos", "k_pos"),
            (None, d.n_heads, None, None),
            layer,
        ),
        Site(blk + "attn.hook_z", path(adapter.o), "in", HeadsView(d.n_heads, d.d_head), *per_head(d.n_heads), layer),
        Site(
            blk + "hook_attn_out",
            path(adapter.attn_out.module),
            adapter.attn_out.boundary,
            _sublayer_view(adapter, adapter.attn_out),
            *resid,
            layer,
        ),
    ]
    if d.d_mlp:  # attention-only models have no MLP and so no resid_mid either
        flat = block if adapter.mlp_flat_rows else None  # OPT's MLP runs on [batch * pos, ...]
        if adapter.resid_mid is not None and not parallel:
            sites += _mid_sites(blk, path(adapter.resid_mid.module), adapter.resid_mid.boundary, resid, layer, flat)
        if adapter.mlp_down:
            sites.append(
                Site(
                    blk + "mlp.hook_post",
                    path(adapter.mlp_down),
                    "in",
                    View(),
                    ("batch", "pos", "d_mlp"),
                    (None, None, d.d_mlp),
                    layer,
                    rows_from=flat,
                )
            )
        if adapter.moe_router:  # the router sees tokens flattened to [batch * pos, d_model]
            sites.append(
                Site(
                    blk + "mlp.hook_router_logits",
                    path(adapter.moe_router),
                    "out",
                    RouterView(),
                    ("batch", "pos", "expert"),
                    (None, None, adapter.n_experts),
                    layer,
                    rows_from=block,
                )
            )
            sites.append(
                Site(
                    blk + "mlp.hook_expert_weights",
                    path(adapter.moe_router),
                    "out",
                    ExpertWeightsView(adapter.n_experts),
                    ("batch", "pos", "expert"),
                    (None, None, adapter.n_experts),
                    layer,
                    rows_from=block,
                )
            )
        sites.append(
            Site(
                blk + "hook_mlp_out",
                path(adapter.mlp_out.module),
                adapter.mlp_out.boundary,
                _sublayer_view(adapter, adapter.mlp_out),
                *resid,
                layer,
                rows_from=flat,
            )
        )
    sites.append(Site(blk + "hook_resid_post", block, "out", View(), *resid, layer=layer))
    return sites


def build_sites(
    adapter: Adapter, dims: Dims, prefix: str, parallel: bool, has_logits: bool, has_pos_embed: bool
) -> list[Site]:
    """Every site of a model, in the order the forward pass computes them."""
    resid = (("batch", "pos", "d_model"), (None, None, dims.d_model))
    sites = [Site("hook_embed", prefix + adapter.embed, "out", View(), *resid)]
    if has_pos_embed:
        # Position embeddings are computed once and broadcast over the batch: batch=1.
        rows = None if adapter.pos_embed_per_prompt else 1
        assert adapter.pos_embed is not None  # has_pos_embed: the adapter names one
        sites.append(
            Site("hook_pos_embed", prefix + adapter.pos_embed, "out", View(), resid[0], (rows, None, dims.d_model))
        )
    for layer in range(dims.n_layers):
        sites += _block_sites(adapter, dims, layer, prefix, parallel)
    if adapter.final_norm:
        sites.append(Site("ln_final.hook_normalized", prefix + adapter.final_norm, "out", View(), *resid))
    if has_logits:
        sites.append(Site("logits", "", "out", View(), ("batch", "pos", "vocab"), (None, None, dims.d_vocab)))
    return sites


class SiteTable:
    """The sites of one model, looked up by name or glob."""

    def __init__(self, sites: Iterable[Site], n_layers: int, family: str, unavailable: dict[str, str] | None = None):
        self.by_name = {s.name: s for s in sites}
        self.unavailable = unavailable or {}  # site kind (e.g. 'mlp.hook_post') -> why this family has none
        self.order = {name: i for i, name in enumerate(self.by_name)}
        self.n_layers = n_layers
        self.family = family

    def __getitem__(self, name: str) -> Site:
        if name not in self.by_name:
            self._unknown(name)
        return self.by_name[name]

    def __iter__(self):
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)

    def resolve(self, patterns: str | Iterable[str]) -> list[str]:
        """Names matching any of the names or globs, in forward order; unknown names raise."""
        patterns = [patterns] if isinstance(patterns, str) else list(patterns)
        found: set[str] = set()
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise MechscopeError(f"site names must be strings, got {pattern!r}")
            matches = (
                fnmatch.filter(self.by_name, pattern)
                if any(c in pattern for c in "*?[")
                else ([pattern] if pattern in self.by_name else [])
            )
            if not matches:
                self._unknown(pattern)
            found.update(matches)
        return sorted(found, key=self.order.__getitem__)

    def _unknown(self, name: str):
        layer = re.match(r"blocks\.(-?\d+)\.", name)
        if layer and not 0 <= int(layer.group(1)) < self.n_layers:  # site names count layers 0.., never back
            raise MechscopeError(
                f"unknown site '{name}': this model has {self.n_layers} layers (0-{self.n_layers - 1})"
            )
        kind = re.sub(r"^blocks\.\d+\.", "", name)
        if kind in self.unavailable:
            raise MechscopeError(f"'{name}' is not available for {self.family}: {self.unavailable[kind]}")
        close = difflib.get_close_matches(name, self.by_name, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        if "hook_resid_mid" in name and not any(n.endswith("hook_resid_mid") for n in self.by_name):
            hint = (
                f": {self.family} blocks here run attention and MLP in parallel (or have no MLP), "
                "so there is no resid_mid"
            )
        raise MechscopeError(f"unknown site '{name}'{hint} (`mechscope info MODEL` lists every site)")
