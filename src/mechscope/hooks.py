"""The only module that registers torch hooks.

A hooked forward pass is made of *plans*: small objects that each register their own
hooks (`Plan.install`) and may say how they change what the pass gives back (`rows`,
`finish`, `output_dims`). `installed(model, table, plans)` installs them in order and
removes every hook on exit, exceptions included; `hooked(...)` is the usual pass:
the caller's plans, then `RecordEdit`.

- `RecordEdit`: record sites (through a callback) and apply edits at them, in order; it
  can stop the pass once the last recorded site is computed (`StopForward`).
- `RowShapes`: notes the [batch, pos] shape that flattened-token sites (MoE router logits,
  OPT's MLP: [batch * pos, ...]) take their rows from; `RecordEdit` uses it to unflatten.
- `CopyRows` (patching): copies of the prompt rows join the batch only at the input of the
  block where they start to differ; the blocks before run once per prompt.
- `GatherLogits` (patching): the unembedding runs at one position per row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast, overload

import torch
from torch import Tensor, nn

from . import plan_cache
from .edits import Edit
from .errors import MechscopeError
from .module_path import submodule
from .sites import Site, SiteTable

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class StopForward(Exception):
    """Raised from a hook once every requested site is recorded, to skip the rest."""


class Plan:
    """One part of a hooked forward pass.

    `install` registers the plan's hooks on `model`, appending each handle to `handles` as
    soon as it exists (so that every one is removed, also when a later one fails). A plan
    that changes the batch says so: `rows(P)` is the number of output rows for P prompt
    rows, `finish` reshapes the pass's main output and `output_dims` renames its axes.
    `one_batch` plans need every prompt in one forward; `check(model)` refuses a mechscope
    model the plan cannot serve before anything runs."""

    name = "plan"
    one_batch = False

    def check(self, model) -> None:
        """Raise a MechscopeError if this plan cannot run on `model` (a mechscope model)."""

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        raise NotImplementedError

    def rows(self, prompts: int) -> int:
        return prompts

    def finish(self, output: Tensor) -> Tensor:
        return output

    def output_dims(self, dims: tuple[str, ...]) -> tuple[str, ...]:
        return dims


@contextmanager
def installed(model: nn.Module, table: SiteTable, plans: Sequence[Plan]) -> Iterator[None]:
    """Every plan's hooks, in order, while active; all removed on exit, exceptions included."""
    handles: list = []
    try:
        for plan in plans:
            plan.install(model, table, handles)
        yield
    finally:
        for handle in handles:
            handle.remove()


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
    plans: Sequence[Plan] = (),
) -> Iterator[None]:
    """`plans` (installed first: copies exist before an edit of the same block's input sees
    them), then a `RecordEdit` of `record`, `edits` and `on_record` (see there)."""
    recorder = RecordEdit(record, edits, on_record, lengths=lengths, strict=strict, stop=stop_when_recorded)
    with installed(model, table, [*plans, recorder]):
        yield


def resolve_edits(table: SiteTable, edits: Sequence[Edit]) -> dict[str, list[Edit]]:
    """Site name -> the edits that apply there, in order; checks that each can be edited."""
    by_site: dict[str, list[Edit]] = defaultdict(list)
    for edit in edits:
        if not isinstance(edit, Edit):
            raise MechscopeError(
                f"edits must be made with mechscope.edits (replace, add, ...), got {type(edit).__name__}"
            )
        for name in plan_cache.resolve(table, edit.site):
            site = table[name]
            if (edit.changes and not site.view.editable) or not site.module:
                why = getattr(site.view, "reason", "") or (
                    "the model has already used it when it is computed (edit hook_z, hook_v or hook_resid_* instead)"
                )
                raise MechscopeError(f"'{name}' can be recorded but not edited: {why}")
            by_site[name].append(edit)
    return dict(by_site)


def _hidden_slot(args: list, kwargs: dict) -> tuple[Any, int | str]:  # (args, 0) or (kwargs, "hidden_states")
    """Where a block's hidden-state input is: its first positional argument, else `hidden_states`."""
    return (args, 0) if args else (kwargs, "hidden_states")


