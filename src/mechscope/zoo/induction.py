"""`zoo:induction`: a 2-layer attention-only transformer that forms induction heads.

Trained on sequences of random tokens in which one random span occurs twice, the model
learns the two-head circuit of Olsson et al. 2022: a previous-token head in layer 0
writes "the token before me" into each position, and an induction head in layer 1 uses
it (K-composition) to attend from a token to the token right after its earlier
occurrence and copy it. The loss on the second copy of a repeated span then falls far
below the loss on the first; the training step where that happens (the "induction
bump") is recorded in the card.

``train(out_dir)`` is deterministic (same recipe: same weights, bit for bit, on the same
machine and torch build) and writes a Hugging Face folder (``ToyTransformer``) with
``card.json`` and ``CARD.md``; ``plots(folder, out_dir)`` draws the figures.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor
from tqdm.auto import tqdm

from ..data import repeated_random_tokens
from ..folders import replace_folder, staging_folder
from ..io import write_figure
from . import ANALYSES
from .transformer import ToyConfig, ToyTransformer

logger = logging.getLogger(__name__)
BOS = 0
"""Token 0 begins every sequence and is never drawn as a random token."""
EVAL_SEED = 12345
"""Seed of the fixed repeated sequences used for every evaluation (not a recipe field)."""


@dataclass(frozen=True)
class InductionRecipe:
    """Everything that determines the trained `zoo:induction` weights."""

    seed: int = 0
    """Seeds the weight init and every training batch."""
    vocab_size: int = 64
    """Token ids 0..vocab_size-1; 0 is the beginning-of-sequence token."""
    context: int = 64
    """Sequence length in training (BOS included) and the size of the position embedding."""
    d_model: int = 64
    """Width of the residual stream."""
    n_layers: int = 2
    """Attention-only blocks (no MLPs)."""
    norm: str = "none"
    """``layernorm`` (pre-LN before each attention layer and the unembedding) or ``none``."""
    n_heads: int = 4
    """Heads per layer."""
    d_head: int = 16
    """Width of each head's queries, keys and values."""
    alternation_prob: float = 0.25
    """Probability that a background token repeats the token two back (never chained, so
    only the token two back predicts it). This makes a previous-token head useful on its
    own, as natural text does, which starts the circuit; with purely random backgrounds
    training sits on a long plateau or finds positional shortcuts, and with chained
    repeats (``a b a b a``) layer 0 also grows a 3-back head and layer 1 an induction
    variant that attends one token later than the standard one."""
    min_span: int = 4
    """Shortest repeated span in a training sequence."""
    max_span: int = 24
    """Longest repeated span; at most (context - 1) // 2."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    steps: int = 6000
    """Optimizer steps."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warmup, then constant)."""
    warmup_steps: int = 100
    """Steps of linear learning-rate warmup from 0."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices."""
    eval_every: int = 25
    """Measure copy losses and head scores every this many steps (for the training curve)."""
    eval_span: int = 24
    """Span length of the fixed repeated evaluation sequences [BOS, r, r]."""
    eval_batch: int = 32
    """Number of evaluation sequences."""


