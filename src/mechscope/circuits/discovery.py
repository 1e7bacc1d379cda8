"""Circuit discovery on a `Task`: ACDC (Conmy et al. 2023), EAP (Syed et al. 2023) and
EAP-IG (Hanna et al. 2024).

- `eap`: score(s -> r) = (ablated_s - clean_s) . d metric / d input_r, for every edge at
  once from a clean and a corrupted forward and one backward pass (batched over prompts).
  Scores approximate the change in the metric when that one edge is removed.
- `eap_ig`: the same, with the gradient averaged over `steps` runs whose embeddings are
  interpolated from the corrupted (alpha -> 0) to the clean ones (alpha = k / steps,
  k = 1..steps; steps=1 is EAP).
- `acdc`: start from the full graph; visit receivers from logits back to the embeddings
  and try to remove each incoming edge (ablating it); keep it removed when the metric
  changes by less than `threshold` (KL to the clean run by default: KL increase; a task
  metric: |change|). A receiver whose node feeds nothing any more loses its inputs
  without a forward pass (they cannot change the output).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..errors import MechscopeError
from ..patching.metrics import Metric, answer_logit, as_metric, by_name, kl_to_clean, logit_diff
from ..patching.sweep import read_positions
from .circuit import Circuit
from .edges import EdgePatcher
from .graph import Graph

log = logging.getLogger(__name__)
METHODS = ("acdc", "eap", "eap-ig")


def resolve_metric(metric, task, clean_logits, default: str = "task") -> Metric:
    """A Metric from None (default: `task` = logit_diff, or answer_logit without foils;
    `kl` = KL to the clean run), a name, or a callable of the logits."""
    if metric is None:
        if default == "kl":
            return kl_to_clean(clean_logits, task)
        return logit_diff(task) if task.wrong is not None else answer_logit(task)
    if isinstance(metric, str):
        return by_name("kl_to_clean" if metric == "kl" else metric, task, clean_logits)
    return as_metric(metric)


def _setup(model, task, graph, ablation):
    if task.clean.shape[1] < 1:
        raise MechscopeError("the task has no tokens")
    patcher = EdgePatcher(model, graph)
    clean, ablated = patcher.ablated_values(task, ablation)
    return patcher, clean, ablated


def _edge_scores(graph: Graph, matrix: torch.Tensor) -> torch.Tensor:
    s, r = graph.edge_index
    return matrix[s, r]


def _receiver_grads(patcher: EdgePatcher, task, metric: Metric, ablated, embed=None) -> list[torch.Tensor]:
    """d metric / d input of every receiver group (one tensor per graph group)."""
    model, g = patcher.model, patcher.graph
    b, p, d = task.clean.shape[0], task.clean.shape[1], model.dims.d_model
    dtype = next(model.hf.parameters()).dtype
    deltas = {
        i: torch.zeros(b, p, n, d, dtype=dtype, device=model.device, requires_grad=True)
        for i, (_, _, _, n, _) in enumerate(g.groups())
    }
    logits = patcher.run(
        task.clean,
        ablated,
        None,
        mask=task.mask,
        deltas=deltas,
        embed=embed,
        grad=True,
        logit_positions=_read_positions(model, task, metric),
    )
    value = metric(logits)
    grads = torch.autograd.grad(value, list(deltas.values()), allow_unused=True)
    return [torch.zeros_like(deltas[i]) if gr is None else gr for i, gr in enumerate(grads)]


def _read_positions(model, task, metric: Metric) -> torch.Tensor | None:
    """The positions the metric reads (`patching.sweep.read_positions`) when the model
    unembeds: the unembedding then runs there only ([batch, vocab], not [batch, pos, vocab])."""
    return read_positions(metric, task) if model.has_lm_head else None


def _scores_from_grads(graph: Graph, diff: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """[sender, receiver] matrix of (ablated_s - clean_s) . grad_r summed over batch and positions:
    one matrix product per receiver group, senders and receivers flattened to rows."""
    matrix = torch.zeros(graph.allowed.shape)
    p = grads[0].shape[1]  # every group's deltas are [b, p, n, d]
    senders = diff[:, :p].float().permute(2, 0, 1, 3).reshape(diff.shape[2], -1)  # [sender, batch pos d]
    for (_, _, start, n, before), grad in zip(graph.groups(), grads):
        receivers = grad.float().permute(2, 0, 1, 3).reshape(n, -1)  # [receiver, batch pos d]
        matrix[:before, start : start + n] = (senders[:before] @ receivers.T).cpu()
    return matrix


def eap(model, task, metric=None, *, ablation: str = "corrupt", graph: Graph | None = None) -> Circuit:
    """Edge attribution patching: a score for every edge (see the module docstring)."""
    return eap_ig(model, task, metric, steps=1, ablation=ablation, graph=graph, _method="eap")


def eap_ig(
    model,
    task,
    metric=None,
    *,
    steps: int = 5,
    ablation: str = "corrupt",
    graph: Graph | None = None,
    _method: str = "eap-ig",
) -> Circuit:
    """EAP with integrated gradients over `steps` interpolations of the input embeddings."""
    if steps < 1:
        raise MechscopeError(f"steps must be at least 1, got {steps}")
    patcher, clean, ablated = _setup(model, task, graph, ablation)
    clean_logits = None
    if isinstance(metric, str) and metric in ("kl", "kl_to_clean"):  # only KL needs the clean logits
        with torch.no_grad():
            clean_logits = model.run(task.clean, attention_mask=task.mask).logits
    m = resolve_metric(metric, task, clean_logits)
    total: list[torch.Tensor] | None = None
    base = ablated[:, :, 0]
    for k in range(1, steps + 1):
        alpha = k / steps
        embed = (
            None
            if steps == 1
            else (lambda x, a=alpha: base[:, : x.shape[1]].to(x) + a * (x - base[:, : x.shape[1]].to(x)))
        )
        grads = _receiver_grads(patcher, task, m, ablated, embed)
        total = grads if total is None else [t + gr for t, gr in zip(total, grads)]
    assert total is not None  # steps >= 1 (checked above)
    grads = [t / steps for t in total]
    matrix = _scores_from_grads(patcher.graph, ablated - clean, grads)
    g = patcher.graph
    info = {"ablation": ablation, **({"steps": steps} if _method == "eap-ig" else {})}
    return Circuit(g, g.edges, _edge_scores(g, matrix), _method, m.name, model.name, info)


def _alive(graph: Graph, removed: torch.Tensor, kind: str, layer: int, receiver: int, start: int) -> bool:
    """Whether the node that a receiver feeds still has an outgoing edge in the circuit."""
    if kind == "logits":
        return True
    heads: Sequence[int | None]
    if kind == "mlp":
        heads = [None]
    elif kind == "q":
        heads = [receiver - start]
    else:
        size = graph.n_heads // graph.n_kv_heads
        group = receiver - start
        heads = range(group * size, (group + 1) * size)
    senders = [graph.sender_index(layer, h) for h in heads]
    return bool((graph.allowed[senders] & ~removed[senders]).any())


def acdc(
    model,
    task,
    metric=None,
    *,
    threshold: float = 0.01,
    ablation: str = "corrupt",
    graph: Graph | None = None,
    progress: bool = True,
) -> Circuit:
    """ACDC: greedy edge pruning from the logits back (see the module docstring)."""
    if not isinstance(threshold, (int, float)) or threshold != threshold:
        raise MechscopeError(
            f"threshold must be a number (an edge stays removed when the metric changes by less), got {threshold!r}"
        )
    patcher, _, ablated = _setup(model, task, graph, ablation)
    g = patcher.graph
    with torch.no_grad():
        clean_logits = model.run(task.clean, attention_mask=task.mask).logits
        m = resolve_metric(metric, task, clean_logits, default="kl")
        kl = metric is None or m.name == "kl_to_clean"
        removed = torch.zeros_like(g.allowed)
        scores = torch.zeros(g.allowed.shape)
        read = _read_positions(model, task, m)
        current = float(m(patcher.run(task.clean, ablated, removed, mask=task.mask, logit_positions=read)))
        bar = tqdm(total=len(g.edges), desc="acdc", unit="edge", disable=not progress)
        for kind, layer, start, n, before in reversed(g.groups()):
            for r in reversed(range(start, start + n)):
                if not _alive(g, removed, kind, layer, r, start):
                    removed[:before, r] = True
                    bar.update(before)
                    continue
                for s in reversed(range(before)):
                    removed[s, r] = True
                    value = float(m(patcher.run(task.clean, ablated, removed, mask=task.mask, logit_positions=read)))
                    change = value - current if kl else abs(value - current)
                    scores[s, r] = change
                    if change < threshold:
                        current = value
                    else:
                        removed[s, r] = False
                    bar.update(1)
        bar.close()
    kept = g.allowed & ~removed
    edges = [e for e, k in zip(g.edges, _edge_scores(g, kept).tolist()) if k]
    log.info("acdc kept %d of %d edges (threshold %g)", len(edges), len(g.edges), threshold)
    return Circuit(
        g,
        edges,
        _edge_scores(g, scores)[_edge_scores(g, kept)],
        "acdc",
        m.name,
        model.name,
        {"threshold": threshold, "ablation": ablation, "final_metric": current},
    )


def discover(model, task, method: str = "eap", **kwargs) -> Circuit:
    """Run one of METHODS by name."""
    if method not in METHODS:
        raise MechscopeError(f"unknown circuit method {method!r}: choose one of {list(METHODS)}")
    return {"acdc": acdc, "eap": eap, "eap-ig": eap_ig}[method](model, task, **kwargs)
