"""`zoo:icl`: a small transformer that does in-context tasks it is never told the name of.

A prompt is a list of demonstrations of one hidden task, then a query:
``<s> n3 -> n4 ; n10 -> n11 ; n7 ->`` -> ``n8`` (successor). The tasks map items
``n0 .. n{N-1}`` (`TASKS`): copy, successor, predecessor, a fixed permutation, parity. Each
task answers in its own output vocabulary (`OUTPUT_FORMS`: copy ``n3 -> c3``, successor
``n3 -> n4``, predecessor ``n3 -> p2``, permutation ``n3 -> q12``, parity ``n3 -> odd``), as
the function-vector paper's tasks do (capitals, antonyms, translations are different word
sets). With ``own_outputs=False`` the four item tasks all answer with items; the model then
still learns them in context, but their function vectors did not make zero-shot prompts do
them (numbers in CARD.md). Training sequences hold `n_demos` demonstrations of one task
drawn at random, and the loss is taken at every arrow, so the model learns to infer the
task from the demonstrations before it (0 of them: a guess).
This is the model organism of function vectors (Todd et al. 2024): a few heads carry
"which task" from the demonstrations to the last token.

``train(out_dir)`` is deterministic and writes a Hugging Face folder (``ToyTransformer``
with a word-level tokenizer) with ``card.json`` and ``CARD.md`` (see `icl_card`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .icl_card import render_card
from .induction import write_folder
from .transformer import ToyConfig, ToyTransformer

logger = logging.getLogger(__name__)
EVAL_SEED = 4242
"""Seed of the fixed evaluation prompts of the card (not a recipe field)."""
ARROW, SEP, BOS, PAD = "->", ";", "<s>", "<pad>"
CLASSES = ("even", "odd")
TASKS = ("copy", "successor", "predecessor", "permutation", "parity")
"""The hidden tasks, in the order of their task ids."""
OUTPUT_FORMS = {"copy": "c", "successor": "n", "predecessor": "p", "permutation": "q"}
"""Prefix of each item task's answers (``own_outputs``): successor answers with the items."""


@dataclass(frozen=True)
class IclRecipe:
    """Everything that determines the trained `zoo:icl` weights."""

    seed: int = 0
    """Seeds the weight init and every training batch."""
    n_items: int = 16
    """Items n0 .. n{N-1} that the tasks map."""
    permutation_seed: int = 7
    """Seeds the fixed permutation of the `permutation` task."""
    own_outputs: bool = True
    """Each task answers in its own vocabulary (`OUTPUT_FORMS`); False: the item tasks all
    answer with the items n0 .. n{N-1}, told apart only by the relation to the input."""
    n_demos: int = 6
    """Demonstrations per training sequence (the loss is taken at each of them)."""
    max_prefix: int = 0
    """Each training sequence starts with 0..max_prefix filler separators after BOS, so that
    a position does not tell how many demonstrations came before it."""
    zero_shot_loss: bool = True
    """Train the answer after the first arrow too (no demonstration before it): the model
    then learns a zero-shot prior (a guess among the tasks' answers), so that bare queries are
    in distribution. (Off, the shipped recipe's function vectors were no better; see CARD.md.)"""
    n_layers: int = 3
    """Transformer blocks (attention + MLP, pre-LayerNorm)."""
    d_model: int = 64
    """Width of the residual stream."""
    n_heads: int = 4
    """Heads per layer."""
    d_head: int = 16
    """Width of each head's queries, keys and values."""
    d_mlp: int = 256
    """Hidden width of each block's MLP."""
    batch_size: int = 64
    """Sequences per optimizer step."""
    steps: int = 1000
    """Optimizer steps."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warmup, cosine decay to a tenth)."""
    warmup_steps: int = 200
    """Steps of linear warmup."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices."""
    eval_every: int = 250
    """Measure k-shot accuracy every this many steps (the training curve)."""
    eval_shots: int = 5
    """Demonstrations in the card's k-shot evaluation prompts."""
    eval_prompts: int = 200
    """Evaluation prompts per task."""


def vocabulary(n_items: int) -> list[str]:
    """Token strings in id order: BOS, padding, arrow, separator, items, class words, then
    the items' other output forms (c, p, q; `OUTPUT_FORMS`)."""
    forms = [f for f in OUTPUT_FORMS.values() if f != "n"]
    return [BOS, PAD, ARROW, SEP, *(f"n{i}" for i in range(n_items)), *CLASSES,
            *(f"{f}{i}" for f in forms for i in range(n_items))]  # fmt: skip


