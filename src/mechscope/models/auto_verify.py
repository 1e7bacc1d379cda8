"""The automatic adapter's last gate: each transformer site kind is checked through
`Model.run` itself against Hugging Face's outputs before it is offered.

`verify(model, probe)` returns the site kinds and weight groups that passed and, for the
rest, why not. Only what passed keeps its TransformerLens name (`auto_model.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import edits
from ..errors import MechscopeError
from .adapter import Tap
from .auto_check import Choice, _name, close, exact_sum

RESID = ("hook_resid_pre", "hook_resid_post")


@dataclass
class Probe:
    """Token ids and what Hugging Face's own forward made of them."""

    ids: Tensor
    logits: Tensor
    hidden: tuple[Tensor, ...]
    choice: Choice


@dataclass
class Verdict:
    kinds: set[str] = field(default_factory=set)
    """Site kinds ('hook_resid_post', 'attn.hook_z', ...) that reproduce Hugging Face."""
    weights: set[str] = field(default_factory=set)
    """Weight groups ('qkv', 'o', 'mlp_in', 'mlp_out', 'unembed') that reproduce the sites."""
    why_not: list[str] = field(default_factory=list)
    read_only: dict[str, str] = field(default_factory=dict)
    """Verified kinds that may be recorded but not edited, with why."""

    def attempt(self, what: str, check) -> bool:
        """Run one check; an exception or False means `what` is not offered."""
        try:
            ok = bool(check())
        except Exception as err:  # noqa: BLE001 - any failure of a guess means "not verified"
            self.why_not.append(
                f"{what}: check failed ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
            )
            return False
        if not ok:
            self.why_not.append(f"{what}: does not reproduce Hugging Face's values")
        return ok


def verify(model, probe: Probe) -> Verdict:
    v, L = Verdict(), model.dims.n_layers
    c: dict[str, Tensor] = {}
    hidden = probe.hidden

    def recorded(*kinds: str) -> bool:
        """Record these kinds (those the table has) into `c`; the logits must not move."""
        names = [s.name for s in model.sites if site_kind(s.name) in kinds]
        run = model.run(probe.ids, record=names) if names else None
        c.update(run.cache if run else {})
        return run is None or torch.equal(run.logits, probe.logits)

    if not v.attempt(
        "hook_resid_pre / hook_resid_post (recording changes no logit)",
        lambda: (
            recorded(*RESID, "hook_embed", "hook_pos_embed", "ln_final.hook_normalized") and _resid(model, c, hidden)
        ),
    ):
        return v
    v.kinds |= {*RESID, "logits"}
    if model.adapter.final_norm and v.attempt(
        "ln_final.hook_normalized", lambda: close(c["ln_final.hook_normalized"], hidden[L])
    ):
        v.kinds.add("ln_final.hook_normalized")
    if v.attempt("hook_embed", lambda: _embed(model, c, probe)):
        v.kinds.add("hook_embed")
    if "hook_pos_embed" in c and v.attempt(
        "hook_pos_embed", lambda: exact_sum(hidden[0], c["hook_embed"], c["hook_pos_embed"])
    ):
        v.kinds.add("hook_pos_embed")
    if v.attempt(
        "hook_attn_out / hook_mlp_out / hook_resid_mid (recording)",
        lambda: recorded("hook_attn_out", "hook_mlp_out", "hook_resid_mid"),
    ):
        _sublayers(model, v, c, probe.ids)
    if "hook_attn_out" in v.kinds and v.attempt("attn.hook_z (recording)", lambda: recorded("attn.hook_z")):
        _heads(model, v, c)
    if "attn.hook_z" in v.kinds:
        if v.attempt("attn.hook_q / k / v (recording)", lambda: recorded("attn.hook_q", "attn.hook_k", "attn.hook_v")):
            _qkv(model, v, c, probe)
        if v.attempt("attn.hook_pattern", lambda: _patterns(model, probe.ids)):
            v.kinds.add("attn.hook_pattern")
    if "hook_mlp_out" in v.kinds and v.attempt("mlp.hook_post (recording)", lambda: recorded("mlp.hook_post")):
        _mlp(model, v, c, probe.choice)
    last = f"blocks.{L - 1}.hook_resid_post"
    if v.attempt("to_logits (final norm + unembedding)", lambda: close(model.to_logits(c[last]), probe.logits)):
        v.weights.add("unembed")
    return v


