"""`Model`: a Hugging Face transformer seen through one adapter table, with named sites to
record and edit during a forward pass (running and edits: `HookedModel`). The model's
own forward always runs unchanged."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from .edits import Edit
from .errors import MechscopeError
from .hooked_model import HookedModel, Prompts
from .hooks import hooked, resolve_edits
from .models.families import adapter_for, check_supported
from .module_path import submodule
from .sites import Dims, SiteTable, build_sites
from .weights import WeightAccess

if TYPE_CHECKING:
    from transformers import GenerationMixin, PreTrainedModel

log = logging.getLogger(__name__)


class Model(HookedModel, WeightAccess):
    """A Hugging Face transformer with TransformerLens-style sites, through its family's adapter.

    Invariants: `adapter` is the table of the model's family (resolved for its config) and
    `dims` its sizes; `table` holds the sites the adapter maps (hook_embed, blocks.{l}.*,
    ln_final.hook_normalized, logits), in forward order; the wrapped `hf` is in eval mode and
    runs its own forward; token inputs are right-padded. Weights per head come from
    `WeightAccess` (W_E, W_Q, W_O, ...), read from the live parameters.

        model = ms.load("zoo:pycode")
        run = model.run("def add(a, b):", record="blocks.*.hook_resid_post", positions=-1)
        run.cache["blocks.0.hook_resid_post"].shape    # [batch, 1, d_model]
    """

    hf: PreTrainedModel

    def __init__(self, hf: PreTrainedModel, tokenizer=None, *, name: str | None = None):
        check_supported(hf.config)
        super().__init__(
            hf, tokenizer=tokenizer, name=name or getattr(hf.config, "_name_or_path", "") or type(hf).__name__
        )
        adapter = adapter_for(hf.config.model_type)
        assert adapter is not None  # check_supported refuses the others
        self.adapter = adapter.resolve(hf.config)
        base = hf.base_model
        self._prefix = "" if base is hf else hf.base_model_prefix + "."
        self.dims = self._read_dims()
        parallel = self.adapter.parallel
        has_logits = hf.get_output_embeddings() is not None
        has_pos = self.adapter.pos_embed is not None and self._has_module(self.adapter.pos_embed)
        self.table = SiteTable(
            build_sites(self.adapter, self.dims, self._prefix, parallel, has_logits, has_pos),
            self.dims.n_layers,
            self.adapter.family,
            dict(self.adapter.unavailable),
        )
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def _read_dims(self) -> Dims:
        c, a = self.hf.config, self.adapter
        n_heads = c.num_attention_heads
        down_path = a.block(0, a.mlp_down or "")
        down = (
            cast(Tensor, self.module(down_path).weight)
            if a.mlp_down and self._has_module(down_path)
            else torch.zeros(0, 0)
        )
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
        return (
            f"Model({self.name!r}, family={self.adapter.family!r}, layers={d.n_layers}, d_model={d.d_model}, "
            f"heads={d.n_heads}, kv_heads={d.n_kv_heads})"
        )

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
            return isinstance(submodule(self.hf, self._prefix + path), nn.Module)
        except AttributeError:
            return False

    def module(self, path: str) -> nn.Module:
        """A module by path relative to the base model (as written in adapter tables)."""
        return submodule(self.hf, self._prefix + path)

    def block_module(self, layer: int, path: str) -> nn.Module:
        if not 0 <= layer < self.dims.n_layers:
            raise MechscopeError(
                f"layer {layer} is out of range: this model has {self.dims.n_layers} layers "
                f"(0-{self.dims.n_layers - 1})"
            )
        return self.module(self.adapter.block(layer, path))

    # Inputs

    @property
    def context_length(self) -> int | None:
        """The most positions this model reads: max_position_embeddings (n_positions, n_ctx)
        in its config; None when the config names no limit."""
        # asked on every run: a transformers config attribute costs microseconds, and it stays
        if "_context_length" not in self.__dict__:
            self.__dict__["_context_length"] = _context_length(self.hf.config)
        return self.__dict__["_context_length"]

    def tokenize(
        self, prompts: Prompts, attention_mask: Tensor | None = None, *, truncate: bool = False
    ) -> dict[str, Tensor]:
        """Model inputs for text (right-padded) or for token ids [pos] / [batch, pos].

        A prompt longer than the model's context (`context_length`) is refused, since the
        positions past it mean nothing; truncate=True keeps its first `context_length`
        tokens instead (and logs a warning)."""
        if isinstance(prompts, Tensor):
            ids = prompts.unsqueeze(0) if prompts.dim() == 1 else prompts
            mask = torch.ones_like(ids) if attention_mask is None else attention_mask
            device = self.device
            return _fit_context(self, {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, truncate)
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
        lengths = (
            enc["attention_mask"].sum(1).tolist()
            if "attention_mask" in enc
            else [enc["input_ids"].shape[1]] * len(texts)
        )
        empty = [i for i, n in enumerate(lengths) if n == 0]
        if empty:
            raise MechscopeError(f"prompt {empty[0]} ({texts[empty[0]]!r}) has no tokens: give some text")
        inputs = {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")
        }
        return _fit_context(self, inputs, truncate, lengths)

    def _check_tokens(self, inputs: dict[str, Tensor]) -> None:
        """Out-of-range ids or too-long sequences fail here, not deep inside torch."""
        ids = inputs.get("input_ids")
        if ids is None:
            return
        if ids.numel() == 0:
            raise MechscopeError(f"no tokens to run (token ids of shape {tuple(ids.shape)}): give at least one token")
        vocab = cast(nn.Embedding, self.module(self.adapter.embed)).num_embeddings
        lowest, highest = torch.aminmax(ids)  # one host sync, not two
        low, high = int(lowest), int(highest)
        if low < 0 or high >= vocab:
            raise MechscopeError(
                f"token id {high if high >= vocab else low} is outside this model's vocabulary (0-{vocab - 1})"
            )
        if self.adapter.pos_embed and self._has_module(self.adapter.pos_embed):
            n_ctx = cast(nn.Embedding, self.module(self.adapter.pos_embed)).num_embeddings
            if ids.shape[1] > n_ctx:
                raise MechscopeError(
                    f"sequences of {ids.shape[1]} tokens exceed this model's {n_ctx} positions: shorten them"
                )

    @property
    def has_lm_head(self) -> bool:
        # asked on every run: transformers' lookup costs ~25 us, and a wrapped model keeps its head
        head = self.__dict__.get("_has_lm_head")
        if head is None:
            head = self.__dict__["_has_lm_head"] = self.hf.get_output_embeddings() is not None
        return head

    def _call(self, inputs: dict[str, Tensor]) -> Tensor:
        """The wrapped model's own forward; returns its main output."""
        result = self.hf(**inputs, use_cache=False)
        return result.logits if hasattr(result, "logits") else result.last_hidden_state

    def generate(
        self, prompts: Prompts, *, max_new_tokens: int = 20, edits: Sequence[Edit] = (), **kwargs
    ) -> str | list[str]:
        """Greedy (or `do_sample=True`) generation with edits active at every step."""
        if not self.has_lm_head:
            raise MechscopeError(f"{self.name} has no LM head; it cannot generate")
        single = isinstance(prompts, str)
        if self.tokenizer is None:
            raise MechscopeError(f"{self.name} has no tokenizer; generate needs text")
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, "left"
        try:
            enc = self.tokenizer([prompts] if single else list(prompts), return_tensors="pt", padding=True).to(
                self.device
            )
        finally:
            self.tokenizer.padding_side = side
        kwargs.setdefault("do_sample", False)
        with (
            torch.no_grad(),
            hooked(self.hf, self.table, edits=resolve_edits(self.table, [*self._held_edits, *edits]), strict=False),
        ):
            out = cast("GenerationMixin", self.hf).generate(  # every causal LM class mixes it in
                **enc, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id, **kwargs
            )
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return texts[0] if single else texts


def _context_length(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _fit_context(
    model, inputs: dict[str, Tensor], truncate: bool, lengths: list[int] | None = None
) -> dict[str, Tensor]:
    """`inputs` cut to the model's context when `truncate`, else refused when longer (any model
    with `context_length` and `name`: `ModulePathLM` tokenizes through `Model.tokenize`)."""
    limit, width = model.context_length, inputs["input_ids"].shape[-1]
    if limit is None or width <= limit:
        return inputs
    lengths = lengths or [width] * inputs["input_ids"].shape[0]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if not truncate:
        raise MechscopeError(
            f"prompt {longest} has {lengths[longest]} tokens, which exceed this model's {limit} positions "
            f"({model.name} reads no further): shorten it, or truncate (truncate=True; --truncate on the command "
            f"line) to keep its first {limit} tokens"
        )
    log.warning(
        "prompt %d has %d tokens, more than %s's %d positions: kept its first %d",
        longest,
        lengths[longest],
        model.name,
        limit,
        limit,
    )
    return {k: v[:, :limit] for k, v in inputs.items()}
