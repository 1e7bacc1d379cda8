"""What each attention head carries to the last token of in-context prompts (Todd et al.
2024): its mean output over clean k-shot prompts, and its causal indirect effect, the gain
in P(answer) when that mean is patched into prompts whose labels are shuffled.

The indirect effects of all heads ride the batch dimension of a few forwards, through
patching's batched machinery (`patching.sweep.run_groups`): copy c of the shuffled prompts
gets head c's mean written at its `hook_z` at each row's last token; copies join the
forward at their head's block."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..patching import Patch, Task, answer_prob
from ..patching.sweep import run_groups
from .prompts import Prompts


def z_site(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def last_token_z(model, prompts: Prompts) -> Float[Tensor, "batch layer head d_head"]:
    """Every head's output (`hook_z`, before the output projection) at each prompt's last token."""
    with torch.no_grad():
        run = model.run(prompts.ids, attention_mask=prompts.mask, record="blocks.*.attn.hook_z", positions=-1)
    return torch.stack([run.cache[z_site(layer)][:, 0] for layer in range(model.dims.n_layers)], 1).float().cpu()


def mean_head_outputs(model, prompts: Prompts) -> Float[Tensor, "layer head d_head"]:
    """Each head's mean `hook_z` at the last token over the (clean, k-shot) prompts."""
    return last_token_z(model, prompts).mean(0)


def _patch_task(corrupt: Prompts) -> Task:
    # run_groups reads only the base rows' mask, the answers and where the metric reads
    return Task(corrupt.ids, corrupt.ids, corrupt.answers, mask=corrupt.mask)


def indirect_effects(
    model,
    corrupt: Prompts,
    means: Float[Tensor, "layer head d_head"],
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> tuple[Float[Tensor, "layer head"], float]:
    """(indirect effect per head, P(answer) on the unpatched shuffled prompts): the mean
    P(answer) with head (l, h)'s mean output written at the last token of every shuffled
    prompt, minus the unpatched one."""
    task = _patch_task(corrupt)
    metric = answer_prob(task)
    n_layers, n_heads = means.shape[:2]
    sites = [z_site(layer) for layer in range(n_layers)]
    with torch.no_grad():
        run = model.run(corrupt.ids, attention_mask=corrupt.mask, record=sites)
        base = float(metric(run.logits))
    rows = torch.arange(len(corrupt))
    source = {}
    for layer, site in enumerate(sites):
        value = run.cache[site].clone()  # the base run everywhere but the last token
        value[rows, corrupt.last.to(value.device)] = means[layer].to(device=value.device, dtype=value.dtype)
        source[site] = value
    groups = [(Patch(sites[layer], None, head),) for layer in range(n_layers) for head in range(n_heads)]
    values = run_groups(model, task, groups, source, corrupt.ids, metric, batch_size, progress)
    return (values - base).reshape(n_layers, n_heads), base


def indirect_effects_one_by_one(
    model, corrupt: Prompts, means: Float[Tensor, "layer head d_head"]
) -> Float[Tensor, "layer head"]:
    """The same numbers with one forward per head (the baseline of the benchmark)."""
    from ..edits import replace

    task = _patch_task(corrupt)
    metric = answer_prob(task)
    n_layers, n_heads = means.shape[:2]
    with torch.no_grad():
        base = float(metric(model.run(corrupt.ids, attention_mask=corrupt.mask).logits))
        out = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            for head in range(n_heads):
                edit = replace(z_site(layer), means[layer, head], positions=-1, heads=head)  # broadcasts
                logits = model.run(corrupt.ids, attention_mask=corrupt.mask, edits=[edit]).logits
                out[layer, head] = float(metric(logits)) - base
    return out


def top_heads(effects: Float[Tensor, "layer head"], n: int) -> list[tuple[int, int]]:
    """The n heads (layer, head) with the largest indirect effect, largest first."""
    n = max(1, min(n, effects.numel()))
    flat = effects.flatten().topk(n).indices.tolist()
    return [divmod(i, effects.shape[1]) for i in flat]


def vector_from_heads(
    model, means: Float[Tensor, "layer head d_head"], heads: list[tuple[int, int]]
) -> Float[Tensor, " d_model"]:
    """Σ over the heads of their mean output in residual space (each head's share of
    `hook_attn_out`, `head_results`, without the output bias)."""
    total = torch.zeros(model.dims.d_model)
    with torch.no_grad():
        for layer, head in heads:
            per_head, _ = model.head_results(means[layer][None, None].to(model.device), layer)
            total += per_head[0, 0, head].float().cpu()
    return total
