"""`auto_model(hf)`: a causal LM without an adapter table, seen through the automatic adapter.

The guess (`auto.py`) is narrowed by one recorded forward pass (`auto_check.py`) and the
sites built from it are checked through `Model.run` (`auto_verify.py`). A site kind keeps
its TransformerLens name only if it reproduced Hugging Face's own values; weights that did
not reproduce their sites are refused. Whenever something was not verified, every module
is also offered by path (`model.layers.3.mlp.hook_out`), as `ModuleModel` does. A model
whose residual stream could not be verified gets module paths only. `model.provenance`
says which is which (`mechscope info` prints it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from ..errors import MechscopeError
from ..model import Model
from ..module_model import ModuleModel, module_sites
from ..sites import Dims, ReadOnlyView, SiteTable, build_sites
from .adapter import Adapter, Tap
from .auto import Guess, guesses, text_config
from .auto_check import Choice, candidate_table, choose, record
from .auto_verify import Probe, Verdict, site_kind, verify

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .adapter import QKVLayout

log = logging.getLogger(__name__)
TABLE = "exact: adapter table"
AUTO = "automatic: guessed and verified against Hugging Face"
PATHS = "module paths: every module as PATH.hook_in / PATH.hook_out"
UNVERIFIED = "not offered"
READ_ONLY = "read-only"


STANDARD = (
    "hook_embed",
    "hook_pos_embed",
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
    "ln_final.hook_normalized",
    "logits",
)
"""The TransformerLens site kinds a decoder can have (blocks.{l}. omitted), in forward order."""
WEIGHT_GROUPS = ("qkv", "o", "mlp_in", "mlp_out", "unembed")


def _call(hf: nn.Module, ids: Tensor, **kwargs):
    """The model's own forward on token ids (Hugging Face keywords when it takes them)."""
    try:
        return hf(input_ids=ids, use_cache=False, **kwargs)
    except TypeError:
        return hf(ids)