def build_model(recipe: InductionRecipe) -> ToyTransformer:
    """A freshly initialised model; the init is seeded without touching the global RNG."""
    config = ToyConfig(
        vocab_size=recipe.vocab_size,
        n_ctx=recipe.context,
        d_model=recipe.d_model,
        n_layers=recipe.n_layers,
        n_heads=recipe.n_heads,
        d_head=recipe.d_head,
        d_mlp=0,
        norm=recipe.norm,
        positions="learned",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return ToyTransformer(config)


def batch_for_step(step: int, recipe: InductionRecipe) -> Tensor:
    """Training batch [batch, context] (a function of the step): BOS, then a background
    of random tokens 1..V-1 in which a token repeats the token two back (``a b a``) with
    probability ``alternation_prob`` unless that one was itself a repeat; then a span of
    random length is copied to a later random place, so that it occurs twice."""
    gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    b, ctx = recipe.batch_size, recipe.context
    tokens = torch.randint(1, recipe.vocab_size, (b, ctx), generator=gen)
    tokens[:, 0] = BOS
    follow = torch.rand(b, ctx, generator=gen) < recipe.alternation_prob
    follow[:, :3] = False
    for t in range(3, ctx):
        follow[:, t] &= ~follow[:, t - 2]  # never chained: only the token two back predicts
        tokens[:, t] = torch.where(follow[:, t], tokens[:, t - 2], tokens[:, t])
    spans = torch.randint(recipe.min_span, recipe.max_span + 1, (b,), generator=gen)
    for row, n in enumerate(spans.tolist()):
        gap = int(torch.randint(0, ctx - 1 - 2 * n + 1, (1,), generator=gen))  # free positions
        first = 1 + int(torch.randint(0, gap + 1, (1,), generator=gen))
        second = first + n + int(torch.randint(0, gap - (first - 1) + 1, (1,), generator=gen))
        tokens[row, second : second + n] = tokens[row, first : first + n]
    return tokens


def position_losses(model: ToyTransformer, tokens: Tensor) -> Tensor:
    """Next-token loss at every position [pos - 1] (entry p scores token p + 1), batch mean."""
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none").mean(0)


def copy_losses(model: ToyTransformer, tokens: Tensor, span: int) -> tuple[float, float]:
    """Mean loss on the first and on the second copy of ``[BOS, r, r]`` (span ``span``).

    The first token of each copy is not scored (nothing in context predicts it), so each
    number averages span - 1 positions per row; the second is the in-context loss.
    """
    losses = position_losses(model, tokens)
    return losses[1:span].mean().item(), losses[span + 1 : 2 * span].mean().item()


def evaluate(model: ToyTransformer, recipe: InductionRecipe) -> dict:
    """Copy losses on the evaluation sequences, plus the head scores of the registered
    analysis (`mechscope.toys` registers the head detectors: the best layer-0 previous-token
    and layer-1 induction head); without one the scores are NaN."""
    tokens = eval_tokens(recipe)
    first, second = copy_losses(model, tokens, recipe.eval_span)
    analysis = ANALYSES.get("induction")
    scores = analysis.monitor(model, tokens) if analysis is not None and analysis.monitor else {}
    return {
        "first_copy_loss": first,
        "second_copy_loss": second,
        "best_prev_token_l0": math.nan,
        "best_induction_l1": math.nan,
        **scores,
    }


def bump_step(curve: list[list[float]]) -> int | None:
    """The induction bump: the first evaluated step at which the second-copy loss is at
    most half the first-copy loss (rows of ``curve`` are [step, first, second, ...])."""
    return next((int(row[0]) for row in curve if row[2] <= 0.5 * row[1]), None)


def _lr(step: int, recipe: InductionRecipe) -> float:
    return recipe.lr * min(1.0, (step + 1) / recipe.warmup_steps)


def _optimizer(model: ToyTransformer, recipe: InductionRecipe) -> torch.optim.AdamW:
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, foreach=False)


