"""`zoo:chain`: stacked attention heads doing multi-hop variable binding.

A prompt is a BOS token ``^``, a shuffled list of assignments, one character per token,
and a query: ``^C=B,A=7,E=4,D=C,B=A,?D`` -> ``7``. The queried variable is bound to a
literal digit through 1..4 assignments (its *depth*: here D -> C -> B -> A -> 7, depth
4); the other assignments are distractor chains. Every variable is assigned once. A
prompt of n assignments has 4n + 3 tokens and the answer is read out at its last token,
the queried variable (``?`` before it marks the query). The tokenizer saved with the
model adds the BOS itself: ``model.run("A=7,B=A,?B")`` predicts ``7``.

The circuit (measured by ``attention_to_hops``): in layer 0 each assignment's right-hand
token attends to its left-hand variable (binding ``X=Y`` into one position); then each
layer l is one hop: from the final token it attends to the assignment of the variable
found by hop l - 1 and copies its right side. Depth d needs d + 1 layers; there are 5.
``train(out_dir)`` is deterministic and writes a Hugging Face folder with a tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .chain_card import plots as plots
from .chain_card import render_card
from .induction import write_folder
from .transformer import ToyConfig, ToyTransformer

logger = logging.getLogger(__name__)
VARIABLES = "ABCDEFGHIJKLMNOP"
DIGITS = "0123456789"
VOCAB = "_^" + VARIABLES + DIGITS + "=,?"
"""Token ids are indices into this string; ``_`` is padding, ``^`` begins every prompt."""
TOKEN = {ch: i for i, ch in enumerate(VOCAB)}
EVAL_SEED = 777  # seed of the held-out evaluation prompts (never drawn for training)


@dataclass(frozen=True)
class ChainRecipe:
    """Everything that determines the trained `zoo:chain` weights."""

    seed: int = 0
    """Seeds the weight init and every training batch."""
    max_depth: int = 4
    """Longest chain from the queried variable to its digit (depths 1..max_depth)."""
    n_statements: int = 8
    """Assignments in a prompt (in evaluation, and in training except for short steps)."""
    short_fraction: float = 0.25
    """Fraction of training steps with 1..n_statements assignments (so short prompts work)."""
    n_layers: int = 5
    """Transformer blocks: one to bind each assignment, one per hop."""
    d_model: int = 64
    """Width of the residual stream."""
    n_heads: int = 4
    """Heads per layer."""
    d_head: int = 16
    """Width of each head's queries, keys and values."""
    d_mlp: int = 128
    """Hidden width of each block's MLP (0: attention-only)."""
    pos_init: str = "sinusoidal"
    """Initial (trainable) position embedding: ``sinusoidal`` (unit norm) or ``normal``."""
    batch_size: int = 64
    """Prompts per optimizer step."""
    steps: int = 6000
    """Optimizer steps."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warmup, cosine decay to a tenth)."""
    warmup_steps: int = 200
    """Steps of linear warmup."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay on matrices."""
    curriculum_steps: int = 2000
    """If > 0, the deepest chain trained on grows from 1 to max_depth over this many steps."""
    scaffold: float = 0.1
    """Weight of a training-only loss showing head 0 of each layer where to attend (layer 0
    binds, layer l makes hop l: ``scaffold_targets``). Without it training sits at chance for
    thousands of steps; near 1 its gradients swamp the task's under clipping. 0: off."""
    scaffold_steps: int = 4000
    """The scaffold's weight decays linearly to 0 over this many steps."""
    train_queries: int = 4
    """Queries per training prompt, each after the previous answer (evaluation: one)."""
    eval_every: int = 250
    """Measure held-out accuracy per depth every this many steps."""
    eval_prompts: int = 250
    """Held-out prompts per depth (each with n_statements assignments)."""


