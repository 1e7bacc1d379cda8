"""Mixture-of-experts decoder families: one `Adapter` table each (see `adapter.py`).

Hugging Face keeps every expert of a layer in one module (3-d weights, a loop over the
experts inside one forward), so there is no module boundary per expert: the MLP sites
are the whole MoE block's output (`hook_mlp_out`), the router logits
(`mlp.hook_router_logits`, [batch, pos, expert]) and the routing weights each expert's output
gets (`mlp.hook_expert_weights`, editable: scaling an expert's weight to 0 removes its output
exactly); there is no `mlp.hook_post`.
"""

from __future__ import annotations

from typing import Any

from .adapter import Adapter, Requirement
from .families_decoders import LLAMA_PATHS, QK_NORM_NOTE, ROTARY_NOTE

MOE_PATHS: dict[str, Any] = {**LLAMA_PATHS, "mlp_in": "mlp.experts", "mlp_gate": None, "mlp_down": None}
NO_NEURONS = (
    (
        "mlp.hook_post",
        "its experts' neurons live inside one fused experts module (3-d weights, "
        "a loop over experts in one forward), so there is no single neuron tensor to read; record "
        "hook_mlp_out (the MoE block's output) or mlp.hook_router_logits",
    ),
)
MOE_NOTES = (
    "mixture of experts: hook_mlp_out is the MoE block's output (the routing-weighted sum of the chosen "
    "experts); mlp.hook_router_logits [batch, pos, expert] is the router's output before softmax and top-k "
    "(read-only: the router has already chosen its experts from it)",
    "mlp.hook_expert_weights [batch, pos, expert] is the weight of each expert's output in the block's sum "
    "(0 where not chosen); editable: edits.scale(site, mask) with mask[e] = 0 removes expert e's output "
    "exactly; weights written for unchosen experts are ignored (an edit cannot reroute a token)",
    "no mlp.hook_post and no W_in / W_out: per-expert activations are not exposed by Hugging Face's fused "
    "experts module; d_mlp is one expert's width",
    "float64 on the CPU: Hugging Face's default grouped_mm experts take no float64; switch them with "
    "model.hf.set_experts_implementation('eager')",
)

MIXTRAL = Adapter(
    family="Mixtral",
    model_types=("mixtral",),
    **MOE_PATHS,
    moe_router="mlp.gate",
    experts_attr="num_local_experts",
    d_mlp_attr="intermediate_size",
    unavailable=NO_NEURONS,
    notes=(ROTARY_NOTE, "grouped-query attention", *MOE_NOTES),
)

QWEN3_MOE = Adapter(
    family="Qwen3 MoE",
    model_types=("qwen3_moe",),
    **MOE_PATHS,
    moe_router="mlp.gate",
    experts_attr="num_experts",
    d_mlp_attr="moe_intermediate_size",
    unavailable=NO_NEURONS,
    requires=(
        Requirement("mlp_only_layers", "layers with a dense MLP among MoE layers have no table yet", value=[]),
        Requirement("decoder_sparse_step", "MoE on only every n-th layer has no table yet", value=1),
    ),
    notes=(QK_NORM_NOTE + " (q_norm / k_norm act per head)", *MOE_NOTES),
)

MOE: tuple[Adapter, ...] = (MIXTRAL, QWEN3_MOE)
