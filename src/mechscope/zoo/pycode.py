"""`zoo:pycode`: a small Llama-style causal LM trained on the Python standard library.

The recipe is deterministic (same seed and stdlib: same weights, bit for bit, on the same
machine and torch build), trains on two CPU cores in well under 40 minutes, resumes from
``out_dir/checkpoint/``, and writes a Hugging Face folder (float32 ``model.safetensors``,
``config.json``, tokenizer files) with ``card.json`` and ``CARD.md``: ``train(out_dir)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from mechscope.folders import replace_folder, staging_folder
from mechscope.zoo import checkpoint, pycode_data
from mechscope.zoo.pycode_card import make_card, render_card
from mechscope.zoo.pycode_card import plots as plots

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PycodeRecipe:
    """Everything that determines the trained `zoo:pycode` weights."""

    seed: int = 0
    """Seeds weight init, the order of training sequences and span repetition."""
    include_tests: bool = False
    """Train on the stdlib's test suites too (``test/``, ``tests/``, ``idle_test/``)."""
    heldout_fraction: float = 0.05
    """Fraction of files (chosen by a hash of the relative path) held out for evaluation."""
    max_files: int | None = None
    """Use only the first N train files (and N//4 held-out files) in path order; for tests."""
    vocab_size: int = 4096
    """Byte-level BPE vocabulary size, ``<|endoftext|>`` (id 0) included."""
    d_model: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """Attention (query) heads per block; ``d_head = d_model / n_heads``."""
    n_kv_heads: int = 2
    """Key/value heads per block (grouped-query attention when fewer than ``n_heads``)."""
    d_mlp: int = 704
    """Hidden width of the SwiGLU MLP."""
    context: int = 128
    """Training sequence length in tokens (also ``max_position_embeddings``)."""
    rope_theta: float = 10000.0
    """Base of the rotary position embedding."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    steps: int = 7000
    """Optimizer steps in total."""
    lr: float = 2e-3
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of ``lr`` at the end of the cosine decay."""
    warmup_steps: int = 50
    """Steps of linear learning-rate warmup from 0."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay, applied to matrices only (not norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init (``initializer_range``)."""
    repeat_fraction: float = 0.0
    """Fraction of training sequences that tile one span of their stdlib text (``ABCABCA..``);
    see ``_REPEAT_NOTE`` for why the shipped recipe tiles random ids instead."""
    repeat_span: tuple[int, int] = (16, 64)
    """Range (inclusive) of the random span length of a tiled sequence; varied so that only
    content, not a fixed offset, says where the previous copy is."""
    random_fraction: float = 0.25
    """Fraction of training sequences that are ``<|endoftext|>`` then a tiled span of uniform
    random non-special ids (the copying evaluation's distribution), instead of stdlib text."""
    alternation_prob: float = 0.25
    """In a random span, the probability that an id repeats the one two back (``a b a``,
    never chained), which makes a previous-token head useful early (as in `zoo:induction`)."""
    eval_sequences: int = 256
    """Sequences (of ``context`` tokens) used for the held-out and train-split losses."""
    eval_every: int = 100
    """Measure the copying (induction) losses every this many steps, for the card."""
    checkpoint_every_s: float = 180.0
    """Seconds between checkpoints; does not affect the weights."""


def lr_at(step: int, recipe: PycodeRecipe) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    span = max(1, recipe.steps - recipe.warmup_steps)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - recipe.warmup_steps) / span)))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cos)


def build_model(recipe: PycodeRecipe, tokenizer: PreTrainedTokenizerBase) -> LlamaForCausalLM:
    """A fresh float32 Llama, seeded without touching the global RNG; ``<|endoftext|>`` is
    bos, eos and pad."""
    eos = tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.d_model,
        intermediate_size=recipe.d_mlp,
        num_hidden_layers=recipe.n_layers,
        num_attention_heads=recipe.n_heads,
        num_key_value_heads=recipe.n_kv_heads,
        max_position_embeddings=recipe.context,
        rope_parameters={"rope_type": "default", "rope_theta": recipe.rope_theta},
        initializer_range=recipe.init_std,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,  # W_E and W_U are studied separately
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return LlamaForCausalLM(config).float()