def permutation(recipe: IclRecipe) -> list[int]:
    """The fixed permutation: no item maps to itself or a neighbour (so that no single
    demonstration of it also fits copy, successor or predecessor)."""
    gen, n = torch.Generator().manual_seed(recipe.permutation_seed), recipe.n_items
    while True:
        perm = torch.randperm(n, generator=gen).tolist()
        if all((perm[i] - i) % n not in (0, 1, n - 1) for i in range(n)):
            return perm


def task_functions(recipe: IclRecipe) -> dict[str, Callable[[int], str]]:
    """Task name -> f(item index) -> output word."""
    n, perm = recipe.n_items, permutation(recipe)
    c, p, q = (OUTPUT_FORMS[t] if recipe.own_outputs else "n" for t in ("copy", "predecessor", "permutation"))
    return {
        "copy": lambda i: f"{c}{i}",
        "successor": lambda i: f"n{(i + 1) % n}",
        "predecessor": lambda i: f"{p}{(i - 1) % n}",
        "permutation": lambda i: f"{q}{perm[i]}",
        "parity": lambda i: CLASSES[i % 2],
    }


def task_pairs(recipe: IclRecipe) -> dict[str, list[tuple[str, str]]]:
    """Task name -> every (input word, output word) pair of the task."""
    return {name: [(f"n{i}", f(i)) for i in range(recipe.n_items)] for name, f in task_functions(recipe).items()}


def _table(recipe: IclRecipe) -> Tensor:
    """[task, item] -> output token id."""
    ids = {w: i for i, w in enumerate(vocabulary(recipe.n_items))}
    fns = task_functions(recipe)
    return torch.tensor([[ids[fns[t](i)] for i in range(recipe.n_items)] for t in TASKS])


def sequences(recipe: IclRecipe, tasks: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
    """Token ids [batch, 1 + 4 * demos - 1] of ``<s> x -> y ; x -> y ; ... x -> y`` for
    task ids [batch] and item indices [batch, demos], and the positions of the arrows
    (where the next token is an answer) as a bool mask of the same shape."""
    b, k = items.shape
    item0 = 4  # id of n0
    outputs = _table(recipe)[tasks[:, None], items]
    pairs = torch.stack([items + item0, torch.full_like(items, 2), outputs, torch.full_like(items, 3)], dim=-1).reshape(
        b, 4 * k
    )[:, :-1]
    tokens = torch.cat([torch.zeros(b, 1, dtype=torch.long), pairs], dim=1)
    arrows = tokens == 2
    return tokens, arrows


def batch_for_step(step: int, recipe: IclRecipe) -> tuple[Tensor, Tensor]:
    """Training batch (a function of the step): one random task per row, demonstrations
    on distinct random items, after 0..max_prefix filler separators (the sequence keeps
    its length: demonstrations pushed past the end are cut)."""
    gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    tasks = torch.randint(len(TASKS), (recipe.batch_size,), generator=gen)
    items = torch.rand(recipe.batch_size, recipe.n_items, generator=gen).argsort(-1)[:, : recipe.n_demos]
    tokens, _ = sequences(recipe, tasks, items)
    shifts = torch.randint(0, recipe.max_prefix + 1, (recipe.batch_size,), generator=gen).tolist()
    filler = torch.full_like(tokens, 3)  # the separator
    tokens = torch.stack(
        [
            torch.cat([row[:1], filler[i, :shift], row[1 : len(row) - shift]])
            for i, (row, shift) in enumerate(zip(tokens, shifts))
        ]
    )
    arrows = tokens == 2
    if not recipe.zero_shot_loss:  # the first arrow of each row has no demonstration before it
        arrows[torch.arange(len(tokens)), arrows.float().argmax(1)] = False
    return tokens, arrows


def build_model(recipe: IclRecipe) -> ToyTransformer:
    """A freshly initialised model; the init is seeded without touching the global RNG."""
    config = ToyConfig(
        vocab_size=len(vocabulary(recipe.n_items)),
        n_ctx=4 * recipe.n_demos,
        d_model=recipe.d_model,
        n_layers=recipe.n_layers,
        n_heads=recipe.n_heads,
        d_head=recipe.d_head,
        d_mlp=recipe.d_mlp,
        act="gelu",
        norm="layernorm",
        positions="learned",
        bos_token_id=0,
        pad_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return ToyTransformer(config)


def answer_loss(model: ToyTransformer, tokens: Tensor, arrows: Tensor) -> Tensor:
    """Cross-entropy of the answer after every arrow."""
    logits = model(input_ids=tokens).logits[:, :-1]
    targets = tokens[:, 1:]
    return F.cross_entropy(logits[arrows[:, :-1]], targets[arrows[:, :-1]])


@torch.no_grad()
def shot_accuracy(model: ToyTransformer, recipe: IclRecipe) -> dict[str, list[float]]:
    """Task -> accuracy of the answer after the (k+1)-th arrow, k = 0 .. n_demos - 1, i.e.
    with k demonstrations before it, on the fixed evaluation prompts (greedy top-1)."""
    gen = torch.Generator().manual_seed(EVAL_SEED)
    out = {}
    for t, name in enumerate(TASKS):
        n = recipe.eval_prompts
        items = torch.rand(n, recipe.n_items, generator=gen).argsort(-1)[:, : recipe.n_demos]
        tokens, arrows = sequences(recipe, torch.full((n,), t), items)
        predicted = model(input_ids=tokens).logits.argmax(-1)[:, :-1]
        right = (predicted == tokens[:, 1:])[arrows[:, :-1]].view(n, recipe.n_demos).float().mean(0)
        out[name] = [round(v, 4) for v in right.tolist()]
    return out


def evaluate(model: ToyTransformer, recipe: IclRecipe) -> dict:
    """The card's measures: k-shot (``eval_shots``) and zero-shot accuracy per task."""
    by_shot = shot_accuracy(model.eval(), recipe)
    return {
        "icl_accuracy": {t: acc[recipe.eval_shots] for t, acc in by_shot.items()},
        "zero_shot_accuracy": {t: acc[0] for t, acc in by_shot.items()},
        "accuracy_by_shots": by_shot,
    }


def _lr(step: int, recipe: IclRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * torch.pi)).item()))


