"""`Model`: a Hugging Face model seen through one adapter table, with named sites to
record and edit during a forward pass. The model's own forward always runs unchanged."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import edits as edit_ops
from .edits import Edit
from .errors import MechscopeError
from .hooks import StopForward, hooked, per_row, resolve_edits
from .models.families import adapter_for
from .models.loading import _check_supported
from .run import Cache, Run
from .sites import Dims, Site, SiteTable, build_sites
from .weights import WeightAccess

log = logging.getLogger(__name__)
Prompts = str | Sequence[str] | Tensor


class Model(WeightAccess):
    def __init__(self, hf: nn.Module, tokenizer=None, *, name: str | None = None):
        _check_supported(hf.config)
        self.hf = hf.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
        self.adapter = adapter_for(hf.config.model_type).resolve(hf.config)
        base = hf.base_model
        self._prefix = "" if base is hf else hf.base_model_prefix + "."
        self.dims = self._read_dims()
        parallel = self.adapter.parallel
        has_logits = hf.get_output_embeddings() is not None
        has_pos = self.adapter.pos_embed is not None and self._has_module(self.adapter.pos_embed)
        self.table = SiteTable(build_sites(self.adapter, self.dims, self._prefix, parallel, has_logits, has_pos),
                               self.dims.n_layers, self.adapter.family, dict(self.adapter.unavailable))
        self._held_edits: list[Edit] = []
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def _read_dims(self) -> Dims:
        c, a = self.hf.config, self.adapter
        n_heads = c.num_attention_heads
        down_path = a.block(0, a.mlp_down or "")
        down = self.module(down_path).weight if a.mlp_down and self._has_module(down_path) else torch.zeros(0, 0)
        return Dims(
            n_layers=c.num_hidden_layers,
            d_model=c.hidden_size,
            n_heads=n_heads,
            n_kv_heads=a.n_kv_heads or getattr(c, a.kv_heads_attr, None) or n_heads,
            d_head=getattr(c, "head_dim", None) or c.hidden_size // n_heads,
            d_mlp=getattr(c, a.d_mlp_attr) if a.d_mlp_attr else down.shape[0] if a.conv1d else down.shape[1],
            d_vocab=c.vocab_size,
        )

    def __repr__(self) -> str:
        d = self.dims
        return (f"Model({self.name!r}, family={self.adapter.family!r}, layers={d.n_layers}, d_model={d.d_model}, "
                f"heads={d.n_heads}, kv_heads={d.n_kv_heads})")

    def info(self) -> dict:
        """What `mechscope info` shows: family, sizes, conventions and every site's shape."""
        return {
            "name": self.name,
            "family": self.adapter.family,
            "model_type": self.hf.config.model_type,
            "parameters": sum(p.numel() for p in self.hf.parameters()),
            "dtype": str(next(self.hf.parameters()).dtype).removeprefix("torch."),
            "device": str(self.device),
            **{k: v for k, v in vars(self.dims).items()},
            "notes": list(self.adapter.notes),
            "sites": {s.name: dict(zip(s.dims, s.sizes)) for s in self.table},
        }

    # Modules and sites

    def _has_module(self, path: str) -> bool:
        try:
            return isinstance(self.hf.get_submodule(self._prefix + path), nn.Module)
        except AttributeError:
            return False

    def module(self, path: str) -> nn.Module:
        """A module by path relative to the base model (as written in adapter tables)."""
        return self.hf.get_submodule(self._prefix + path)

    def block_module(self, layer: int, path: str) -> nn.Module:
        if not 0 <= layer < self.dims.n_layers:
            raise MechscopeError(f"layer {layer} is out of range: this model has {self.dims.n_layers} layers (0-{self.dims.n_layers - 1})")
        return self.module(self.adapter.block(layer, path))

    @property
    def sites(self) -> list[Site]:
        """Every site this model has, in forward order, with its dimensions."""
        return list(self.table)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    # Inputs

    @property
    def context_length(self) -> int | None:
        """The most positions this model reads: max_position_embeddings (n_positions, n_ctx)
        in its config; None when the config names no limit."""
        config = self.hf.config
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(config, key, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def tokenize(self, prompts: Prompts, attention_mask: Tensor | None = None, *,
                 truncate: bool = False) -> dict[str, Tensor]:
        """Model inputs for text (right-padded) or for token ids [pos] / [batch, pos].

        A prompt longer than the model's context (`context_length`) is refused, since the
        positions past it mean nothing; truncate=True keeps its first `context_length`
        tokens instead (and logs a warning)."""
        if isinstance(prompts, Tensor):
            ids = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
            mask = torch.ones_like(ids) if attention_mask is None else attention_mask
            return self._fit_context({"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}, truncate)
        if self.tokenizer is None:
            raise MechscopeError(f"{self.name} has no tokenizer: pass token ids (a LongTensor) instead of text")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise MechscopeError("prompts must be a non-empty string or list of strings")
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "right"
        try:
            enc = self.tokenizer(texts, return_tensors="pt", padding=True)
        finally:
            self.tokenizer.padding_side = side
        lengths = enc["attention_mask"].sum(1).tolist() if "attention_mask" in enc else [enc["input_ids"].shape[1]] * len(texts)
        empty = [i for i, n in enumerate(lengths) if n == 0]
        if empty:
            raise MechscopeError(f"prompt {empty[0]} ({texts[empty[0]]!r}) has no tokens: give some text")
        inputs = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return self._fit_context(inputs, truncate, lengths)

    def _fit_context(self, inputs: dict[str, Tensor], truncate: bool, lengths: list[int] | None = None) -> dict[str, Tensor]:
        """`inputs` cut to the model's context when `truncate`, else refused when longer."""
        limit, width = self.context_length, inputs["input_ids"].shape[-1]
        if limit is None or width <= limit:
            return inputs
        lengths = lengths or [width] * inputs["input_ids"].shape[0]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if not truncate:
            raise MechscopeError(
                f"prompt {longest} has {lengths[longest]} tokens, which exceed this model's {limit} positions "
                f"({self.name} reads no further): shorten it, or truncate (truncate=True; --truncate on the command "
                f"line) to keep its first {limit} tokens")
        log.warning("prompt %d has %d tokens, more than %s's %d positions: kept its first %d", longest,
                    lengths[longest], self.name, limit, limit)
        return {k: v[:, :limit] for k, v in inputs.items()}

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
        copies: dict[int, int] | None = None,
        logit_positions: Tensor | None = None,
    ) -> Run:
        """One forward pass (in batches of `batch_size`) that records and edits sites.

        record: site names or globs. positions: record only these positions (ints count
        within each sequence, negative from its end; a slice cuts the padded axis).
        logits=False skips everything after the last recorded site. grad=True keeps the
        autograd graph through recorded values and edits. cache_device moves recorded
        values (e.g. "cpu") as they are made.

        copies {layer: n}: run copies of the P prompts that edits may treat differently
        from block `layer` on, where n of them join the batch; the blocks before run once
        per prompt, since they compute the same thing in every copy. The logits (and every
        site after the last join) have N*P rows, N = sum of the n's, ordered by layer as
        `prompts.repeat(N, 1)` would give them; a site in between sees the P prompt rows
        followed by the copies joined so far.
        logit_positions [P]: the absolute position at which each prompt's logits are
        wanted; the unembedding runs there only and logits come back [rows, vocab].
        Both need one batch (no `batch_size` smaller than the prompts).
        """
        names = self.table.resolve(record) if record else []
        inputs = self.tokenize(prompts, attention_mask)
        ids, mask = next(iter(inputs.values())), inputs.get("attention_mask")
        self._check_tokens(inputs)
        size = batch_size or len(ids)
        if size < 1:
            raise MechscopeError(f"batch_size must be at least 1, got {batch_size}")
        shared = dict(copies=copies, logit_positions=logit_positions)
        if (copies or logit_positions is not None) and size < len(ids):
            raise MechscopeError("copies and logit_positions need the prompts in one batch: leave batch_size out")
        if logit_positions is not None and not self.has_lm_head:
            raise MechscopeError(f"{self.name} has no LM head: logit_positions has no logits to cut")
        # token ids without a mask have no padding: the wrapped model then gets no mask either, as
        # in its own plain call (on a GPU a mask costs mask-building kernels and a host sync)
        unpadded = isinstance(prompts, Tensor) and attention_mask is None
        chunks = [self._forward({k: v[i:i + size] for k, v in inputs.items()}, names, positions, edits,
                                grad, logits or "logits" in names, cache_device, shared, unpadded)
                  for i in range(0, len(ids), size)]
        seq = ids.shape[1] if mask is not None else 0
        # Chunks are trimmed to their own longest sequence; pad position axes back to `seq`,
        # except those already cut to the requested positions. Non-token inputs are not padded.
        pad = {"k_pos"} if isinstance(positions, (int, list, tuple)) else {"pos", "q_pos", "k_pos"}
        pad = pad if mask is not None else set()
        out_pad = {"pos"} & pad
        out_dims = ("batch", "pos", "vocab") if logit_positions is None else ("batch", "vocab")
        out = _concat([c[0] for c in chunks], seq, out_dims, out_pad) if chunks[0][0] is not None else None
        cache = Cache({n: _concat([c[1][n] for c in chunks], seq, self.table[n].dims, pad) for n in names if n != "logits"})
        if "logits" in names:
            cache["logits"] = out
        if copies and any(copies.values()):
            ids, mask = (t if t is None else t.repeat(sum(copies.values()), 1) for t in (ids, mask))
        return Run(ids, mask, out if self.output_is_logits else None, cache, out, self.tokenizer)

    def _check_tokens(self, inputs: dict[str, Tensor]) -> None:
        """Out-of-range ids or too-long sequences fail here, not deep inside torch."""
        ids = inputs.get("input_ids")
        if ids is None:
            return
        if ids.numel() == 0:
            raise MechscopeError(f"no tokens to run (token ids of shape {tuple(ids.shape)}): give at least one token")
        vocab = self.module(self.adapter.embed).num_embeddings
        low, high = torch.aminmax(ids)      # one host sync, not two
        low, high = int(low), int(high)
        if low < 0 or high >= vocab:
            raise MechscopeError(f"token id {high if high >= vocab else low} is outside this model's vocabulary (0-{vocab - 1})")
        if self.adapter.pos_embed and self._has_module(self.adapter.pos_embed):
            n_ctx = self.module(self.adapter.pos_embed).num_embeddings
            if ids.shape[1] > n_ctx:
                raise MechscopeError(f"sequences of {ids.shape[1]} tokens exceed this model's {n_ctx} positions: shorten them")

    @property
    def has_lm_head(self) -> bool:
        return self.hf.get_output_embeddings() is not None

    @property
    def output_is_logits(self) -> bool:
        return self.has_lm_head

    def _call(self, inputs: dict[str, Tensor]) -> Tensor:
        """The wrapped model's own forward; returns its main output."""
        result = self.hf(**inputs, use_cache=False)
        return result.logits if hasattr(result, "logits") else result.last_hidden_state

    def _forward(self, inputs, names, positions, edits, grad, want_output, cache_device, shared, unpadded=False):
        """One chunk: trim padding columns, run with hooks, return (output, recorded).
        `shared`: the copies / logit_positions options of `run`; `unpadded`: the mask is all ones."""
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
        with torch.enable_grad() if grad else torch.no_grad(), self._eager_attention(patterns), hooked(
            self.hf, self.table, record=hook_names, edits=resolve_edits(self.table, [*self._held_edits, *edits]),
            on_record=on_record, lengths=lengths, stop_when_recorded=bool(hook_names) and not want_output, **shared,
        ):
            try:
                output = self._call(inputs)
            except StopForward:
                pass
        if output is not None and shared["logit_positions"] is not None:
            output = output[:, 0]
        if output is not None and cache_device is not None:
            output = output.to(cache_device)
        return output, recorded

    @contextmanager
    def _eager_attention(self, needed: bool) -> Iterator[None]:
        """Attention patterns exist only with eager attention; switch for this forward."""
        config = getattr(self.hf, "config", None)
        before = getattr(config, "_attn_implementation", None)
        if not needed or before == "eager":
            yield
            return
        config._attn_implementation = "eager"
        try:
            yield
        finally:
            config._attn_implementation = before

    # Edits that outlive one call

    @contextmanager
    def edit(self, *edits: Edit) -> Iterator["Model"]:
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

    def generate(self, prompts: Prompts, *, max_new_tokens: int = 20, edits: Sequence[Edit] = (), **kwargs) -> str | list[str]:
        """Greedy (or `do_sample=True`) generation with edits active at every step."""
        if not self.has_lm_head:
            raise MechscopeError(f"{self.name} has no LM head; it cannot generate")
        single = isinstance(prompts, str)
        if self.tokenizer is None:
            raise MechscopeError(f"{self.name} has no tokenizer; generate needs text")
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        try:
            enc = self.tokenizer([prompts] if single else list(prompts), return_tensors="pt", padding=True).to(self.device)
        finally:
            self.tokenizer.padding_side = side
        kwargs.setdefault("do_sample", False)
        with torch.no_grad(), hooked(self.hf, self.table, edits=resolve_edits(self.table, [*self._held_edits, *edits]),
                                     strict=False):
            out = self.hf.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **kwargs)
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return texts[0] if single else texts


def _select_positions(value: Tensor, site: Site, positions, lengths: Tensor) -> Tensor:
    """Keep only the requested positions of a recorded value (q_pos for patterns)."""
    if positions is None or site.pos_dim is None:
        return value
    dim = site.pos_dim
    if isinstance(positions, slice):
        return value[(slice(None),) * dim + (positions,)]
    wanted = [positions] if isinstance(positions, int) else list(positions)
    index = torch.stack([lengths + p if p < 0 else torch.full_like(lengths, p) for p in wanted], dim=1)
    if bool((index < 0).any() or (index >= lengths[:, None]).any()):
        raise MechscopeError(f"positions {wanted} fall outside some sequences (lengths {sorted(set(lengths.tolist()))})")
    shape = list(index.shape) + [1] * (value.dim() - 2)
    index = index.view(shape).movedim(1, dim) if dim != 1 else index.view(shape)
    expand = list(value.shape)
    expand[dim] = len(wanted)
    return value.gather(dim, index.expand(expand))


def _concat(parts: list[Tensor], seq: int, dims: tuple[str, ...], pad_dims: set[str]) -> Tensor:
    """Join chunk results along batch, zero-padding the axes named in `pad_dims` to `seq`."""
    padded = []
    for part in parts:
        pads = []
        for i in reversed(range(part.dim())):
            pads += [0, seq - part.shape[i] if i < len(dims) and dims[i] in pad_dims else 0]
        padded.append(F.pad(part, pads) if any(pads) else part)
    return padded[0] if len(padded) == 1 else torch.cat(padded)