def site_kind(name: str) -> str:
    return name.split(".", 2)[2] if name.startswith("blocks.") else name


def _resid(model, c, hidden) -> bool:
    L = model.dims.n_layers
    ok = all(torch.equal(c[f"blocks.{i}.hook_resid_pre"], hidden[i]) for i in range(L))
    ok = ok and all(torch.equal(c[f"blocks.{i}.hook_resid_post"], hidden[i + 1]) for i in range(L - 1))
    last = c[f"blocks.{L - 1}.hook_resid_post"]
    return ok and (
        close(model.final_norm(last), hidden[L]) if model.adapter.final_norm else torch.equal(last, hidden[L])
    )


def _embed(model, c, probe: Probe) -> bool:
    emb = c["hook_embed"]
    plain = model.W_E[probe.ids]
    return close(emb, plain) or close(emb + c.get("hook_pos_embed", 0), probe.hidden[0])


def _layers(model, c, kind: str) -> list[Tensor]:
    return [c[f"blocks.{i}.{kind}"] for i in range(model.dims.n_layers)]


def _edit_reaches_residual(model, c, ids: Tensor) -> bool:
    """Adding u at hook_resid_mid of block 0 moves its hook_resid_post by u (plus the MLP's change)."""
    if not model.table["blocks.0.hook_resid_mid"].view.editable:  # read at the MLP norm's input (see sites.py)
        return False
    u = torch.randn(model.dims.d_model, generator=torch.Generator().manual_seed(2)).to(c["blocks.0.hook_resid_mid"])
    run = model.run(
        ids,
        record=["blocks.0.hook_resid_post", "blocks.0.hook_mlp_out"],
        logits=False,
        edits=[edits.add("blocks.0.hook_resid_mid", u)],
    )
    mid = c["blocks.0.hook_resid_mid"]
    return close(run.cache["blocks.0.hook_resid_post"], mid + u + run.cache["blocks.0.hook_mlp_out"])


def _sublayers(model, v: Verdict, c, ids: Tensor) -> None:
    if "blocks.0.hook_attn_out" not in c:
        return
    pre, post, attn = (
        _layers(model, c, "hook_resid_pre"),
        _layers(model, c, "hook_resid_post"),
        _layers(model, c, "hook_attn_out"),
    )
    mlp = _layers(model, c, "hook_mlp_out") if model.adapter.mlp_out.module else [0] * len(pre)
    if not v.attempt(
        "hook_attn_out / hook_mlp_out", lambda: all(exact_sum(q, p, a, m) for p, a, m, q in zip(pre, attn, mlp, post))
    ):
        return
    v.kinds |= {"hook_attn_out", *(["hook_mlp_out"] if model.adapter.mlp_out.module else [])}
    if "blocks.0.hook_resid_mid" in c and v.attempt(
        "hook_resid_mid",
        lambda: all(exact_sum(m, p, a) for p, a, m in zip(pre, attn, _layers(model, c, "hook_resid_mid"))),
    ):
        v.kinds.add("hook_resid_mid")
        if any(site_kind(s.name) == "hook_mlp_in" for s in model.sites):  # the same tensor, editable: the MLP reads it
            v.kinds.add("hook_mlp_in")
        if not _edit_reaches_residual(model, c, ids):
            v.read_only["hook_resid_mid"] = (
                "read where the MLP's norm takes it, after the block has kept its own copy "
                "for the skip connection: an edit would reach the MLP but not the residual stream"
            )


def _heads(model, v: Verdict, c) -> None:
    """hook_z through W_O: the head results (plus bias) sum to hook_attn_out in every layer."""

    def heads_sum() -> bool:
        for i in range(model.dims.n_layers):
            per_head, bias = model.head_results(
                c[f"blocks.{i}.attn.hook_z"].float(), i
            )  # float32: no rounding per head
            if not close(per_head.sum(-2) + bias, c[f"blocks.{i}.hook_attn_out"], 1e-4):
                return False
        return True

    if "blocks.0.attn.hook_z" in c and v.attempt("attn.hook_z (head results summing to hook_attn_out)", heads_sum):
        v.kinds.add("attn.hook_z")
        v.weights.add("o")


