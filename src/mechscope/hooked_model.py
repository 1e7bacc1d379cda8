"""`HookedModel`: the shared base of every model mechscope hooks — a torch module seen
through a table of named sites, run with sites recorded and edited. `Model` (transformers,
through an adapter table) and `ModuleModel` (any module, sites by module path) are its two
subclasses; each refuses, with one line, what it cannot do."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import edits as edit_ops
from . import plan_cache
from .edits import Edit
from .errors import MechscopeError
from .hooks import Plan, StopForward, hooked, per_row, resolve_edits, shortcut_plans
from .run import Cache, Run
from .sites import Site, SiteTable

Prompts = str | Sequence[str] | Tensor


class HookedModel:
    """A torch module (`hf`) and the sites it offers (`table`), run unchanged with hooks.

    Invariants: the module's own forward always runs (no copy of it is patched); every hook
    is removed when a call returns or raises; `table` names every site this model can
    record, in forward order; edits held by `edit()` apply to every run inside the block.
    Subclasses say how inputs become the module's arguments (`tokenize`, `_call`).

        run = model.run(inputs, record="blocks.*.hook_resid_post")
        with model.edit(ms.edits.zero("blocks.0.hook_mlp_out")):
            ablated = model.run(inputs).logits
    """

    def __init__(self, module: nn.Module, *, name: str, tokenizer=None, table: SiteTable | None = None):
        self.hf = module.eval()
        self.tokenizer = tokenizer
        self.name = name
        # Model builds its table from the module after this; every other subclass passes one
        self.table: SiteTable = cast(SiteTable, table)
        self._held_edits: list[Edit] = []

    @property
    def sites(self) -> list[Site]:
        """Every site this model has, in forward order, with its dimensions."""
        return list(self.table)

    @property
    def device(self) -> torch.device:
        # the first parameter, found once (walking the module tree is ~10 us of every call);
        # `.to()` moves a parameter's data and keeps the Parameter object, so this follows it
        first = self.__dict__.get("_first_parameter")
        if first is None:
            first = self.__dict__["_first_parameter"] = next(self.hf.parameters())
        return first.device

    @property
    def has_lm_head(self) -> bool:
        return False

    @property
    def output_is_logits(self) -> bool:
        return self.has_lm_head

    # What a subclass provides

    def tokenize(self, prompts, attention_mask: Tensor | None = None) -> dict[str, Tensor]:
        """The module's keyword inputs for `prompts`."""
        raise NotImplementedError

    def _call(self, inputs: dict[str, Tensor]) -> Tensor:
        """The wrapped module's own forward; returns its main output."""
        raise NotImplementedError

    def _check_tokens(self, inputs: dict[str, Tensor]) -> None:
        """Refuse inputs that would fail deep inside torch (nothing to check by default)."""

    # Running

    def run(
        self,
        prompts: Prompts,
        *,
        record: str | Sequence[str] = (),
        positions: int | Sequence[int] | slice | None = None,
        edits: Sequence[Edit] = (),
        grad: bool = False,
        logits: bool = True,
        batch_size: int | None = None,
        cache_device: str | torch.device | None = None,
        attention_mask: Tensor | None = None,
        plans: Sequence[Plan] = (),
        copies: dict[int, int] | None = None,
        logit_positions: Tensor | None = None,
    ) -> Run:
        """One forward pass (in batches of `batch_size`) that records and edits sites.

        record: site names or globs. positions: record only these positions (ints count
        within each sequence, negative from its end; a slice cuts the padded axis).
        logits=False skips everything after the last recorded site. grad=True keeps the
        autograd graph through recorded values and edits. cache_device moves recorded
        values (e.g. "cpu") as they are made.

        plans: more hooks for this pass (`mechscope.hooks.Plan`), installed before the
        record/edit hooks; a plan may change the rows and shape of the output (patching's
        `CopyRows`, `GatherLogits`). copies={layer: n} and logit_positions=[P] are short
        for plans=[CopyRows(copies)] and [GatherLogits(logit_positions)]: copies of the P
        prompts join the batch at block `layer` (logits then have N*P rows, N = sum of the
        n's, as `prompts.repeat(N, 1)` would give them), and the unembedding runs only at
        one absolute position per prompt (logits [rows, vocab]). Both need one batch.
        """
        plans = [*plans, *shortcut_plans(copies, logit_positions)]
        names = plan_cache.resolve(self.table, record) if record else []  # cached per signature
        inputs = self.tokenize(prompts, attention_mask)
        ids = next(iter(inputs.values()))
        self._check_tokens(inputs)
        n = ids.shape[0]  # not len(): torch's __len__ is a Python-level call
        size = self._batch_size(batch_size, n, plans)
        # token ids without a mask have no padding: the wrapped model then gets no mask either, as
        # in its own plain call (on a GPU a mask costs mask-building kernels and a host sync)
        unpadded = isinstance(prompts, Tensor) and attention_mask is None
        chunks = [
            self._forward(
                inputs if size >= n else {k: v[i : i + size] for k, v in inputs.items()},
                names,
                positions,
                edits,
                grad,
                logits or "logits" in names,
                cache_device,
                plans,
                unpadded,
            )
            for i in range(0, n, size)
        ]
        return self._assemble(chunks, ids, inputs.get("attention_mask"), names, positions, plans)

    def _batch_size(self, batch_size: int | None, rows: int, plans: Sequence[Plan]) -> int:
        """Rows per forward; checks the plans against this model and the batching."""
        size = batch_size or rows
        if size < 1:
            raise MechscopeError(f"batch_size must be at least 1, got {batch_size}")
        whole = [p.name for p in plans if p.one_batch]
        if whole and size < rows:
            raise MechscopeError(f"{' and '.join(whole)} need the prompts in one batch: leave batch_size out")
        for plan in plans:
            plan.check(self)
        return size

    def _assemble(
        self, chunks, ids: Tensor, mask: Tensor | None, names: list[str], positions, plans: Sequence[Plan]
    ) -> Run:
        """One `Run` from the chunks' (output, recorded) pairs."""
        seq = ids.shape[1] if mask is not None else 0
        # Chunks are trimmed to their own longest sequence; pad position axes back to `seq`,
        # except those already cut to the requested positions. Non-token inputs are not padded.
        pad = {"k_pos"} if isinstance(positions, (int, list, tuple)) else {"pos", "q_pos", "k_pos"}
        pad = pad if mask is not None else set()
        out_dims: tuple[str, ...] = ("batch", "pos", "vocab")
        rows = prompts = ids.shape[0]
        for plan in plans:
            out_dims, rows = plan.output_dims(out_dims), plan.rows(rows)
        out = _concat([c[0] for c in chunks], seq, out_dims, {"pos"} & pad) if chunks[0][0] is not None else None
        cache = Cache(
            {n: _concat([c[1][n] for c in chunks], seq, self.table[n].dims, pad) for n in names if n != "logits"}
        )
        if "logits" in names:
            cache["logits"] = out
        if rows != prompts:
            copies = rows // prompts
            ids, mask = ids.repeat(copies, 1), None if mask is None else mask.repeat(copies, 1)
        return Run(ids, mask, out if self.output_is_logits else None, cache, out, self.tokenizer)

    def _forward(self, inputs, names, positions, edits, grad, want_output, cache_device, plans, unpadded=False):
        """One chunk: trim padding columns, run with hooks, return (output, recorded).
        `plans`: the run's extra plans; `unpadded`: the mask is all ones."""
        lengths = None
        if "attention_mask" in inputs:
            if not isinstance(positions, slice) and not unpadded:  # a slice cuts the padded axis: keep it whole
                length = int(inputs["attention_mask"].sum(-1).max())
                inputs = {k: v[:, :length] for k, v in inputs.items()}
            lengths = inputs["attention_mask"].sum(-1)
            if unpadded:
                inputs = {k: v for k, v in inputs.items() if k != "attention_mask"}
        recorded: dict[str, Tensor] = {}

        def on_record(name: str, value: Tensor) -> None:
            value = _select_positions(value, self.table[name], positions, per_row(lengths, value.shape[0]))
            value = value if grad else value.detach()
            recorded[name] = value.to(cache_device) if cache_device is not None else value

        hook_names = [n for n in names if n != "logits"]
        patterns = any(self.table[n].view.index == 1 for n in hook_names)
        output = None
        with (
            torch.enable_grad() if grad else torch.no_grad(),
            self._eager_attention(patterns),
            hooked(
                self.hf,
                self.table,
                record=hook_names,
                edits=resolve_edits(self.table, [*self._held_edits, *edits]),
                on_record=on_record,
                lengths=lengths,
                stop_when_recorded=bool(hook_names) and not want_output,
                plans=plans,
            ),
        ):
            try:
                output = self._call(inputs)
            except StopForward:
                pass
        for plan in plans if output is not None else ():
            output = plan.finish(output)
        if output is not None and cache_device is not None:
            output = output.to(cache_device)
        return output, recorded

    @contextmanager
    def _eager_attention(self, needed: bool) -> Iterator[None]:
        """Attention patterns exist only with eager attention; switch for this forward."""
        if not needed:  # first: reading a transformers config attribute costs microseconds
            yield
            return
        config = getattr(self.hf, "config", None)
        before = getattr(config, "_attn_implementation", None)
        if before == "eager":
            yield
            return
        assert config is not None  # attention patterns are Hugging Face sites: the model has a config
        config._attn_implementation = "eager"
        try:
            yield
        finally:
            config._attn_implementation = before

    # Edits that outlive one call

    @contextmanager
    def edit(self, *edits: Edit) -> Iterator[HookedModel]:
        """Apply edits to every run and generate inside the block; removed on exit."""
        resolve_edits(self.table, edits)  # fail now, not at the first forward
        held = len(self._held_edits)
        self._held_edits.extend(edits)
        try:
            yield self
        finally:
            del self._held_edits[held:]

    def steer(self, site: str, direction: Tensor, scale: float = 1.0, *, positions=None):
        """Add `scale * direction` at `site` inside the block (`with model.steer(...):`)."""
        return self.edit(edit_ops.add(site, direction * scale, positions=positions))