class RowShapes(Plan):
    """Notes the leading [batch, pos] shape of the hidden-state input of the modules that
    flattened-token sites take their rows from (`Site.rows_from`), as the pass runs (also
    after copies joined), and views those sites as [batch, pos, ...]."""

    name = "row shapes"

    def __init__(self, paths: set[str]):
        self.paths = paths
        self.shapes: dict[str, torch.Size] = {}

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        for path in self.paths:
            handles.append(submodule(model, path).register_forward_pre_hook(self._note(path), with_kwargs=True))

    def _note(self, path: str):
        def fn(module, args, kwargs):
            box, key = _hidden_slot(args, kwargs)
            self.shapes[path] = box[key].shape[:-1]

        return fn

    def read(self, site: Site, raw: Tensor) -> Tensor:
        value = site.view.read(raw)
        return value.unflatten(0, self.shapes[site.rows_from]) if site.rows_from else value

    def write(self, site: Site, raw: Tensor, value: Tensor) -> Tensor:
        return site.view.write(raw, value.flatten(0, 1) if site.rows_from else value)


class RecordEdit(Plan):
    """Record `record` (each value handed to `on_record(name, value)`) and apply `edits`
    {site: [Edit]} in order, with one hook per module boundary those sites read. `lengths`
    [P]: per-prompt lengths for the edits' positions; strict=False lets an edit skip
    positions a sequence lacks (generation). With `stop`, the pass raises `StopForward`
    as soon as the last recorded site is computed; the caller catches it."""

    name = "record and edit"

    def __init__(
        self,
        record: Sequence[str] = (),
        edits: dict[str, list[Edit]] | None = None,
        on_record: Callable[[str, Tensor], None] | None = None,
        *,
        lengths: Tensor | None = None,
        strict: bool = True,
        stop: bool = False,
    ):
        self.record, self.edits, self.on_record = record, edits or {}, on_record
        self.lengths, self.strict, self.stop = lengths, strict, stop

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        self.wanted = {n for n in self.record if table[n].module}
        self.remaining = set(self.wanted)
        groups, rows_from = plan_cache.layout(table, self.wanted | set(self.edits))  # per signature, once
        self.shapes = RowShapes(set(rows_from))
        self.shapes.install(model, table, handles)
        for (path, boundary), sites in groups:
            module = submodule(model, path)
            if boundary == "out":
                handles.append(module.register_forward_hook(self._out_hook(list(sites))))
            else:
                handles.append(module.register_forward_pre_hook(self._in_hook(list(sites)), with_kwargs=True))

    def _process(
        self, raw_of: Callable[[int | None], Any], set_raw: Callable[[int | None, Any], None], sites: list[Site]
    ) -> None:
        for site in sites:
            raw = raw_of(site.view.index)
            for edit in self.edits.get(site.name, ()):
                value = self.shapes.read(site, raw)
                value = edit.apply(
                    value,
                    site=site.name,
                    dims=site.dims,
                    lengths=per_row(self.lengths, value.shape[0]),
                    strict=self.strict,
                )
                raw = self.shapes.write(site, raw, value)
                set_raw(site.view.index, raw)
            if site.name in self.wanted:
                assert self.on_record is not None  # recording comes with on_record (hooked())
                self.on_record(site.name, self.shapes.read(site, raw))
                self.remaining.discard(site.name)
        if self.stop and not self.remaining:
            raise StopForward

    def _out_hook(self, sites: list[Site]):
        def hook(module, args, output):
            several = isinstance(output, (tuple, list))  # GPT-1's blocks return a list
            box = list(output) if several else [output]

            def get(index: int | None):  # None: a view of the whole output tuple (MoE routing weights)
                return tuple(box) if index is None else box[index]

            def put(index: int | None, value) -> None:
                if index is None:
                    box[:] = list(value)
                else:
                    box[index] = value

            self._process(get, put, sites)
            return type(output)(box) if several else box[0]

        return hook

    def _in_hook(self, sites: list[Site]):
        def hook(module, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            box, key = _hidden_slot(args, kwargs)
            self._process(lambda _: box[key], lambda _, value: box.__setitem__(key, value), sites)
            return tuple(args), kwargs

        return hook


@overload
def per_row(values: Tensor, rows: int) -> Tensor: ...
@overload
def per_row(values: None, rows: int) -> None: ...
@overload
def per_row(values: Tensor | None, rows: int) -> Tensor | None: ...
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


class CopyRows(Plan):
    """copies {layer: n}: at the input of block `layer`, n copies of the P prompt rows (the
    first P rows, as they are there) join the batch; the per-row tensors the model hands each
    block (attention masks) are tiled to match. After the last join the prompt rows themselves
    are dropped, so the blocks from there on, and the output, see only the copies, in order of
    layer: N*P rows (N = sum of the n's), as `prompts.repeat(N, 1)` would give them."""

    name = "copies"
    one_batch = True

    def __init__(self, copies: dict[int, int]):
        self.copies = {layer: n for layer, n in copies.items() if n}

    def check(self, model) -> None:
        if self.copies and not model.table.n_layers:
            raise MechscopeError(f"{model.name} has no transformer blocks: copies join at a block's input")

    def rows(self, prompts: int) -> int:
        return prompts * sum(self.copies.values()) if self.copies else prompts

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        if not self.copies:
            return
        if any(not 0 <= layer < table.n_layers for layer in self.copies):
            raise MechscopeError(
                f"copies join at layers {sorted(self.copies)}, but this model has layers 0-{table.n_layers - 1}"
            )
        self.prompts = 0  # P, read at the first block that forks
        for layer in range(min(self.copies), table.n_layers):
            block = submodule(model, table[f"blocks.{layer}.hook_resid_pre"].module)
            handles.append(block.register_forward_pre_hook(self._hook(layer), with_kwargs=True))

    def _hook(self, layer: int):
        first, last = min(self.copies), max(self.copies)

        def fn(module, args, kwargs):
            args, kwargs = list(args), dict(kwargs)
            box, key = _hidden_slot(args, kwargs)
            hidden = box[key]
            if layer == first:
                self.prompts = hidden.shape[0]
            p = self.prompts
            if layer in self.copies:  # the prompt rows (first P) fork; after the last fork they are no longer needed
                carried = hidden if layer < last else hidden[p:]
                hidden = torch.cat([carried, hidden[:p].repeat(self.copies[layer], *[1] * (hidden.dim() - 1))])
            args, kwargs = _tile(args, p, hidden.shape[0] // p), _tile(kwargs, p, hidden.shape[0] // p)
            (args if key == 0 else kwargs)[key] = hidden
            return tuple(args), kwargs

        return fn


class GatherLogits(Plan):
    """positions [P]: the output embedding runs only at that (absolute) position of each
    row, tiled over copies, so the main output comes back [rows, vocab]."""

    name = "logit_positions"
    one_batch = True

    def __init__(self, positions: Tensor):
        self.positions = positions

    def check(self, model) -> None:
        if not model.has_lm_head:
            raise MechscopeError(f"{model.name} has no LM head: logit_positions has no logits to cut")

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        head = cast("PreTrainedModel", model).get_output_embeddings()  # check(): the model has an LM head
        handles.append(head.register_forward_pre_hook(self._gather))

    def _gather(self, module, args):
        hidden = args[0]
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        picked = hidden[rows, per_row(self.positions, hidden.shape[0]).to(hidden.device)]
        return (picked[:, None], *args[1:])

    def finish(self, output: Tensor) -> Tensor:
        return output[:, 0]

    def output_dims(self, dims: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(d for d in dims if d != "pos")


def shortcut_plans(copies: dict[int, int] | None, logit_positions: Tensor | None) -> list[Plan]:
    """The plans behind `Model.run(copies=..., logit_positions=...)`."""
    return ([CopyRows(copies)] if copies else []) + (
        [GatherLogits(logit_positions)] if logit_positions is not None else []
    )


class Offsets(Plan):
    """Notes, before each forward of the whole model, where its positions start: `offset`
    is the number of positions already in the KV cache (0 for a fresh pass), and `prompt`
    the length of the last pass that started at 0 (during `generate`: the padded prompt).
    Edits that hold this plan can tell prompt positions from generated ones."""

    name = "offsets"

    def __init__(self) -> None:
        self.offset = 0
        self.prompt: int | None = None

    def install(self, model: nn.Module, table: SiteTable, handles: list) -> None:
        handles.append(model.register_forward_pre_hook(self._note, with_kwargs=True))

    def _note(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        ids = kwargs.get("inputs_embeds") if ids is None else ids
        cache = kwargs.get("past_key_values", kwargs.get("cache"))  # transformers 5 names it `cache`
        length = getattr(cache, "get_seq_length", None)
        self.offset = int(length()) if callable(length) else 0
        if self.offset == 0 and ids is not None:
            self.prompt = ids.shape[1]
