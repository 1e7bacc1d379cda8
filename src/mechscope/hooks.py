"""The only module that registers torch hooks.

`hooked(...)` installs one hook per module boundary that any requested site reads,
applies the edits for those sites (in the order given), hands recorded values to a
callback, and removes every hook on exit, exceptions included.

Two options skip work that a batch of patched runs shares (see `hooked`): `copies`
adds copies of the prompt rows only at the input of the block where they start to
differ (the blocks before run once per prompt), and `logit_positions` runs the
unembedding at one position per row.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .edits import Edit
from .errors import MechscopeError
from .sites import Site, SiteTable


class StopForward(Exception):
    """Raised from a hook once every requested site is recorded, to skip the rest."""


def resolve_edits(table: SiteTable, edits: Sequence[Edit]) -> dict[str, list[Edit]]:
    """Site name -> the edits that apply there, in order; checks that each can be edited."""
    by_site: dict[str, list[Edit]] = defaultdict(list)
    for edit in edits:
        if not isinstance(edit, Edit):
            raise MechscopeError(f"edits must be made with mechscope.edits (replace, add, ...), got {type(edit).__name__}")
        for name in table.resolve(edit.site):
            site = table[name]
            if not site.view.editable or not site.module:
                raise MechscopeError(
                    f"'{name}' can be recorded but not edited: the model has already used it when it is "
                    "computed (edit hook_z, hook_v or hook_resid_* instead)")
            by_site[name].append(edit)
    return dict(by_site)


@contextmanager
def hooked(
    model: nn.Module,
    table: SiteTable,
    *,
    record: Sequence[str] = (),
    edits: dict[str, list[Edit]] | None = None,
    on_record: Callable[[str, Tensor], None] | None = None,
    lengths: Tensor | None = None,
    strict: bool = True,
    stop_when_recorded: bool = False,
    copies: dict[int, int] | None = None,
    logit_positions: Tensor | None = None,
) -> Iterator[None]:
    """Hooks that record `record` (through `on_record`) and apply `edits` while active.

    With `stop_when_recorded`, the forward pass raises `StopForward` as soon as the last
    recorded site is computed; the caller catches it.

    copies {layer: n}: at the input of block `layer`, n copies of the P prompt rows (the
    first P rows, as they are there) join the batch; the per-row tensors the model hands
    each block (attention masks) are tiled to match. After the last join the prompt rows
    themselves are dropped, so the blocks from there on, and the logits, see only the
    copies, in order of layer. logit_positions [P]: the output embedding runs only at that
    position of each row, so the logits come out [rows, 1, vocab].
    """
    edits = edits or {}
    wanted = {n for n in record if table[n].module}
    groups: dict[tuple[str, str], list[Site]] = defaultdict(list)
    for name in sorted(wanted | set(edits), key=table.order.__getitem__):
        site = table[name]
        groups[(site.module, site.boundary)].append(site)
    remaining = set(wanted)
    rows: dict[str, torch.Size] = {}  # rows_from module -> its input's [batch, pos] (MoE router logits)

    def read(site: Site, raw: Tensor) -> Tensor:
        value = site.view.read(raw)  # flattened tokens [batch * pos, ...] back to [batch, pos, ...]
        return value.unflatten(0, rows[site.rows_from]) if site.rows_from else value

    def process(raw_of: Callable[[int], Tensor], set_raw: Callable[[int, Tensor], None], sites: list[Site]) -> None:
        for site in sites:
            raw = raw_of(site.view.index)
            for edit in edits.get(site.name, ()):
                value = read(site, raw)
                value = edit.apply(value, site=site.name, dims=site.dims,
                                   lengths=per_row(lengths, value.shape[0]), strict=strict)
                raw = site.view.write(raw, value.flatten(0, 1) if site.rows_from else value)
                set_raw(site.view.index, raw)
            if site.name in wanted:
                on_record(site.name, read(site, raw))
                remaining.discard(site.name)
        if stop_when_recorded and not remaining:
            raise StopForward

    def out_hook(sites):
        def hook(module, args, output):
            box = list(output) if isinstance(output, tuple) else [output]

            def set_raw(i, value):
                box[i] = value

            process(box.__getitem__, set_raw, sites)
            return tuple(box) if isinstance(output, tuple) else box[0]
        return hook

    def in_hook(sites):
        def hook(module, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            use_args = bool(args)

            def raw_of(_):
                return args[0] if use_args else kwargs["hidden_states"]

            def set_raw(_, value):
                if use_args:
                    args[0] = value
                else:
                    kwargs["hidden_states"] = value

            process(raw_of, set_raw, sites)
            return tuple(args), kwargs
        return hook

    handles = []
    try:
        # registered first: the copies exist before any edit of the same block's input
        handles += _copy_hooks(model, table, copies)
        if logit_positions is not None:
            handles.append(model.get_output_embeddings().register_forward_pre_hook(_gather_hook(logit_positions)))
        for path in {s.rows_from for sites in groups.values() for s in sites if s.rows_from}:
            handles.append(model.get_submodule(path).register_forward_pre_hook(_shape_hook(rows, path), with_kwargs=True))
        for (path, boundary), sites in groups.items():
            module = model.get_submodule(path)
            if boundary == "out":
                handles.append(module.register_forward_hook(out_hook(sites)))
            else:
                handles.append(module.register_forward_pre_hook(in_hook(sites), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def per_row(values: Tensor | None, rows: int) -> Tensor | None:
    """Per-prompt values (lengths, positions) tiled to `rows` = copies x prompts."""
    if values is None or rows <= len(values) or rows % len(values):
        return values
    return values.repeat(rows // len(values))


def _tile(value, rows: int, copies: int):
    """Tile every tensor whose leading axis is the prompt batch (masks); a batch-1 or 1-d
    tensor (positions, rotary tables) broadcasts over the copies and is left alone."""
    if isinstance(value, Tensor) and value.dim() >= 2 and value.shape[0] == rows and rows > 1 and copies > 1:
        return value.repeat(copies, *[1] * (value.dim() - 1))
    if type(value) in (tuple, list):
        return type(value)(_tile(v, rows, copies) for v in value)
    if type(value) is dict:
        return {k: _tile(v, rows, copies) for k, v in value.items()}
    return value


def _copy_hooks(model: nn.Module, table: SiteTable, copies: dict[int, int] | None) -> list:
    """Pre-hooks on the blocks from the first layer in `copies` on (see `hooked`)."""
    copies = {layer: n for layer, n in (copies or {}).items() if n}
    if not copies:
        return []
    if any(not 0 <= layer < table.n_layers for layer in copies):
        raise MechscopeError(f"copies join at layers {sorted(copies)}, but this model has layers 0-{table.n_layers - 1}")
    first, last = min(copies), max(copies)
    prompts: list[int] = []  # P, read at the first block that forks

    def hook(layer: int):
        def fn(module, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            box, key = (args, 0) if args else (kwargs, "hidden_states")
            hidden = box[key]
            if layer == first:
                prompts[:] = [hidden.shape[0]]
            p = prompts[0]
            if layer in copies:  # the prompt rows (first P) fork; after the last fork they are no longer needed
                carried = hidden if layer < last else hidden[p:]
                hidden = torch.cat([carried, hidden[:p].repeat(copies[layer], *[1] * (hidden.dim() - 1))])
            args, kwargs = _tile(args, p, hidden.shape[0] // p), _tile(kwargs, p, hidden.shape[0] // p)
            (args if key == 0 else kwargs)[key] = hidden
            return tuple(args), kwargs
        return fn

    return [model.get_submodule(table[f"blocks.{layer}.hook_resid_pre"].module).register_forward_pre_hook(
        hook(layer), with_kwargs=True) for layer in range(first, table.n_layers)]


def _shape_hook(rows: dict, path: str):
    """Pre-hook that notes the leading [batch, pos] shape of a module's hidden-state input."""
    def fn(module, args, kwargs):
        rows[path] = (args[0] if args else kwargs["hidden_states"]).shape[:-1]
    return fn


def _gather_hook(positions: Tensor):
    """Pre-hook on the output embedding: keep one position per row, [rows, 1, d]."""
    def fn(module, args):
        hidden = args[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        picked = hidden[rows, per_row(positions, hidden.shape[0]).to(hidden.device)]
        return (picked[:, None], *args[1:])
    return fn