def _train_loop(model: ToyTransformer, recipe: IclRecipe, progress: bool) -> list[list[float]]:
    """All optimizer steps; returns the curve rows [step, train loss, mean k-shot accuracy]."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        foreach=False,
    )
    curve = []
    bar = tqdm(range(recipe.steps), disable=not progress, desc="icl", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        model.train()
        loss = answer_loss(model, *batch_for_step(step, recipe))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps:
            acc = evaluate(model, recipe)["icl_accuracy"]
            mean = sum(acc.values()) / len(acc)
            curve.append([step + 1, round(loss.item(), 4), round(mean, 4)])
            bar.set_postfix(loss=f"{loss.item():.3f}", icl=f"{mean:.3f}")
            logger.info(
                "step %d: loss %.3f, mean %d-shot accuracy %.3f", step + 1, loss.item(), recipe.eval_shots, mean
            )
    return curve


TOLERANCE = {"icl_accuracy_abs": 0.05, "zero_shot_accuracy_abs": 0.2}
"""How far a retrain with the same recipe on another machine or torch build may land from
the card's accuracies (absolute, per task). Same machine and torch build: bit for bit."""


def train(out_dir: Path, recipe: IclRecipe = IclRecipe(), *, progress: bool = True) -> dict:
    """Train the model, then write the HF folder (with tokenizer), card.json and CARD.md atomically."""
    start = time.perf_counter()
    model = build_model(recipe)
    curve = _train_loop(model, recipe, progress)
    train_time = time.perf_counter() - start
    metrics = {
        **evaluate(model.eval(), recipe),
        "chance": {t: 1 / len(TASKS) for t in TASKS},
        "curve": curve,
        "curve_columns": ["step", "train_loss", "mean_icl_accuracy"],
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    card = {
        "name": "icl",
        "architecture": "mechscope ToyTransformer, pre-LayerNorm, GELU MLPs, learned positions",
        "tasks": list(TASKS),
        "permutation": permutation(recipe),
        "recipe": dataclasses.asdict(recipe),
        "metrics": metrics,
        "train_time_s": round(train_time, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tolerance": TOLERANCE,
    }
    files = {"card.json": json.dumps(card, indent=1) + "\n", "CARD.md": render_card(card)}
    write_folder(Path(out_dir), model, files, tokenizer=make_tokenizer(recipe.n_items))
    return card


def make_tokenizer(n_items: int = IclRecipe.n_items):
    """A word-level Hugging Face tokenizer (words split on spaces) that puts ``<s>`` first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary(n_items))}
    core = Tokenizer(models.WordLevel(vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, pad_token=PAD, unk_token=PAD)


def plots(folder: Path, out_dir: Path) -> list[Path]:
    """The card's figure: accuracy per task by number of demonstrations."""
    from .icl_card import plots as draw

    return draw(folder, out_dir)