def _train_loop(model: ToyTransformer, recipe: InductionRecipe, progress: bool) -> list[list[float]]:
    """All optimizer steps; returns the curve rows [step, first, second, prev, induction, train loss]."""
    opt, curve = _optimizer(model, recipe), []
    bar = tqdm(range(recipe.steps), disable=not progress, desc="induction", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        model.train()
        loss = model(input_ids=(batch := batch_for_step(step, recipe)), labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        if done % recipe.eval_every == 0 or done == recipe.steps or step == 0:
            m = evaluate(model.eval(), recipe)
            curve.append(
                [
                    done,
                    round(m["first_copy_loss"], 4),
                    round(m["second_copy_loss"], 4),
                    round(m["best_prev_token_l0"], 4),
                    round(m["best_induction_l1"], 4),
                    round(loss.item(), 4),
                ]
            )
            bar.set_postfix(first=f"{m['first_copy_loss']:.2f}", second=f"{m['second_copy_loss']:.2f}")
            logger.info(
                "step %d: copy losses %.3f / %.3f, best heads %.2f / %.2f",
                done,
                m["first_copy_loss"],
                m["second_copy_loss"],
                m["best_prev_token_l0"],
                m["best_induction_l1"],
            )
    return curve


TOLERANCE = {
    "first_copy_loss": 0.15,
    "second_copy_loss": 0.15,
    "best_prev_token_l0": 0.1,
    "best_induction_l1": 0.1,
    "bump_step_relative": 0.5,
}
"""How far a retrain with the same recipe on another machine or torch build may land
from the card's metrics (absolute, except the bump step: relative). Same machine and
torch build: bit for bit."""


def train(out_dir: Path, recipe: InductionRecipe = InductionRecipe(), *, progress: bool = True) -> dict:
    """Train the model, then write the HF folder, ``card.json`` and ``CARD.md`` atomically."""
    start = time.perf_counter()
    model = build_model(recipe)
    curve = _train_loop(model, recipe, progress)
    train_time = time.perf_counter() - start
    metrics = {
        **evaluate(model.eval(), recipe),
        "induction_bump_step": bump_step(curve),
        "curve": curve,
        "curve_columns": [
            "step",
            "first_copy_loss",
            "second_copy_loss",
            "best_prev_token_l0",
            "best_induction_l1",
            "train_loss",
        ],
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    card = {
        "name": "induction",
        "architecture": "mechscope ToyTransformer, attention-only, no LayerNorm, learned positions",
        "recipe": dataclasses.asdict(recipe),
        "metrics": metrics,
        "train_time_s": round(train_time, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tolerance": TOLERANCE,
    }
    write_folder(Path(out_dir), model, {"card.json": json.dumps(card, indent=1) + "\n", "CARD.md": render_card(card)})
    return card


def write_folder(out_dir: Path, model, files: dict[str, str], tokenizer=None) -> None:
    """``save_pretrained`` (model, optional tokenizer) plus text files into a temporary
    sibling folder, then renamed over ``out_dir``: readers never see half a folder."""
    tmp = staging_folder(out_dir)
    model.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    for name, text in files.items():
        (tmp / name).write_text(text)
    for path in tmp.iterdir():
        path.chmod(0o644)
    replace_folder(tmp, out_dir)


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``)."""
    r, m = card["recipe"], card["metrics"]
    return f"""# zoo:induction

A 2-layer attention-only transformer (no MLPs, no LayerNorm, learned positions) trained by
mechscope on random tokens (vocabulary {r["vocab_size"]}, token 0 = BOS) in which one span of
{r["min_span"]}-{r["max_span"]} tokens occurs twice; in the background a token repeats the one two back
(`a b a`) with probability {r["alternation_prob"]}, which makes a previous-token head useful early.
It forms a previous-token head in layer 0 and an induction head in layer 1 (Olsson et al. 2022).

| | |
|---|---|
| layers / d_model / heads x d_head / context | {r["n_layers"]} / {r["d_model"]} / {r["n_heads"]} x {r["d_head"]} / {r["context"]} |
| parameters | {m["n_params"]:,} |
| steps x batch | {r["steps"]} x {r["batch_size"]} |
| best layer-0 previous-token score | {m["best_prev_token_l0"]:.3f} |
| best layer-1 induction score | {m["best_induction_l1"]:.3f} |
| loss on 1st / 2nd copy of [BOS, r, r], span {r["eval_span"]} | {m["first_copy_loss"]:.3f} / {m["second_copy_loss"]:.3f} nats |
| induction bump (first step with 2nd-copy loss <= half the 1st) | {m["induction_bump_step"]} |
| training time | {card["train_time_s"]:.0f} s (torch {card["torch"]}, {card["threads"]} thread) |

Scores: mean attention from a token to the one before it (previous-token), and from a token
of the second copy to the token after its earlier occurrence (induction), as in
`mechscope.heads`. Rebuild with `mechscope.zoo.induction.train(out_dir, InductionRecipe())`.
"""


def plots(folder: Path, out_dir: Path) -> list[Path]:
    """Loss per position on repeated sequences and the training curve (the head-score
    heatmaps are drawn by the registered analysis, which calls this)."""
    folder, out_dir = Path(folder), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    card = json.loads((folder / "card.json").read_text())
    recipe = InductionRecipe(**card["recipe"])
    hf = ToyTransformer.from_pretrained(folder).eval()
    tokens = eval_tokens(recipe)
    figures = {
        "induction_loss_per_position.png": _position_figure(hf, tokens, recipe.eval_span),
        "induction_training_curve.png": _curve_figure(card["metrics"]),
    }
    return [write_figure(out_dir / name, fig) for name, fig in figures.items()]


def eval_tokens(recipe: InductionRecipe) -> Tensor:
    """The fixed evaluation sequences ``[BOS, r, r]`` (span ``eval_span``) of the card."""
    return repeated_random_tokens(recipe.vocab_size, recipe.eval_span, recipe.eval_batch, EVAL_SEED, BOS)


def _position_figure(hf: ToyTransformer, tokens: Tensor, span: int) -> Figure:
    losses = position_losses(hf, tokens)
    fig = Figure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(range(1, len(losses) + 1), losses.numpy(), marker=".")
    ax.axvline(span + 0.5, color="grey", ls="--", lw=1)
    ax.text(span + 1, float(losses.max()) * 0.95, "second copy starts", fontsize=8, color="grey")
    ax.set(
        xlabel="position of the predicted token",
        ylabel="loss (nats)",
        title=f"loss per position on [BOS, r, r], span {span}",
    )
    return fig


def _curve_figure(metrics: dict) -> Figure:
    curve = torch.tensor(metrics["curve"])
    fig = Figure(figsize=(7.0, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.plot(curve[:, 0], curve[:, 1], label="1st copy loss")
    ax.plot(curve[:, 0], curve[:, 2], label="2nd copy loss (in-context)")
    ax.set(xlabel="training step", ylabel="loss (nats)", title="training: the induction bump")
    right = ax.twinx()
    right.plot(curve[:, 0], curve[:, 3], color="tab:green", ls=":", label="best L0 previous-token score")
    right.plot(curve[:, 0], curve[:, 4], color="tab:red", ls=":", label="best L1 induction score")
    right.set(ylabel="head score", ylim=(0, 1.05))
    if metrics.get("induction_bump_step") is not None:
        ax.axvline(metrics["induction_bump_step"], color="grey", ls="--", lw=1)
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=7, loc="center right")
    return fig