def build_model(recipe: ChainRecipe) -> ToyTransformer:
    """A freshly initialised model; the init is seeded without touching the global RNG."""
    n_ctx = 4 * (recipe.n_statements + recipe.train_queries) - 1  # the longest training prompt
    config = ToyConfig(
        vocab_size=len(VOCAB),
        n_ctx=n_ctx,
        d_model=recipe.d_model,
        n_layers=recipe.n_layers,
        n_heads=recipe.n_heads,
        d_head=recipe.d_head,
        d_mlp=recipe.d_mlp,
        norm="layernorm",
        positions="learned",
        pad_token_id=TOKEN["_"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = ToyTransformer(config)
    if recipe.pos_init == "sinusoidal":
        with torch.no_grad():
            assert model.pos_embed is not None  # learned positions (sinusoidal is their start)
            model.pos_embed.weight.copy_(sinusoids(config.n_ctx, config.d_model))
    return model


def sinusoids(n_pos: int, d_model: int) -> Tensor:
    """Vaswani et al.'s sinusoidal positions [n_pos, d_model], scaled to unit norm per position."""
    angles = torch.arange(n_pos)[:, None] * torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2) / d_model)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :d_model] * math.sqrt(2.0 / d_model)


def make_prompt(
    rng: random.Random, depth: int, n_statements: int, max_depth: int
) -> tuple[str, str, list[int], dict[str, tuple[str, int]]]:
    """One prompt of ``n_statements`` shuffled assignments whose query has ``depth``: the
    text (``...,?D``), the answer, the index of the assignment of hop k = 1..depth (hop 1
    assigns the queried variable, hop depth the digit), every variable's (digit, depth)."""
    names = rng.sample(VARIABLES, n_statements)
    chains, start = [names[:depth]], depth
    while start < n_statements:  # distractor chains fill the rest
        length = min(rng.randint(1, max_depth), n_statements - start)
        chains.append(names[start : start + length])
        start += length
    statements, resolved = [], {}  # statements: (text, chain index, hop from the chain's end)
    for c, chain in enumerate(chains):
        digit = rng.choice(DIGITS)
        resolved.update({var: (digit, i + 1) for i, var in enumerate(chain)})
        statements.append((f"{chain[0]}={digit}", c, len(chain)))
        statements += [(f"{chain[i]}={chain[i - 1]}", c, len(chain) - i) for i in range(1, len(chain))]
    rng.shuffle(statements)
    hops = [next(i for i, s in enumerate(statements) if s[1] == 0 and s[2] == k) for k in range(1, depth + 1)]
    text = ",".join(s[0] for s in statements) + f",?{chains[0][-1]}"
    return text, resolved[chains[0][-1]][0], hops, resolved


def encode(texts: list[str]) -> Tensor:
    """Token ids [batch, pos] for prompts of equal length, BOS first."""
    return torch.tensor([[TOKEN["^"]] + [TOKEN[ch] for ch in text] for text in texts])


def eval_set(recipe: ChainRecipe) -> dict[int, tuple[Tensor, Tensor, list[list[int]]]]:
    """Held-out prompts per depth: (tokens, answer ids, hop statement indices)."""
    rng, out = random.Random(EVAL_SEED), {}
    for depth in range(1, recipe.max_depth + 1):
        prompts = [make_prompt(rng, depth, recipe.n_statements, recipe.max_depth) for _ in range(recipe.eval_prompts)]
        out[depth] = (
            encode([p[0] for p in prompts]),
            torch.tensor([TOKEN[p[1]] for p in prompts]),
            [p[2] for p in prompts],
        )
    return out


