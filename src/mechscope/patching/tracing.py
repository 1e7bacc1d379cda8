"""Causal tracing (Meng et al. 2022, ROME): where does a model recall what it knows about
a subject?

The subject's token embeddings (`hook_embed` at the subject positions) get Gaussian noise
of `noise` x the standard deviation of the model's embedding matrix W_E (3.0 by default;
`samples` seeded draws, averaged). Then single states of the clean run are restored into
the noised run, one (layer, position) at a time, and the probability of the clean answer
is read: `hook_resid_post` one layer at a time, `hook_attn_out` and `hook_mlp_out` over a
window of `window` layers centred on the layer (clipped at the ends), as in the paper.
The restored runs ride the batch dimension like the patching sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .. import edits as E
from ..errors import MechscopeError
from ..results import Saveable
from ..tokens import decode, require_lm_head, token_ids
from .metrics import answer_prob
from .sweep import Patch, pos_labels, run_groups
from .task import Task

KINDS = {"resid": "blocks.{l}.hook_resid_post", "attn": "blocks.{l}.hook_attn_out", "mlp": "blocks.{l}.hook_mlp_out"}


@dataclass
class TraceResult(Saveable):
    """Probability of the clean answer after restoring each (layer, position)."""

    KIND = "causal_trace"

    model_name: str
    answer: int
    answer_text: str
    clean_prob: float
    corrupt_prob: float
    """Mean over noise samples, nothing restored."""
    subject: list[int]
    """Noised (subject) positions."""
    kinds: list[str]
    """Which of resid, attn, mlp were traced (the first axis of `probs`)."""
    probs: Float[Tensor, "kind layer pos"]
    window: int
    noise: float
    samples: int
    pos_labels: list[str] = field(default_factory=list)

    def indirect_effect(self) -> Float[Tensor, "kind layer pos"]:
        """probs - corrupt_prob: how much restoring each state recovers."""
        return self.probs - self.corrupt_prob

    def plot(self):
        """One heatmap per traced kind: layer (x) by position (y), as in the ROME figures."""
        from matplotlib.figure import Figure

        n = len(self.kinds)
        fig = Figure(figsize=(3.6 * n + 0.6, 0.28 * self.probs.shape[2] + 1.6), layout="constrained")
        axes = fig.subplots(1, n, squeeze=False)[0]
        labels = [f"{t}*" if i in self.subject else t for i, t in enumerate(self.pos_labels)]
        for ax, kind, grid in zip(axes, self.kinds, self.probs):
            image = ax.imshow(
                grid.T.numpy(),
                cmap={"resid": "Purples", "attn": "Reds", "mlp": "Greens"}[kind],
                vmin=min(self.corrupt_prob, float(grid.min())),
                aspect="auto",
            )
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel("layer" if kind == "resid" else f"centre of {self.window}-layer window")
            ax.set_title(f"restore {KINDS[kind].split('.')[-1]}", fontsize=9)
            fig.colorbar(image, ax=ax, shrink=0.8, label=f"p({self.answer_text!r})")
        fig.suptitle(
            f"{self.model_name}: causal trace (clean p={self.clean_prob:.3f}, noised p={self.corrupt_prob:.3f})",
            fontsize=9,
        )
        return fig


def subject_positions(model, tokens: Tensor, subject: str | Sequence[int]) -> list[int]:
    """Token positions of `subject`: a substring of the prompt (every token that overlaps
    its first occurrence) or explicit positions."""
    n = tokens.shape[-1]
    if not isinstance(subject, str):
        out = sorted({int(p) % n if -n <= int(p) < n else int(p) for p in subject})
        if not out or any(not 0 <= p < n for p in out):
            raise MechscopeError(f"subject positions {list(subject)} must be a non-empty list within 0-{n - 1}")
        return out
    if model.tokenizer is None:
        raise MechscopeError(f"{model.name} has no tokenizer: give the subject as token positions")
    ids = tokens.tolist()
    ends = [len(model.tokenizer.decode(ids[: i + 1])) for i in range(n)]
    text = model.tokenizer.decode(ids)
    start = text.find(subject) if subject else -1
    if start < 0:
        raise MechscopeError(
            f"subject {subject!r} is not in the prompt {text!r}: give a substring of it "
            "(with its exact spaces and case) or token positions"
        )
    stop = start + len(subject)
    starts = [0] + ends[:-1]
    return [i for i in range(n) if starts[i] < stop and ends[i] > start]


def _noise(model, n: int, subject: list[int], multiplier: float, samples: int, seed: int) -> Tensor:
    std = float(model.W_E.detach().float().std())
    gen = torch.Generator().manual_seed(seed)
    noise = torch.zeros(samples, n, model.dims.d_model)
    noise[:, subject] = multiplier * std * torch.randn(samples, len(subject), model.dims.d_model, generator=gen)
    return noise


def _groups(n_layers: int, n_pos: int, kind: str, window: int) -> list[list[Patch]]:
    out = []
    for layer in range(n_layers):
        low, high = (
            (layer, layer + 1)
            if kind == "resid"
            else (max(0, layer - window // 2), min(n_layers, layer - window // 2 + window))
        )
        for pos in range(n_pos):
            out.append([Patch(KINDS[kind].format(l=lay), pos) for lay in range(max(0, low), high)])
    return out


def causal_trace(
    model,
    prompt: str | Tensor,
    subject: str | Sequence[int],
    *,
    answer: str | int | None = None,
    noise: float = 3.0,
    samples: int = 10,
    window: int = 10,
    kinds: Sequence[str] = ("resid", "attn", "mlp"),
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> TraceResult:
    """Trace one prompt. answer: the token whose probability is read (default: the clean
    run's top prediction). kinds: any of resid, attn, mlp (mlp is skipped without MLPs)."""
    require_lm_head(model, "causal tracing")
    tokens = (
        model.tokenize(prompt)["input_ids"][:1].cpu()
        if isinstance(prompt, str)
        else torch.as_tensor(prompt).reshape(1, -1)
    )
    n = tokens.shape[1]
    positions = subject_positions(model, tokens[0], subject)
    kinds = [k for k in kinds if k != "mlp" or model.dims.d_mlp]
    if not kinds or any(k not in KINDS for k in kinds):
        raise MechscopeError(f"kinds must be some of {list(KINDS)}, got {list(kinds)}")
    if samples < 1 or window < 1:
        raise MechscopeError(f"samples and window must be at least 1, got {samples} and {window}")
    sites = [KINDS[k].format(l=layer) for k in kinds for layer in range(model.dims.n_layers)]
    with torch.no_grad():
        clean = model.run(tokens, record=sites)
    answer_id = int(clean.logits[0, -1].argmax()) if answer is None else token_ids(model, answer, "answer")[0]
    task = Task(tokens.repeat(samples, 1), tokens.repeat(samples, 1), torch.full((samples,), answer_id))
    metric = answer_prob(task)
    noise_values = _noise(model, n, positions, noise, samples, seed)

    def add_noise(x: Tensor) -> Tensor:
        return x + noise_values.to(x.device, x.dtype).repeat(x.shape[0] // samples, 1, 1)

    extra = [E.replace("hook_embed", add_noise)]
    source = {s: clean.cache[s].repeat(samples, *[1] * (clean.cache[s].dim() - 1)) for s in sites}
    corrupt_prob = float(run_groups(model, task, [[]], source, task.clean, metric, extra=extra)[0])
    probs = []
    for kind in kinds:
        groups = _groups(model.dims.n_layers, n, kind, window)
        values = run_groups(model, task, groups, source, task.clean, metric, batch_size, progress, extra)
        probs.append(values.reshape(model.dims.n_layers, n))
    return TraceResult(
        model.name,
        answer_id,
        decode(model, answer_id),
        float(clean.logits[0, -1].float().softmax(-1)[answer_id]),
        corrupt_prob,
        positions,
        list(kinds),
        torch.stack(probs),
        window,
        noise,
        samples,
        [label.split(":", 1)[1] for label in pos_labels(model, tokens[0], list(range(n)))],
    )


def restore_all(
    model,
    prompt: Tensor,
    subject: Sequence[int],
    answer: int,
    *,
    noise: float = 3.0,
    samples: int = 4,
    seed: int = 0,
    sites: Sequence[str] = (),
) -> tuple[float, float]:
    """(noised probability, probability with `sites` restored at every position): a check
    that restoring enough state undoes the noise exactly."""
    tokens = torch.as_tensor(prompt).reshape(1, -1)
    n = tokens.shape[1]
    with torch.no_grad():
        clean = model.run(tokens, record=list(sites))
    task = Task(tokens.repeat(samples, 1), tokens.repeat(samples, 1), torch.full((samples,), answer))
    noise_values = _noise(model, n, list(subject), noise, samples, seed)
    extra = [
        E.replace("hook_embed", lambda x: x + noise_values.to(x.device, x.dtype).repeat(x.shape[0] // samples, 1, 1))
    ]
    source = {s: clean.cache[s].repeat(samples, *[1] * (clean.cache[s].dim() - 1)) for s in sites}
    values = run_groups(
        model, task, [[], [Patch(s) for s in sites]], source, task.clean, answer_prob(task), extra=extra
    )
    return float(values[0]), float(values[1])