def _logits(out) -> Tensor:
    if isinstance(out, Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out[0]


class AutoModel(Model):
    """A `Model` whose adapter was guessed; only verified sites and weights are offered."""

    def __init__(self, hf: PreTrainedModel, tokenizer, *, name: str, adapter: Adapter, dims: Dims):
        # Model.__init__ looks its table up by model_type; this one brings its own adapter
        self.hf, self.tokenizer, self.adapter, self.dims = hf.eval(), tokenizer, adapter, dims
        self.name = name
        self._prefix = "" if hf.base_model is hf else hf.base_model_prefix + "."
        has_pos = adapter.pos_embed is not None
        sites = build_sites(
            adapter,
            replace(dims, d_mlp=dims.d_mlp or 1),
            self._prefix,
            adapter.parallel,
            hf.get_output_embeddings() is not None,
            has_pos,
        )
        sites = [s for s in sites if not s.module.endswith(".")]  # parts the guess did not find (path "")
        self.table = SiteTable(sites, dims.n_layers, adapter.family)
        self._held_edits = []
        self.weights: set[str] = set(WEIGHT_GROUPS)  # all, while verify() tries them; restrict() narrows
        self.provenance: dict[str, list[str]] = {}
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token

    def restrict(self, verdict: Verdict, why_not: list[str], paths: bool) -> None:
        """Keep the verified site kinds, read-only where an edit would not do what its name says
        (and every module path when `paths`)."""
        kinds, weights = verdict.kinds, verdict.weights
        kept = [
            replace(s, view=ReadOnlyView(verdict.read_only[site_kind(s.name)]))
            if site_kind(s.name) in verdict.read_only
            else s
            for s in self.table
            if site_kind(s.name) in kinds
        ]
        built = {site_kind(s.name) for s in self.table}
        standard = {k for k in STANDARD if k != "hook_pos_embed" and (k != "logits" or "logits" in built)}
        dropped = sorted((built | standard) - kinds, key=_order)
        extra = module_sites(self.hf) if paths else []
        self.table = SiteTable(
            [*kept, *extra],
            self.dims.n_layers,
            self.adapter.family,
            {k: "the automatic adapter could not verify it; record module paths instead" for k in dropped},
        )
        self.weights = weights
        if not {"unembed", "o"} <= weights and self.adapter.attn_in_norm:
            # methods that read the stream as a sum through the unembedding (DLA, circuits) are refused
            self.adapter = replace(self.adapter, attn_in_norm=None)
            why_not = [*why_not, "W_O or the unembedding unverified: attribution through them is refused"]
        self.provenance = {
            AUTO: sorted({site_kind(s.name) for s in kept}, key=_order)
            + [f"weights: {group}" for group in WEIGHT_GROUPS if group in weights]
        }
        if paths:
            self.provenance[PATHS] = [f"{len(extra) // 2} modules"]
        if verdict.read_only:
            self.provenance[READ_ONLY] = [f"{k} ({why})" for k, why in verdict.read_only.items()]
        if dropped or why_not:
            self.provenance[UNVERIFIED] = dropped + [f"({w})" for w in why_not]

    def info(self) -> dict:
        return {**super().info(), "provenance": self.provenance}

    def _require(self, group: str, what: str) -> None:
        if group not in self.weights:
            raise MechscopeError(
                f"{what} of {self.name} is not available: the automatic adapter could not verify it "
                "against the model's own outputs (`mechscope info` lists what was verified)"
            )

    def _qkv(self, layer, part, bias):
        self._require("qkv", "W_Q / W_K / W_V")
        return super()._qkv(layer, part, bias)

    def W_O(self, layer):
        self._require("o", "W_O")
        return super().W_O(layer)

    def b_O(self, layer):
        self._require("o", "b_O")
        return super().b_O(layer)

    def W_in(self, layer):
        self._require("mlp_in", "W_in")
        return super().W_in(layer)

    def W_gate(self, layer):
        self._require("mlp_in", "W_gate")
        return super().W_gate(layer)

    def b_in(self, layer):
        self._require("mlp_in", "b_in")
        return super().b_in(layer)

    def W_out(self, layer):
        self._require("mlp_out", "W_out")
        return super().W_out(layer)

    def b_out(self, layer):
        self._require("mlp_out", "b_out")
        return super().b_out(layer)

    def unembed(self, normalized):
        self._require("unembed", "the unembedding (to_logits)")
        return super().unembed(normalized)


class ModulePathLM(ModuleModel):
    """A language model whose structure could not be verified: module-path sites only; it reads
    text (with a tokenizer) or token ids."""

    def __init__(self, hf: nn.Module, tokenizer=None, *, name: str | None = None, why_not: Sequence[str] = ()):
        super().__init__(hf, name=name)
        self.tokenizer = tokenizer
        self.provenance = {PATHS: [f"{len(self.table) // 2} modules"], UNVERIFIED: [f"({w})" for w in why_not]}

    def info(self) -> dict:
        return {**super().info(), "provenance": self.provenance}

    def tokenize(self, prompts, attention_mask=None, *, truncate: bool = False) -> dict[str, Tensor]:
        """Token ids [pos] / [batch, pos] (or other tensors) as they are; text through the tokenizer."""
        if isinstance(prompts, Tensor):
            ids = prompts.unsqueeze(0) if prompts.dim() == 1 and not prompts.is_floating_point() else prompts
            return {"input": ids.to(self.device)}
        if self.tokenizer is None:
            raise MechscopeError(f"{self.name} has no tokenizer: pass token ids (a LongTensor) instead of text")
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise MechscopeError("prompts must be a non-empty string or list of strings")
        return {"input": self.tokenizer(texts, return_tensors="pt", padding=True)["input_ids"].to(self.device)}

    def _call(self, inputs: dict[str, Tensor]) -> Tensor:
        return _logits(_call(self.hf, inputs["input"]))

    @property
    def output_is_logits(self) -> bool:
        return True


def provenance(model) -> dict[str, list[str]]:
    """Where a model's sites come from: {source: site kinds or a summary} (`mechscope info`)."""
    if isinstance(model, (AutoModel, ModulePathLM)):
        return model.provenance
    if getattr(model, "adapter", None) is not None:
        return {
            TABLE: [f"{model.adapter.family}: every site listed (checked against Hugging Face by the oracle tests)"]
        }
    return {PATHS: [f"{len(model.table) // 2} modules"]}


def _num_embeddings(hf: PreTrainedModel) -> int:
    return cast(nn.Embedding, hf.get_input_embeddings()).num_embeddings


def _probe_ids(hf: nn.Module, vocab: int) -> Tensor:
    return torch.randint(0, vocab, (2, 8), generator=torch.Generator().manual_seed(0)).to(next(hf.parameters()).device)


def _adapter(hf: nn.Module, g: Guess, c: Choice, layout: QKVLayout) -> Adapter:
    def norm_out(tap):
        return tap.module if tap is not None and tap.module in g.norms else None

    structure_known = c.parallel is not None and c.gain_offset is not None
    return Adapter(
        family=f"automatic adapter ({type(hf).__name__})",
        model_types=(getattr(text_config(hf), "model_type", type(hf).__name__),),
        blocks=g.blocks,
        embed=g.embed,
        pos_embed=c.pos_embed,
        pos_embed_per_prompt=c.pos_per_prompt,
        q=g.q or "",
        k=g.k or "",
        v=g.v or "",
        o=g.o or "",
        attention=g.attention or "",
        attn_in_norm=c.attn_in_norm if structure_known else None,
        attn_out=c.attn_out or Tap(""),
        mlp_out=c.mlp_out or Tap(""),
        mlp_in=g.mlp_in or "",
        mlp_gate=g.mlp_gate,
        mlp_down=g.mlp_down,
        resid_mid=c.resid_mid,
        final_norm=c.final_norm,
        qkv_layout=layout,
        conv1d=g.conv1d,
        n_kv_heads=g.n_kv_heads or None,
        parallel=bool(c.parallel) or c.resid_mid is None,
        attn_post_norm=norm_out(c.attn_out),
        mlp_post_norm=norm_out(c.mlp_out),
        norm_gain_offset=c.gain_offset or 0.0,
        notes=(
            (
                "sites found by the automatic adapter and checked against Hugging Face's outputs on a probe "
                "(`provenance` says which); hook_q / hook_k are the projections' outputs "
                "(before any rotary or q/k norm)"
            ),
        ),
    )


def auto_model(hf: nn.Module, tokenizer=None, *, name: str | None = None) -> AutoModel | ModulePathLM:
    """`hf` seen through the automatic adapter (see the module docstring). A model that does not
    run on token ids is refused with a MechscopeError."""
    name = name or getattr(getattr(hf, "config", None), "_name_or_path", "") or type(hf).__name__
    hf.eval()
    if not all(hasattr(hf, a) for a in ("config", "base_model", "get_output_embeddings")):
        why = f"{type(hf).__name__} is not a Hugging Face PreTrainedModel (no config, base model, output embeddings)"
        log.warning("%s: %s: module paths only", name, why)
        return ModulePathLM(hf, tokenizer, name=name, why_not=[why])
    hf = cast("PreTrainedModel", hf)  # duck-typed: it has what a PreTrainedModel has (checked above)
    try:
        candidates = guesses(hf)
    except MechscopeError as err:
        log.warning("%s: %s", name, err)
        return ModulePathLM(hf, tokenizer, name=name, why_not=[str(err)])
    vocab = candidates[0].d_vocab
    ids = _probe_ids(hf, vocab if hf.get_output_embeddings() is None else min(vocab, _num_embeddings(hf)))
    g, choice, out = _first_verified(hf, candidates, ids, name)
    if not choice.resid_ok:
        reasons = choice.why_not or ["Hugging Face returns no hidden_states to check the blocks against"]
        log.warning(
            "%s: the automatic adapter could not verify the residual stream (%s): module paths only", name, reasons[0]
        )
        return ModulePathLM(hf, tokenizer, name=name, why_not=reasons + g.missing)  # the decisive reason first
    hidden = tuple(getattr(out, "hidden_states", None) or ())
    probe = Probe(ids, _logits(out).detach(), hidden, choice)
    dims = Dims(g.n_layers, g.d_model, g.n_heads, g.n_kv_heads or g.n_heads, g.d_head, g.d_mlp, g.d_vocab)
    best: tuple[AutoModel, Verdict] | None = None
    for layout in g.layouts or ("separate",):
        model = AutoModel(hf, tokenizer, name=name, adapter=_adapter(hf, g, choice, layout), dims=dims)
        verdict = verify(model, probe)
        if best is None or len(verdict.kinds) > len(best[1].kinds):
            best = (model, verdict)
    assert best is not None  # at least one layout is tried
    model, verdict = best
    if "hook_resid_post" not in verdict.kinds:
        return ModulePathLM(hf, tokenizer, name=name, why_not=verdict.why_not + g.missing)
    complete = {site_kind(s.name) for s in model.table}
    paths = bool(complete - verdict.kinds or g.missing)
    model.restrict(verdict, g.missing + choice.why_not + verdict.why_not, paths)
    return model


def _first_verified(
    hf: PreTrainedModel, candidates: list[Guess], ids: Tensor, name: str
) -> tuple[Guess, Choice, object]:
    """One recorded forward pass per candidate block list, until one reproduces hidden_states:
    (that guess, its choice, the model's output); else the first guess and why it failed."""
    prefix = "" if hf.base_model is hf else hf.base_model_prefix + "."
    first = None
    for g in candidates:
        box: dict[str, Any] = {}
        try:
            with torch.no_grad():
                rec = record(
                    hf,
                    candidate_table(g, hf.base_model, prefix),
                    lambda: box.update(out=_call(hf, ids, output_hidden_states=True)),
                )  # noqa: B023
        except Exception as err:  # noqa: BLE001 - the model's own forward failed on plain token ids
            raise MechscopeError(
                f"{name} ({type(hf).__name__}) did not run on token ids alone ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:160] if str(err) else ''}): mechscope needs a model that does"
            ) from None
        hidden = tuple(getattr(box["out"], "hidden_states", None) or ())
        try:
            choice = choose(g, rec, hidden, hf.base_model.get_submodule)
        except Exception as err:  # noqa: BLE001 - a guess that breaks its own checks is not offered
            choice = Choice(why_not=[f"the candidates could not be compared ({type(err).__name__}: {str(err)[:120]})"])
        if choice.resid_ok:
            return g, choice, box["out"]
        first = first or (g, choice, box["out"])
    assert first is not None  # `candidates` is never empty (guesses() raises instead)
    return first


def _order(kind: str) -> tuple:
    return (STANDARD.index(kind) if kind in STANDARD else len(STANDARD), kind)