def _qkv(model, v: Verdict, c, probe: Probe) -> None:
    if "blocks.0.attn.hook_q" not in c:
        return
    parts = [
        p
        for p in ("q", "k", "v")
        if v.attempt(f"attn.hook_{p} (per-head isolation)", lambda p=p: _isolated(model, c, probe.ids, p))
    ]
    v.kinds |= {f"attn.hook_{p}" for p in parts}
    if len(parts) == 3 and v.attempt("W_Q / W_K / W_V", lambda: _qkv_weights(model, c, probe.choice)):
        v.weights.add("qkv")


def _isolated(model, c, ids: Tensor, part: str) -> bool:
    """Zeroing one head (key/value head) of hook_{part} in block 0 changes exactly the query
    heads that read it, at the positions after the first (that one attends to itself only)."""
    d = model.dims
    n = d.n_heads if part == "q" else d.n_kv_heads
    group = d.n_heads // n
    j = n - 1
    run = model.run(
        ids, record="blocks.0.attn.hook_z", logits=False, edits=[edits.zero(f"blocks.0.attn.hook_{part}", heads=j)]
    )
    z, before = run.cache["blocks.0.attn.hook_z"], c["blocks.0.attn.hook_z"]
    mine = list(range(j * group, (j + 1) * group))
    others = [h for h in range(d.n_heads) if h not in mine]
    return torch.equal(z[:, :, others], before[:, :, others]) and not torch.equal(z[:, 1:, mine], before[:, 1:, mine])


def _qkv_weights(model, c, choice: Choice) -> bool:
    """hook_q/k/v == (what the projection reads) @ W + b, in every layer."""
    for i in range(model.dims.n_layers):
        x = choice.recorded.get(_name(i, Tap(model.adapter.q, "in")))
        if x is None:
            raise MechscopeError(f"the input of {model.adapter.q} was not recorded")
        for part, w, b in (
            ("q", model.W_Q(i), model.b_Q(i)),
            ("k", model.W_K(i), model.b_K(i)),
            ("v", model.W_V(i), model.b_V(i)),
        ):
            if not close(
                torch.einsum("bpm,hmd->bphd", x.float(), w.float()) + b.float(), c[f"blocks.{i}.attn.hook_{part}"], 1e-4
            ):
                return False
    return True


def _patterns(model, ids: Tensor) -> bool:
    run = model.run(ids, record="blocks.*.attn.hook_pattern", logits=False)
    config = model.hf.config
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            eager = model.hf(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        config._attn_implementation = before
    return len(eager) == model.dims.n_layers and all(
        close(run.cache[f"blocks.{i}.attn.hook_pattern"], att) for i, att in enumerate(eager)
    )


def _mlp(model, v: Verdict, c, choice: Choice) -> None:
    if "blocks.0.mlp.hook_post" not in c:
        return

    def post_to_out() -> bool:
        """hook_post @ W_out + b_out is what the MLP module returns, in every layer."""
        for i in range(model.dims.n_layers):
            b = model.b_out(i)
            out = choice.recorded.get(_name(i, Tap(choice.mlp or "")))
            if not close(c[f"blocks.{i}.mlp.hook_post"] @ model.W_out(i) + (0 if b is None else b), out, 1e-4):
                return False
        return True

    if v.attempt("mlp.hook_post (through W_out to the MLP's output)", post_to_out):
        v.kinds.add("mlp.hook_post")
        v.weights.add("mlp_out")
    if v.attempt("W_in / W_gate", lambda: _linear_in(model, choice)):
        v.weights.add("mlp_in")


def _linear_in(model, choice: Choice) -> bool:
    """The MLP's input projections map what they read to what they return."""
    a = model.adapter
    if not a.mlp_in:
        return False
    for i in range(model.dims.n_layers):
        for path, w, b in ((a.mlp_in, model.W_in(i), model.b_in(i)), (a.mlp_gate, model.W_gate(i), None)):
            if path is None:
                continue
            x, y = (choice.recorded.get(_name(i, Tap(path, side))) for side in ("in", "out"))
            if b is None and path == a.mlp_gate:
                b = model.block_module(i, path).bias
            if not close(x @ w + (0 if b is None else b), y, 1e-4):
                return False
    return True
