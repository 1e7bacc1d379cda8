"""The automatic adapter: a guess at where an untabled decoder keeps each part.

For a causal LM without a table in `families.py`, `guesses(hf)` reads the module tree
and the parameter shapes: the block list (the longest ModuleList of identical blocks, and up to two more tried
under the base model), inside one block the attention module with its q/k/v/o
projections and the MLP with its in/gate/down projections (by name *and* shape:
q out = head * d_head, o in = head * d_head, down in = d_mlp, ...), the norms, the
embedding and unembedding Hugging Face names, and the final norm.

A guess is only a list of candidates. `auto_check.py` runs the model and keeps the
candidates that reproduce Hugging Face's own outputs; nothing here is offered to a
user before that (see `auto_model.py`). The name lists below are data: module names
that many families share, never one family's special case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from torch import nn

from ..errors import MechscopeError
from .adapter import QKVLayout, Tap

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ATTENTION = re.compile(r"(attn|attention)$", re.IGNORECASE)
MLP = re.compile(r"(mlp|ffn|feed_forward|feedforward|ff|mlp_block|moe|block_sparse_moe)$", re.IGNORECASE)
Q_NAMES = {"q_proj", "q", "query", "wq", "q_lin", "query_proj"}
K_NAMES = {"k_proj", "k", "key", "wk", "k_lin", "key_proj"}
V_NAMES = {"v_proj", "v", "value", "wv", "v_lin", "value_proj"}
O_NAMES = {"o_proj", "out_proj", "dense", "c_proj", "wo", "o", "out_lin", "proj", "out", "output_proj", "o_lin"}
QKV_NAMES = {"qkv_proj", "c_attn", "query_key_value", "wqkv", "qkv", "w_pack", "in_proj", "qkv_lin"}
GATE = re.compile(r"gate|^w1$|^wi_0$", re.IGNORECASE)
HEADS_ATTRS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "attention_heads")
KV_ATTRS = ("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num")


@dataclass
class Guess:
    """Candidates for one model; paths relative to the base model (blocks: to one block)."""

    blocks: str
    n_layers: int
    embed: str
    d_model: int
    d_vocab: int
    final_norms: list[str] = field(default_factory=list)
    pos_embeds: list[str] = field(default_factory=list)
    attention: str | None = None
    n_heads: int = 0
    d_head: int = 0
    n_kv_heads: int = 0
    q: str | None = None
    k: str | None = None
    v: str | None = None
    o: str | None = None
    layouts: tuple[QKVLayout, ...] = ()
    """q/k/v layouts to try: ('separate',) or the fused layouts the shapes allow."""
    conv1d: bool = False
    mlp: str | None = None
    mlp_in: str | None = None
    mlp_gate: str | None = None
    mlp_down: str | None = None
    d_mlp: int = 0
    norms: list[str] = field(default_factory=list)
    """Norm modules of one block, in registration order."""
    attn_out: list[Tap] = field(default_factory=list)
    mlp_out: list[Tap] = field(default_factory=list)
    resid_mid: list[Tap] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """What could not be found, as sentences for `mechscope info`."""


def linear_shape(module: nn.Module) -> tuple[int, int, bool] | None:
    """(in, out, conv1d) of a Linear or GPT-2-style Conv1D; None for anything else."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1], True
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    return None


def is_norm(module: nn.Module) -> bool:
    """A LayerNorm / RMSNorm-like leaf: 'norm' in its class name, at most weight and bias."""
    params = [n for n, _ in module.named_parameters()]
    return "norm" in type(module).__name__.lower() and not list(module.children()) and set(params) <= {"weight", "bias"}


