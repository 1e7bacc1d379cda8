"""`zoo:modadd`: a 1-layer transformer that groks (a + b) mod p (Nanda et al. 2023,
"Progress measures for grokking via mechanistic interpretability").

Inputs are the three tokens ``a b =`` (``=`` is token ``p``); the answer is read from the
last position's logits over the ``p`` number tokens. Training is full-batch AdamW with
strong weight decay on a seeded 30% of all ``p * p`` pairs; the model first memorises,
then forms the Fourier-multiplication circuit and finally cleans up the memorisation, at
which point test accuracy jumps to 100%. ``train(out_dir)`` writes a Hugging Face folder
(float32 weights), float16 snapshots under ``snapshots/step_XXXXXX/``, ``card.json`` and
``CARD.md``: the raw training artifacts. The progress measures of the snapshots
(``curves.safetensors``, the card's ``analysis``) and the figures are the grokking analysis
of `mechscope.toys`, which registers them with `mechscope.zoo` (`zoo.train("modadd")` runs
both; this module imports no method, DESIGN §2).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
import transformers
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import MechscopeError
from ..folders import replace_folder, staging_folder
from .transformer import Block, ToyConfig, ToyTransformer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModaddRecipe:
    """Everything that determines the trained `zoo:modadd` weights and snapshots."""

    seed: int = 0
    """Seeds the train/test split and the weight init (same seed: same weights, bit for bit)."""
    p: int = 113
    """The (prime) modulus; the vocabulary is the p numbers plus ``=`` (token p)."""
    train_frac: float = 0.3
    """Fraction of all p * p pairs used for training; the rest is the test set."""
    d_model: int = 128
    """Width of the residual stream."""
    n_heads: int = 4
    """Attention heads."""
    d_head: int = 32
    """Width of each attention head."""
    d_mlp: int = 512
    """Hidden width of the ReLU MLP."""
    init_std: float | None = None
    """Standard deviation of the normal weight init; None means 1/sqrt(d_model), as in the paper."""
    steps: int = 15000
    """Full-batch optimizer steps (epochs): at lr 1e-3 the weight norm has settled by ~10k."""
    lr: float = 1e-3
    """AdamW learning rate after warm-up (the paper's)."""
    weight_decay: float = 1.0
    """AdamW decoupled weight decay, on every parameter."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    warmup_steps: int = 10
    """Steps of linear learning-rate warm-up."""
    eval_every: int = 50
    """Record train/test loss and accuracy every this many steps (for the card's history)."""
    snapshots: int = 25
    """Training snapshots saved (step 0 and the last step included)."""
    snapshot_power: float = 1.5
    """Snapshot i of n sits at ``steps * (i / (n - 1)) ** power``: >1 puts more snapshots early."""


class ModaddData(NamedTuple):
    """Token ids ``[n, 3]`` (``a b =``) and labels ``(a + b) % p`` of the train and test pairs."""

    train_tokens: Tensor
    train_labels: Tensor
    test_tokens: Tensor
    test_labels: Tensor


def all_pairs(p: int) -> tuple[Tensor, Tensor]:
    """Tokens ``[p * p, 3]`` for every pair (row ``a * p + b``) and their labels."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    tokens = torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1)
    return tokens, (a + b).flatten() % p


def model_pairs(model) -> Tensor:
    """Every ``a b =`` input of a modular-addition model, p = its vocabulary - 1: tokens [p * p, 3]."""
    if getattr(model, "dims", None) is None or model.tokenizer is not None:
        raise MechscopeError(
            f"{model.name} is not a modular-addition model: the `a b =` pairs are the inputs of "
            "zoo:modadd (and zoo:modadd@STEP); give it a text corpus instead"
        )
    return all_pairs(model.dims.d_vocab - 1)[0]


def data(p: int = 113, frac: float = 0.3, seed: int = 0) -> ModaddData:
    """A seeded split of all pairs: ``int(frac * p * p)`` for training, the rest for test."""
    tokens, labels = all_pairs(p)
    perm = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = int(frac * p * p)
    train, test = perm[:n_train].sort().values, perm[n_train:].sort().values
    return ModaddData(tokens[train], labels[train], tokens[test], labels[test])


def model_config(recipe: ModaddRecipe) -> ToyConfig:
    std = recipe.init_std if recipe.init_std is not None else 1 / math.sqrt(recipe.d_model)
    return ToyConfig(
        vocab_size=recipe.p + 1,
        n_ctx=3,
        d_model=recipe.d_model,
        n_layers=1,
        n_heads=recipe.n_heads,
        d_head=recipe.d_head,
        d_mlp=recipe.d_mlp,
        act="relu",
        norm="none",
        positions="learned",
        init_std=std,
    )


def build_model(recipe: ModaddRecipe) -> ToyTransformer:
    """A freshly initialised model; the init is seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return ToyTransformer(model_config(recipe)).float()


def last_logits(model: ToyTransformer, tokens: Tensor) -> Tensor:
    """``model(tokens).logits[:, -1]`` for a 1-layer, norm-free ToyTransformer, 3-4x faster.

    The same arithmetic as the model's forward, but Q/K/V are computed once per (position,
    token) and gathered, and the output, MLP and unembedding only at the last position
    (the only one the loss reads). Used for training; tests check it against the forward.
    """
    c = model.config
    if c.n_layers != 1 or c.norm != "none" or model.pos_embed is None:
        raise MechscopeError("last_logits needs a 1-layer ToyTransformer without norms and with learned positions")
    block = cast(Block, model.blocks[0])
    attn = block.attn
    (n, n_pos), h, d = tokens.shape, attn.n_heads, attn.d_head
    table = model.embed.weight[None] + model.pos_embed.weight[:n_pos, None]  # [pos, vocab, d_model]
    pos = torch.arange(n_pos, device=tokens.device).expand(n, n_pos)
    last = tokens[:, -1]
    q = attn.q(table[-1])[last].view(n, 1, h, d)
    k = attn.k(table)[pos, tokens].view(n, n_pos, h, d)
    v = attn.v(table)[pos, tokens].view(n, n_pos, h, d)
    pattern = ((q * k).sum(-1) / math.sqrt(d)).softmax(1)  # [n, k_pos, head]
    z = (pattern[..., None] * v).sum(1).reshape(n, h * d)
    resid = table[-1][last] + attn.o(z)
    if block.mlp is not None:  # as the forward: a model without MLPs (d_mlp=0) skips them
        resid = resid + block.mlp(resid)
    return model.unembed(resid)


def loss_and_accuracy(logits: Tensor, labels: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the p number tokens, in float64 (the loss reaches 1e-7), and accuracy."""
    logits = logits[:, :p].double()
    return F.cross_entropy(logits, labels), (logits.argmax(-1) == labels).double().mean()


def lr_factor(step: int, recipe: ModaddRecipe) -> float:
    """Linear warm-up over ``warmup_steps``, then constant."""
    return min(1.0, (step + 1) / max(1, recipe.warmup_steps))


def snapshot_steps(recipe: ModaddRecipe) -> list[int]:
    """The steps at which snapshots are saved (see ``snapshots`` and ``snapshot_power``)."""
    n = max(2, recipe.snapshots)
    return sorted({round(recipe.steps * (i / (n - 1)) ** recipe.snapshot_power) for i in range(n)})


def _save_snapshot(folder: Path, step: int, model: ToyTransformer) -> None:
    path = folder / "snapshots" / f"step_{step:06d}"
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().half().contiguous() for k, v in model.state_dict().items()},
        path / "model.safetensors",
        metadata={"step": str(step)},
    )


@torch.no_grad()
def evaluate(model: ToyTransformer, split: ModaddData, p: int) -> dict[str, float]:
    """Train and test loss and accuracy of a model."""
    out = {}
    for name, tokens, labels in (
        ("train", split.train_tokens, split.train_labels),
        ("test", split.test_tokens, split.test_labels),
    ):
        loss, acc = loss_and_accuracy(last_logits(model, tokens), labels, p)
        out[f"{name}_loss"], out[f"{name}_accuracy"] = loss.item(), acc.item()
    return out


def _train_loop(
    model: ToyTransformer, split: ModaddData, recipe: ModaddRecipe, tmp: Path, progress: bool
) -> list[list[float]]:
    """Full-batch AdamW for ``recipe.steps`` steps; saves snapshots; returns the loss history."""
    opt = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas, foreach=False
    )
    saves, history = set(snapshot_steps(recipe)), []
    bar = tqdm(total=recipe.steps, disable=not progress, desc="modadd", unit="step")
    for step in range(recipe.steps + 1):
        if step in saves:
            _save_snapshot(tmp, step, model)
        if step % recipe.eval_every == 0 or step == recipe.steps:
            m = evaluate(model, split, recipe.p)
            history.append([step, m["train_loss"], m["test_loss"], m["train_accuracy"], m["test_accuracy"]])
            bar.set_postfix(
                train=f"{m['train_loss']:.2e}", test=f"{m['test_loss']:.2e}", test_acc=f"{m['test_accuracy']:.3f}"
            )
        if step == recipe.steps:
            break
        for group in opt.param_groups:
            group["lr"] = recipe.lr * lr_factor(step, recipe)
        loss, _ = loss_and_accuracy(last_logits(model, split.train_tokens), split.train_labels, recipe.p)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
    bar.close()
    return history


TOLERANCE = {
    "test_accuracy_min": 0.99,
    "train_accuracy_min": 0.999,
    "test_loss_max": 0.05,
    "key_frequencies_max": 6,
    "key_frequency_share_min": 0.9,
    "note": (
        "same seed, machine, torch build and thread count: bit-identical weights; otherwise "
        "(another seed or platform) the thresholds above, while the key frequencies themselves "
        "and the exact step of grokking may differ"
    ),
}
"""What a retrained model must meet to count as a reproduction of the shipped one."""


def train(out_dir: Path, recipe: ModaddRecipe = ModaddRecipe(), *, progress: bool = True) -> dict:
    """Train the model and write its folder (weights, snapshots, ``card.json``, ``CARD.md``).

    Everything is written into a temporary sibling folder, which then replaces ``out_dir``.
    Returns the card (without the progress measures: `zoo.train("modadd")` adds them).
    """
    out_dir, t0 = Path(out_dir), time.perf_counter()
    split = data(recipe.p, recipe.train_frac, recipe.seed)
    model = build_model(recipe)
    tmp = staging_folder(out_dir)
    try:
        model.train()
        history = _train_loop(model, split, recipe, tmp, progress)
        model.eval()
        train_time = time.perf_counter() - t0
        card = _card(recipe, evaluate(model, split, recipe.p), history, train_time, model, split)
        model.save_pretrained(tmp)
        card["metrics"]["total_time_s"] = round(time.perf_counter() - t0, 1)  # the analysis adds its own time
        (tmp / "card.json").write_text(json.dumps(card, indent=1) + "\n")
        (tmp / "CARD.md").write_text(render_card(card))
        for path in tmp.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        replace_folder(tmp, out_dir)
        logger.info(
            "modadd: test accuracy %.4f after %d steps in %.0f s",
            card["metrics"]["test_accuracy"],
            recipe.steps,
            train_time,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return card


def _card(
    recipe: ModaddRecipe, metrics: dict, history: list, train_time: float, model: ToyTransformer, split: ModaddData
) -> dict:
    """The machine-readable model card."""
    return {
        "name": "modadd",
        "architecture": "ToyTransformer (mechscope_toy): 1 layer, no LayerNorm, ReLU MLP, learned positions",
        "task": f"(a + b) mod {recipe.p}; input tokens 'a b =' ('=' is token {recipe.p}), answer at the last position",
        "paper": "Nanda, Chan, Lieberum, Smith, Steinhardt (2023), Progress measures for grokking via "
        "mechanistic interpretability, arXiv:2301.05217",
        "dtype": "float32 (snapshots: float16)",
        "recipe": json.loads(json.dumps(dataclasses.asdict(recipe))),
        "metrics": {
            **metrics,
            "steps": recipe.steps,
            "train_time_s": round(train_time, 1),
            "n_train": len(split.train_labels),
            "n_test": len(split.test_labels),
            "n_params": sum(p.numel() for p in model.parameters()),
            "sum_squared_weights": sum(p.detach().double().pow(2).sum().item() for p in model.parameters()),
        },
        "history_columns": ["step", "train_loss", "test_loss", "train_accuracy", "test_accuracy"],
        "history": [[int(r[0])] + [float(f"{v:.6g}") for v in r[1:]] for r in history],
        "snapshot_steps": snapshot_steps(recipe),
        "tolerance": TOLERANCE,
        "software": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
        },
    }


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``)."""
    r, m, a = card["recipe"], card["metrics"], card.get("analysis", {})
    return f"""# zoo:modadd

A 1-layer transformer trained by mechscope on {card["task"]}. It groks: it memorises the
training pairs first and generalises much later, through the Fourier-multiplication circuit
of {card["paper"]}.

| | |
|---|---|
| layers / d_model / heads x d_head / d_mlp | 1 / {r["d_model"]} / {r["n_heads"]} x {r["d_head"]} / {r["d_mlp"]} (ReLU, no LayerNorm) |
| parameters | {m["n_params"]:,} |
| data | {m["n_train"]} train pairs ({r["train_frac"]:.0%}, seed {r["seed"]}), {m["n_test"]} test pairs |
| optimiser | full-batch AdamW, lr {r["lr"]:g} ({r["warmup_steps"]}-step warm-up), weight decay {r["weight_decay"]:g}, betas {tuple(r["betas"])} |
| steps | {m["steps"]} |
| final train loss / accuracy | {m["train_loss"]:.3g} / {m["train_accuracy"]:.2%} |
| final test loss / accuracy | {m["test_loss"]:.3g} / {m["test_accuracy"]:.2%} |
| sum of squared weights | {m["sum_squared_weights"]:.1f} |
| training wall time | {m["train_time_s"] / 60:.1f} min ({card["software"]["threads"]} thread(s), torch {card["software"]["torch"]}) |
| key frequencies (share of W_E's non-constant Fourier norm²) | {", ".join(map(str, a.get("key_frequencies", [])))} ({a.get("key_frequency_share", float("nan")):.1%}) |
| restricted / excluded loss (train pairs) | {a.get("restricted_loss", float("nan")):.3g} / {a.get("excluded_loss", float("nan")):.3g} |
| phases end at steps (memorisation, circuit formation, cleanup) | {", ".join(map(str, a.get("phase_ends", {}).values()))} |

The paper trained for 40k steps at lr 1e-3; {m["steps"]} steps at lr {r["lr"]:g} cover the same
three phases here (the weight norm has settled well before the end). {len(card["snapshot_steps"])} float16 snapshots (steps
{", ".join(map(str, card["snapshot_steps"]))}) are in `snapshots/` (`load_snapshots(folder)`),
their progress measures in `curves.safetensors` (`mechscope.toys.grokking`). Rebuild with
`mechscope zoo train modadd`; `card.json` holds every setting and the tolerances a retrained
model must meet.
"""


def load_snapshots(folder: Path) -> list[tuple[int, ToyTransformer]]:
    """The training snapshots of a modadd folder as ``(step, float32 model)``, by step."""
    folder = Path(folder)
    try:
        config = ToyConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise MechscopeError(
            f"{folder} holds no readable config.json ({err}); retrain with `mechscope zoo train modadd`"
        ) from None
    paths = sorted((folder / "snapshots").glob("step_*/model.safetensors"))
    if not paths:
        raise MechscopeError(
            f"{folder} has no snapshots/step_*/model.safetensors; retrain with `mechscope zoo train modadd`"
        )
    return [(int(path.parent.name.removeprefix("step_")), _load_snapshot(path, config)) for path in paths]


def _load_snapshot(path: Path, config: ToyConfig) -> ToyTransformer:
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise MechscopeError(
            f"snapshot {path} is corrupt or truncated ({err}); restore it or retrain with `mechscope zoo train modadd`"
        ) from None
    model = ToyTransformer(config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as err:
        raise MechscopeError(
            f"snapshot {path} does not match the folder's config.json: {str(err).splitlines()[0]}"
        ) from None
    return model.eval()