def batch_for_step(step: int, recipe: ChainRecipe, held_out: set[str]) -> tuple[Tensor, Tensor]:
    """Training batch (a function of the step): tokens [batch, 4n + 4q - 1] (n assignments,
    q queries: ``...,?D7,?B3,?E``) and targets, the answer at each query, -100 elsewhere."""
    rng = random.Random(recipe.seed * 1_000_003 + step)
    n = rng.randint(1, recipe.n_statements) if rng.random() < recipe.short_fraction else recipe.n_statements
    deepest = (
        min(recipe.max_depth, 1 + step * recipe.max_depth // recipe.curriculum_steps)
        if recipe.curriculum_steps
        else recipe.max_depth
    )
    texts: list[str] = []
    while len(texts) < recipe.batch_size:
        text, answer, _, resolved = make_prompt(rng, rng.randint(1, min(n, deepest)), n, recipe.max_depth)
        if text in held_out:
            continue
        pool = sorted(v for v, (_, d) in resolved.items() if d <= deepest and v != text[-1])
        k = recipe.train_queries - 1
        for var in rng.sample(pool, k) if len(pool) >= k else rng.choices(pool or [text[-1]], k=k):
            text += f"{answer},?{var}"
            answer = resolved[var][0]
        texts.append(text + answer)
    tokens = encode(texts)
    targets = torch.full_like(tokens, -100)
    queries = tokens[:, :-1] == TOKEN["?"]  # the query variable follows each '?'
    targets[:, 1:-1][queries[:, :-1]] = tokens[:, 2:][queries[:, :-1]]
    return tokens[:, :-1], targets[:, :-1]


def accuracy(model: ToyTransformer, tokens: Tensor, answers: Tensor) -> float:
    """Fraction of prompts whose most likely next token (at the queried variable) is the answer."""
    with torch.no_grad():
        return (model(input_ids=tokens).logits[:, -1].argmax(-1) == answers).float().mean().item()


def _lr(step: int, recipe: ChainRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def scaffold_targets(tokens: Tensor, targets: Tensor, n_layers: int) -> Tensor:
    """Where head 0 of each layer should attend, [batch, pos, layer] key positions (-1: nowhere): in layer 0
    from each assignment's right-hand token to its left side; in layer l >= 1 from each query to the
    right-hand token of the assignment of hop l (while the chain lasts)."""
    out, n = torch.full((*tokens.shape, n_layers), -1), int((tokens[0] == TOKEN["="]).sum())
    rhs = 3 + 4 * torch.arange(n)  # assignment s is X=Y, at 1 + 4s
    out[:, rhs, 0] = rhs - 2
    for row, pos in (targets != -100).nonzero().tolist():
        where = dict(zip(tokens[row, rhs - 2].tolist(), rhs.tolist()))  # left side -> its right-hand position
        current = int(tokens[row, pos])
        for layer in range(1, n_layers):
            if current not in where:
                break
            out[row, pos, layer] = where[current]
            current = int(tokens[row, where[current]])
    return out


def _step_loss(model: ToyTransformer, tokens: Tensor, targets: Tensor, aux_weight: float) -> tuple[Tensor, Tensor]:
    """Task loss at the queries, plus ``aux_weight`` x the scaffold: the negative log
    attention of each layer's head 0 on its target key (``scaffold_targets``)."""
    out = model(input_ids=tokens, output_attentions=aux_weight > 0)
    task = F.cross_entropy(out.logits.flatten(0, 1), targets.flatten())
    if aux_weight == 0:
        return task, task
    keys, terms = scaffold_targets(tokens, targets, len(out.attentions)), []
    for layer, pattern in enumerate(out.attentions):  # each layer weighs the same
        rows, pos = (keys[..., layer] >= 0).nonzero(as_tuple=True)
        if len(rows):
            terms.append(-pattern[rows, 0, pos, keys[rows, pos, layer]].clamp_min(1e-6).log().mean())
    return task + aux_weight * torch.stack(terms).mean(), task


def _train_loop(model: ToyTransformer, recipe: ChainRecipe, evals: dict, progress: bool) -> list[list[float]]:
    """All optimizer steps; returns rows [step, train loss, accuracy at depth 1..max_depth]."""
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        foreach=False,
    )
    held_out = {"".join(VOCAB[t] for t in row[1:]) for tokens, _, _ in evals.values() for row in tokens.tolist()}
    curve, bar = [], tqdm(range(recipe.steps), disable=not progress, desc="chain", unit="step")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, recipe)
        tokens, targets = batch_for_step(step, recipe, held_out)
        aux = recipe.scaffold * max(0.0, 1 - step / max(1, recipe.scaffold_steps))
        loss, task = _step_loss(model.train(), tokens, targets, aux)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % recipe.eval_every == 0 or step + 1 == recipe.steps:
            accs = [round(accuracy(model.eval(), t, a), 4) for t, a, _ in evals.values()]
            curve.append([step + 1, round(task.item(), 4), *accs])
            bar.set_postfix(loss=f"{task.item():.3f}", acc=" ".join(f"{a:.2f}" for a in accs))
            logger.info("step %d loss %.3f accuracy by depth %s", step + 1, task.item(), accs)
    return curve


