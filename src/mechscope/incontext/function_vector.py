"""Function vectors (Todd et al., ICLR 2024): the task a prompt carries, as one vector.

`function_vector(model, task)` fits: mean head outputs at the last token of clean k-shot
prompts, each head's causal indirect effect on shuffled-label prompts, the top heads, and
FV = Σ of their mean outputs in residual space; then it searches the layer where adding FV
at the last token of zero-shot prompts does the task best (on the fitting pairs) and
measures, on held-out pairs, zero-shot accuracy with the FV against without it and against
k-shot prompting. It returns a `FunctionVectorResult`; the applied artifact is the
`FunctionVector` it holds (`result.vector_artifact()`), which adds itself as an edit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from .. import edits as E
from ..errors import MechscopeError
from ..results import Saveable
from .heads import indirect_effects, mean_head_outputs, top_heads, vector_from_heads
from .prompts import Prompts, accuracy, icl_prompts, zero_shot_prompts
from .tasks import Task, get_task

log = logging.getLogger(__name__)


def resid_site(layer: int) -> str:
    """Where a function vector is added: the residual stream entering block `layer`."""
    return f"blocks.{layer}.hook_resid_pre"


@dataclass(frozen=True)
class FunctionVector(Saveable):
    """A task as one residual-stream vector, added at the last token before block `layer`.

    fv = FunctionVector.load("fv/successor")
    with model.edit(fv.edit()):
        model.run("n7 ->").top_tokens()
    """

    KIND: ClassVar[str] = "function_vector"
    vector: Float[Tensor, " d_model"]
    layer: int
    task: str
    model: str
    heads: list

    def edit(self, scale: float = 1.0, positions: int = -1) -> E.Edit:
        return E.add(resid_site(self.layer), scale * self.vector, positions=positions)


@dataclass(frozen=True)
class FunctionVectorResult(Saveable):
    """What `function_vector` measured. Accuracies are greedy top-1 on held-out pairs."""

    KIND: ClassVar[str] = "function_vector_result"
    model: str
    task: str
    shots: int
    heads: list
    """Chosen heads [layer, head], largest indirect effect first."""
    layer: int
    """Insertion layer (resid_pre of this block), chosen on the fitting pairs."""
    effects: Float[Tensor, "layer head"]
    """Causal indirect effect per head (gain in P(answer) on shuffled-label prompts)."""
    means: Float[Tensor, "layer head d_head"]
    vector: Float[Tensor, " d_model"]
    accuracy_by_layer: Float[Tensor, " layer"]
    """Zero-shot accuracy with the FV added before each block (fitting pairs)."""
    icl_accuracy: float
    zero_shot_accuracy: float
    fv_accuracy: float
    shuffled_prob: float
    """P(answer) on the unpatched shuffled-label prompts (the effects' baseline)."""
    icl_tokens: float
    zero_shot_tokens: float

    def vector_artifact(self) -> FunctionVector:
        return FunctionVector(self.vector, self.layer, self.task, self.model, self.heads)

    @property
    def tokens_saved(self) -> float:
        """Prompt compression: tokens of the k-shot prompt the vector replaces."""
        return self.icl_tokens - self.zero_shot_tokens

    @property
    def accuracy_kept(self) -> float:
        """FV zero-shot accuracy as % of k-shot accuracy."""
        return 100.0 * self.fv_accuracy / self.icl_accuracy if self.icl_accuracy else float("nan")

    def summary(self) -> dict:
        return {
            "task": self.task,
            "model": self.model,
            "shots": self.shots,
            "heads": self.heads,
            "layer": self.layer,
            "icl_accuracy": self.icl_accuracy,
            "zero_shot_accuracy": self.zero_shot_accuracy,
            "fv_accuracy": self.fv_accuracy,
            "icl_tokens": self.icl_tokens,
            "zero_shot_tokens": self.zero_shot_tokens,
            "tokens_saved": self.tokens_saved,
            "accuracy_kept_pct": self.accuracy_kept,
            "accuracy_by_layer": self.accuracy_by_layer.tolist(),
        }

    def plot(self):
        from .figures import fv_figure

        return fv_figure(self)


def fv_accuracy(model, vector: Tensor, layer: int, prompts: Prompts) -> float:
    return accuracy(model, prompts, [E.add(resid_site(layer), vector, positions=-1)])


def _check(model, n_heads: int, shots: int) -> None:
    if getattr(model, "tokenizer", None) is None or getattr(model, "dims", None) is None:
        raise MechscopeError(f"{model.name}: function vectors need a transformer with a tokenizer")
    if n_heads < 1 or shots < 1:
        raise MechscopeError(f"need at least one head and one demonstration (got heads={n_heads}, shots={shots})")


def function_vector(
    model,
    task: Task | str,
    *,
    n_heads: int = 10,
    shots: int = 5,
    n_prompts: int = 100,
    layer: int | None = None,
    heads: list[tuple[int, int]] | None = None,
    heldout: float = 0.5,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> FunctionVectorResult:
    """Fit a function vector for `task` on `model` (see the module docstring).

    n_heads: top heads summed (ignored when `heads` is given). layer: insertion layer
    (default: searched). heldout: share of pairs kept out of fitting for the accuracies.
    """
    task = get_task(task)
    _check(model, n_heads, shots)
    fit, test = task.split(1 - heldout, seed)
    clean = icl_prompts(model, fit, shots=shots, n=n_prompts, seed=seed)
    shuffled = icl_prompts(model, fit, shots=shots, n=n_prompts, seed=seed, shuffle_labels=True)
    means = mean_head_outputs(model, clean)
    effects, base = indirect_effects(model, shuffled, means, batch_size=batch_size, progress=progress)
    chosen = [(int(h[0]), int(h[1])) for h in heads] if heads is not None else top_heads(effects, n_heads)
    vector = vector_from_heads(model, means, chosen)
    zero_fit = zero_shot_prompts(model, fit)
    by_layer = torch.tensor([fv_accuracy(model, vector, lay, zero_fit) for lay in range(model.dims.n_layers)])
    if layer is None:
        layer = int(by_layer.argmax())  # the earliest of the best
    elif not 0 <= layer < model.dims.n_layers:
        raise MechscopeError(f"layer {layer} is out of range: {model.name} has {model.dims.n_layers} layers")
    icl_test = icl_prompts(model, fit, shots=shots, n=n_prompts, seed=seed + 1, queries=test)
    zero_test = zero_shot_prompts(model, test)
    result = FunctionVectorResult(
        model.name,
        task.name,
        shots,
        [list(h) for h in chosen],
        layer,
        effects,
        means,
        vector,
        by_layer,
        accuracy(model, icl_test),
        accuracy(model, zero_test),
        fv_accuracy(model, vector, layer, zero_test),
        base,
        icl_test.n_tokens,
        zero_test.n_tokens,
    )
    log.info("%s: FV zero-shot %.3f (without %.3f, %d-shot %.3f)", task.name, result.fv_accuracy,
             result.zero_shot_accuracy, shots, result.icl_accuracy)  # fmt: skip
    return result


def screen(model, task: Task | str, *, shots: int = 5, n_prompts: int = 100, threshold: float = 0.2, seed: int = 0):
    """(keep?, k-shot accuracy, zero-shot accuracy): a task is worth a function vector when
    prompting with demonstrations beats the bare query by more than `threshold`."""
    task = get_task(task)
    icl = accuracy(model, icl_prompts(model, task, shots=shots, n=n_prompts, seed=seed))
    zero = accuracy(model, zero_shot_prompts(model, task))
    return icl - zero > threshold, icl, zero