def is_causal_lm(config) -> bool:
    """Whether transformers has a causal-LM class for this config's model_type (what the
    automatic adapter may try when no table serves it)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def text_config(hf: nn.Module):
    config = getattr(hf, "config", None)
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def _config_int(config, names) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _path_of(root: nn.Module, target: nn.Module | None) -> str | None:
    if target is None:
        return None
    return next((name for name, m in root.named_modules() if m is target), None)


def find_blocks(base: nn.Module, n_layers: int | None) -> list[tuple[str, nn.ModuleList]]:
    """ModuleLists of identical-class blocks, most likely first: those with the config's layer
    count, then the longest (more parameters breaks ties); lists nested inside such a list's
    items do not count. A multimodal model has several (its vision tower's, its text stack's)."""
    lists = [
        (name, m)
        for name, m in base.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1
    ]
    top = [(n, m) for n, m in lists if not any(n.startswith(o + ".") for o, _ in lists if o != n)]
    if not top:
        raise MechscopeError(
            f"{type(base).__name__} has no list of identical blocks (nn.ModuleList): "
            "the automatic adapter cannot find its layers; record module paths instead"
        )
    return sorted(
        top,
        key=lambda nm: (len(nm[1]) == n_layers, len(nm[1]), sum(p.numel() for p in nm[1].parameters())),
        reverse=True,
    )


def _shallowest(block: nn.Module, pattern: re.Pattern) -> str | None:
    found = [n for n, _ in block.named_modules() if n and pattern.search(n.rsplit(".", 1)[-1])]
    return min(found, key=lambda n: (n.count("."), len(n)), default=None)


def _linears(root: nn.Module, prefix: str) -> dict[str, tuple[int, int, bool]]:
    return {f"{prefix}.{n}": s for n, m in root.named_modules() if n and (s := linear_shape(m))}


def _attention(guess: Guess, block: nn.Module, config) -> None:
    guess.attention = _shallowest(block, ATTENTION)
    n_heads = _config_int(config, HEADS_ATTRS)
    if guess.attention is None or not n_heads:
        guess.missing.append("no attention module with a head count in the config: no attention sites")
        return
    linears = _linears(block.get_submodule(guess.attention), guess.attention)

    def by_name(names):
        return [p for p in linears if p.rsplit(".", 1)[-1].lower() in names]

    d = guess.d_model
    outs = [p for p in by_name(O_NAMES) if linears[p][1] == d and linears[p][0] % n_heads == 0]
    if not outs:
        guess.missing.append("no output projection (o) of width head * d_head -> d_model: no attention sites")
        return
    guess.o, guess.n_heads = outs[0], n_heads
    guess.d_head = linears[guess.o][0] // n_heads
    guess.conv1d = linears[guess.o][2]
    width = n_heads * guess.d_head
    qs = [p for p in by_name(Q_NAMES) if linears[p][:2] == (d, width)]
    ks, vs = by_name(K_NAMES), by_name(V_NAMES)
    if qs and ks and vs and linears[ks[0]][1] == linears[vs[0]][1] and linears[ks[0]][1] % guess.d_head == 0:
        guess.q, guess.k, guess.v = qs[0], ks[0], vs[0]
        guess.n_kv_heads, guess.layouts = linears[ks[0]][1] // guess.d_head, ("separate",)
    else:
        for path in by_name(QKV_NAMES):
            extra = linears[path][1] - width
            if linears[path][0] == d and extra > 0 and extra % (2 * guess.d_head) == 0:
                guess.q = guess.k = guess.v = path
                guess.n_kv_heads = extra // (2 * guess.d_head)
                guess.layouts = ("gpt2_fused", "neox_fused") if guess.n_kv_heads == n_heads else ("concat",)
                break
    if guess.q is None or n_heads % max(guess.n_kv_heads, 1):
        guess.q = guess.k = guess.v = None
        guess.missing.append("no q/k/v projections of the shapes the head count implies: no hook_q/k/v")


def _mlp(guess: Guess, block: nn.Module) -> None:
    """The MLP module and its projections; without a module, projections that are the block's
    own children (fc1 / fc2 beside the attention, as in OPT or BART's decoder)."""
    guess.mlp = _shallowest(block, MLP)
    d = guess.d_model
    if guess.mlp is None:
        linears = {n: s for n, m in block.named_children() if (s := linear_shape(m))}
    else:
        linears = {
            p: s
            for p, s in _linears(block.get_submodule(guess.mlp), guess.mlp).items()
            if p.count(".") == guess.mlp.count(".") + 1
        }
    downs = [p for p, (i, o, _) in linears.items() if o == d and i != d] or [
        p for p, (i, o, _) in linears.items() if o == d
    ]
    if guess.mlp is None and len(downs) != 1:
        guess.missing.append("no MLP module: no MLP sites")
        return
    if len(downs) != 1:
        guess.missing.append("no single MLP output projection (d_mlp -> d_model): no mlp.hook_post")
        return
    guess.mlp_down, guess.d_mlp = downs[0], linears[downs[0]][0]
    ups = [p for p, (i, o, _) in linears.items() if i == d and o == guess.d_mlp]
    gates = [p for p in ups if GATE.search(p.rsplit(".", 1)[-1])]
    rest = [p for p in ups if p not in gates]
    if len(rest) == 1 and len(gates) <= 1:
        guess.mlp_in, guess.mlp_gate = rest[0], gates[0] if gates else None
    elif not ups:
        guess.missing.append("no MLP input projection of width d_mlp: no W_in")


def _taps(guess: Guess, block: nn.Module) -> None:
    """Candidate boundaries for attn_out / mlp_out / resid_mid, most specific first:
    a norm's output before a sublayer's own output (post-norm families)."""
    guess.norms = [n for n, m in block.named_children() if is_norm(m)]
    post = [Tap(n) for n in guess.norms]
    if guess.attention:
        guess.attn_out = post + ([Tap(guess.o)] if guess.o else []) + [Tap(guess.attention)]
    if guess.mlp:
        guess.mlp_out = post + [Tap(guess.mlp)] + ([Tap(guess.mlp_down)] if guess.mlp_down else [])
        guess.resid_mid = [Tap(n, "in") for n in guess.norms] + [Tap(guess.mlp, "in")]
    elif guess.mlp_down:  # projections directly in the block: the output projection is the MLP's output
        guess.mlp_out = [*post, Tap(guess.mlp_down)]
        guess.resid_mid = [Tap(n, "in") for n in guess.norms]


def guesses(hf: PreTrainedModel) -> list[Guess]:
    """Candidates for every part of `hf` (see the module docstring), one Guess per candidate block
    list, most likely first; a model without a block list or a token embedding is refused with a
    MechscopeError."""
    base = getattr(hf, "base_model", hf)
    config = text_config(hf)
    embedding = hf.get_input_embeddings() if hasattr(hf, "get_input_embeddings") else None
    embed = _path_of(base, embedding) if isinstance(embedding, nn.Embedding) else None
    if embed is None:
        embed = next((n for n, m in base.named_modules() if isinstance(m, nn.Embedding)), None)
    if embed is None:
        raise MechscopeError(
            f"{type(hf).__name__} has no token embedding (nn.Embedding) under its base model: "
            "the automatic adapter cannot read it; record module paths instead"
        )
    candidates = find_blocks(base, _config_int(config, ("num_hidden_layers", "n_layer", "num_layers", "n_layers")))
    return [_guess(hf, base, config, embed, blocks, layers) for blocks, layers in candidates[:3]]


def _guess(hf: PreTrainedModel, base: nn.Module, config, embed: str, blocks: str, layers: nn.ModuleList) -> Guess:
    emb = cast(nn.Embedding, base.get_submodule(embed))  # `embed` is an nn.Embedding's path (guesses())
    out = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    out_weight = getattr(out, "weight", None)
    g = Guess(
        blocks=blocks,
        n_layers=len(layers),
        embed=embed,
        d_model=emb.embedding_dim,
        d_vocab=out_weight.shape[0] if out_weight is not None else emb.num_embeddings,
    )

    def inside(n):
        return n == blocks or n.startswith(blocks + ".")

    g.final_norms = [n for n, m in base.named_modules() if not inside(n) and is_norm(m)][::-1]
    g.pos_embeds = [
        n
        for n, m in base.named_modules()
        if isinstance(m, nn.Embedding) and n != embed and not inside(n) and m.embedding_dim == g.d_model
    ]
    _attention(g, layers[0], config)
    _mlp(g, layers[0])
    _taps(g, layers[0])
    return g