def _select_positions(value: Tensor, site: Site, positions, lengths: Tensor | None) -> Tensor:
    """Keep only the requested positions of a recorded value (q_pos for patterns)."""
    if positions is None or site.pos_dim is None:
        return value
    dim = site.pos_dim
    if isinstance(positions, slice):
        return value[(slice(None),) * dim + (positions,)]
    wanted = [positions] if isinstance(positions, int) else list(positions)
    assert lengths is not None  # token inputs (with an attention mask) are the ones with positions
    index = torch.stack([lengths + p if p < 0 else torch.full_like(lengths, p) for p in wanted], dim=1)
    if bool((index < 0).any() or (index >= lengths[:, None]).any()):
        raise MechscopeError(
            f"positions {wanted} fall outside some sequences (lengths {sorted(set(lengths.tolist()))})"
        )
    shape = list(index.shape) + [1] * (value.dim() - 2)
    index = index.view(shape).movedim(1, dim) if dim != 1 else index.view(shape)
    expand = list(value.shape)
    expand[dim] = len(wanted)
    return value.gather(dim, index.expand(expand))


def _concat(parts: list[Tensor], seq: int, dims: tuple[str, ...], pad_dims: set[str]) -> Tensor:
    """Join chunk results along batch, zero-padding the axes named in `pad_dims` to `seq`."""
    if len(parts) == 1 and all(parts[0].shape[i] == seq for i, d in enumerate(dims[: parts[0].dim()]) if d in pad_dims):
        return parts[0]  # the usual one chunk, nothing to pad
    padded = []
    for part in parts:
        pads = []
        for i in reversed(range(part.dim())):
            pads += [0, seq - part.shape[i] if i < len(dims) and dims[i] in pad_dims else 0]
        padded.append(F.pad(part, pads) if any(pads) else part)
    return padded[0] if len(padded) == 1 else torch.cat(padded)