def attention_to_hops(model: ToyTransformer, evals: dict) -> dict[int, list[list[list[float]]]]:
    """``out[d][l][h][k]``: mean attention (over depth-d prompts) of head h in layer l, from
    the final token (the queried variable), on the four tokens ``X=Y,`` of the assignment
    of hop k + 1; entry ``k = d`` holds the mass on everything else."""
    out = {}
    for depth, (tokens, _, hops) in evals.items():
        with torch.no_grad():
            patterns = model(input_ids=tokens, output_attentions=True).attentions  # layers x [b, head, q, k]
        final = torch.stack([p[:, :, -1] for p in patterns], 1)  # [b, layer, head, k_pos]
        onehot = torch.zeros(len(tokens), final.shape[-1], depth + 1)
        for row, statement_ids in enumerate(hops):
            for k, s in enumerate(statement_ids):
                onehot[row, 1 + 4 * s : 5 + 4 * s, k] = 1.0
        onehot[..., depth] = 1.0 - onehot[..., :depth].sum(-1)
        out[depth] = torch.einsum("blhp,bpk->lhk", final, onehot).div(len(tokens)).tolist()
    return out


def hop_summary(masses: dict[int, list]) -> dict[int, list[dict]]:
    """Per depth and layer: the head most attending to any hop, that hop, and its mass."""
    summary: dict[int, list[dict]] = {depth: [] for depth in masses}
    for depth, per_layer in masses.items():
        for layer, heads in enumerate(per_layer):
            hop_mass = torch.tensor(heads)[:, :depth]  # [head, hop]
            head, hop = divmod(int(hop_mass.argmax()), depth)
            summary[depth].append(
                {"layer": layer, "head": head, "hop": hop + 1, "mass": round(float(hop_mass[head, hop]), 3)}
            )
    return summary


TOLERANCE = {"accuracy": 0.03, "hop_mass": 0.15}
"""How far (absolute) a retrain on another machine or torch build may land from the card (same: bit for bit)."""


def train(out_dir: Path, recipe: ChainRecipe = ChainRecipe(), *, progress: bool = True) -> dict:
    """Train the model, then write the HF folder (with tokenizer), card.json and CARD.md atomically."""
    start = time.perf_counter()
    model, evals = build_model(recipe), eval_set(recipe)
    curve = _train_loop(model, recipe, evals, progress)
    train_time = time.perf_counter() - start
    masses = attention_to_hops(model.eval(), evals)
    metrics = {
        "accuracy_by_depth": {d: accuracy(model, t, a) for d, (t, a, _) in evals.items()},
        "hop_attention": hop_summary(masses),
        "hop_attention_full": masses,
        "curve": curve,
        "curve_columns": ["step", "train_loss", *[f"accuracy_depth_{d}" for d in evals]],
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    card = json.loads(
        json.dumps(
            {
                "name": "chain",
                "architecture": "mechscope ToyTransformer, pre-LayerNorm, MLPs, learned positions",
                "vocab": VOCAB,
                "recipe": dataclasses.asdict(recipe),
                "metrics": metrics,
                "train_time_s": round(train_time, 1),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "tolerance": TOLERANCE,
            }
        )
    )
    files = {"card.json": json.dumps(card, indent=1) + "\n", "CARD.md": render_card(card)}
    write_folder(Path(out_dir), model, files, tokenizer=make_tokenizer())
    return card


def make_tokenizer():
    """A character-level Hugging Face tokenizer over ``VOCAB`` that puts ``^`` first (``_`` pads)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(TOKEN, unk_token="_"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.post_processor = processors.TemplateProcessing(single="^ $A", special_tokens=[("^", TOKEN["^"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="^", pad_token="_", unk_token="_")