def make_optimizer(model: torch.nn.Module, recipe: PycodeRecipe) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included) and none on norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, foreach=False)


_NOT_IN_WEIGHTS = ("checkpoint_every_s", "eval_every", "eval_sequences")  # may change on resume


def _recipe_key(recipe: PycodeRecipe) -> dict:
    """The JSON form of the recipe fields that determine the weights."""
    d = json.loads(json.dumps(dataclasses.asdict(recipe)))
    return {k: v for k, v in d.items() if k not in _NOT_IN_WEIGHTS}


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module):
    """Eval mode and no gradients inside; the model's previous mode restored after."""
    was_training = model.training
    try:
        with torch.no_grad():
            yield model.eval()
    finally:
        model.train(was_training)


def mean_loss(model: torch.nn.Module, chunks: torch.Tensor, batch: int = 16) -> float:
    """Mean next-token cross-entropy (nats/token) over windows [n, context + 1]."""
    total, count = 0.0, 0
    with _evaluating(model):
        for i in range(0, len(chunks), batch):
            x = chunks[i : i + batch].long()
            logits = model(input_ids=x[:, :-1], use_cache=False).logits
            total += F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten(), reduction="sum").item()
            count += x[:, 1:].numel()
    return total / count


def copying_loss(
    model: transformers.PreTrainedModel,
    tokenizer_or_vocab_size: PreTrainedTokenizerBase | int,
    seq_len: int = 50,
    batch: int = 32,
    seed: int = 0,
) -> tuple[float, float]:
    """Mean loss on the first and on the second copy of random tokens repeated twice.

    Rows are ``bos, r, r``, ``r`` being ``seq_len`` uniform non-special ids; the first token
    of each copy is not scored. Induction heads put the second far below the first (~ln V).
    """
    cfg, tok = model.config, tokenizer_or_vocab_size
    vocab = tok if isinstance(tok, int) else len(tok)
    special = set() if isinstance(tok, int) else set(tok.all_special_ids)
    special |= {t for t in (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) if type(t) is int}
    allowed = torch.tensor([i for i in range(vocab) if i not in special])
    g = torch.Generator().manual_seed(seed)
    r = allowed[torch.randint(len(allowed), (batch, seq_len), generator=g)]
    x = torch.cat([r, r], dim=1)
    off = 0
    if isinstance(cfg.bos_token_id, int):
        x, off = torch.cat([torch.full((batch, 1), cfg.bos_token_id), x], dim=1), 1
    with _evaluating(model):
        device = next(model.parameters()).device
        logits = model(input_ids=x.to(device), use_cache=False).logits.float().cpu()
    losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
    # losses[:, p] scores token p + 1; the copies' scored tokens start at off + 1, off + seq_len + 1
    first = losses[:, off : off + seq_len - 1].mean().item()
    second = losses[:, off + seq_len : off + 2 * seq_len - 1].mean().item()
    return first, second


def _step(model, opt, batch: torch.Tensor, lr: float, recipe: PycodeRecipe) -> float:
    """One optimizer step on ``batch`` [batch, context + 1]; returns the batch loss."""
    for group in opt.param_groups:
        group["lr"] = lr
    logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def _train_loop(
    model,
    opt,
    chunks,
    tokenizer,
    recipe: PycodeRecipe,
    state: dict,
    ckpt_dir: Path,
    progress: bool,
    stop_after: int | None,
) -> dict:
    """Run steps ``state["step"]`` .. end, checkpointing every ``checkpoint_every_s``."""
    end = recipe.steps if stop_after is None else min(recipe.steps, stop_after)
    bar = tqdm(total=recipe.steps, initial=state["step"], disable=not progress, desc="pycode", unit="step")
    start, elapsed0, last_ckpt = time.perf_counter(), state["elapsed_s"], time.perf_counter()
    cpu_start, cpu0 = time.process_time(), state["cpu_s"]
    model.train()
    while state["step"] < end:
        step = state["step"]
        batch = pycode_data.batch_for_step(chunks, step, recipe, len(tokenizer))
        loss = _step(model, opt, batch, lr_at(step, recipe), recipe)
        state["step"] = step + 1
        state["recent_losses"] = (state["recent_losses"] + [loss])[-50:]
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if state["step"] % recipe.eval_every == 0 or state["step"] == recipe.steps:
            first, second = copying_loss(model, tokenizer)
            state["copying_curve"].append([state["step"], round(first, 4), round(second, 4)])
            logger.info("step %d loss %.3f copying %.2f -> %.2f", step + 1, loss, first, second)
        state["elapsed_s"] = elapsed0 + time.perf_counter() - start
        state["cpu_s"] = cpu0 + time.process_time() - cpu_start
        due = time.perf_counter() - last_ckpt > recipe.checkpoint_every_s
        if state["step"] < recipe.steps and (due or state["step"] == end):
            checkpoint.save(ckpt_dir, model, opt, state)
            last_ckpt = time.perf_counter()
    bar.close()
    return state


def _write_folder(out_dir: Path, model, tokenizer, card: dict) -> None:
    """Write the HF folder beside ``out_dir``, swap it in, then drop the old one (checkpoint too)."""
    tmp = staging_folder(out_dir)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tok_cfg = json.loads((tmp / "tokenizer_config.json").read_text())  # readable by transformers 4
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (tmp / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (tmp / "CARD.md").write_text(render_card(card))
    replace_folder(tmp, out_dir)


def train(
    out_dir: Path, recipe: PycodeRecipe = PycodeRecipe(), *, progress: bool = True, stop_after: int | None = None
) -> dict:
    """Train the tokenizer and the model; write the HF folder, ``card.json`` and ``CARD.md``.

    Rerunning with the same ``out_dir`` resumes from ``out_dir/checkpoint/``.
    ``stop_after`` checkpoints and returns ``{"stopped_at_step": N}`` after step N (to
    time-box a run, and for tests); otherwise returns the card.
    """
    out_dir, t0 = Path(out_dir), time.perf_counter()
    corpus = pycode_data.load_corpus(recipe.heldout_fraction, recipe.include_tests, recipe.max_files)
    tokenizer = pycode_data.train_tokenizer(corpus.train_texts, recipe.vocab_size)
    train_stream = pycode_data.encode(tokenizer, corpus.train_texts)
    heldout_stream = pycode_data.encode(tokenizer, corpus.heldout_texts)
    chunks = pycode_data.chunks_of(train_stream, recipe.context)
    model, ckpt_dir = build_model(recipe, tokenizer), out_dir / "checkpoint"
    opt = make_optimizer(model, recipe)
    made_by = {"recipe": _recipe_key(recipe), "fingerprint": corpus.fingerprint}
    state = checkpoint.load(ckpt_dir, model, opt, made_by) or {
        "step": 0,
        "elapsed_s": 0.0,
        "cpu_s": 0.0,
        "recent_losses": [],
        "copying_curve": [],
        **made_by,
    }
    state = _train_loop(model, opt, chunks, tokenizer, recipe, state, ckpt_dir, progress, stop_after)
    if state["step"] < recipe.steps:
        return {"stopped_at_step": state["step"]}
    first, second = copying_loss(model, tokenizer)
    heldout_chunks = pycode_data.chunks_of(heldout_stream, recipe.context)
    metrics = {
        "heldout_loss": mean_loss(model, pycode_data.eval_subset(heldout_chunks, recipe)),
        "train_split_loss": mean_loss(model, pycode_data.eval_subset(chunks, recipe)),
        "train_loss_last50": sum(state["recent_losses"]) / len(state["recent_losses"]),
        "copying_first_loss": first,
        "copying_second_loss": second,
        "copying_curve": state["copying_curve"],
        "train_time_s": round(state["elapsed_s"], 1),
        "train_cpu_s": round(state["cpu_s"], 1),  # summed over threads; wall time counts waits
        "tokens_seen": recipe.steps * recipe.batch_size * recipe.context,
        "n_params": sum(p.numel() for p in model.parameters()),
        "total_time_s_this_run": round(time.perf_counter() - t0, 1),  # corpus, tokenizer, evals
    }
    card = make_card(recipe, corpus, tokenizer, train_stream, heldout_stream, metrics)
    _write_folder(out_dir, model, tokenizer, card)
    return card
