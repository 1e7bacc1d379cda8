"""`zoo:vit-digits`: a tiny vision transformer on scikit-learn's 8x8 digits (the data of `zoo:digits`).

``patch_embed (conv p x p, stride p) -> [class token; patches] + pos_embed -> blocks.{l}
(pre-norm: ln1 -> attn -> +, ln2 -> mlp -> +) -> norm -> head`` on the class token. Every
stage is a named submodule, so the sites are ``blocks.1.ln1.hook_out``,
``blocks.1.attn.pattern.hook_out`` (attention probabilities ``[batch, head, token, token]``,
token 0 the class token, then the patches row by row), ``head.hook_out`` and so on. Inputs are
`mechscope.zoo.digits.normalise(images)` ``[batch, 1, 8, 8]``; outputs are logits ``[batch, 10]``.
``train(out_dir)`` is deterministic (one thread) and takes a few minutes on a CPU.
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
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.zoo import digits
from mechscope.zoo.storage import register_module_class, save_module_folder

logger = logging.getLogger(__name__)

TOLERANCE = {"test_accuracy_abs": 0.015, "train_accuracy_abs": 0.015}
"""How closely a retrain (other machine or torch build, same recipe) should match the card."""


class Attention(nn.Module):
    """Multi-head self-attention; `pattern` (an identity) exposes the probabilities as a site."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.pattern = nn.Identity()  # [batch, head, q_token, k_token], rows sum to 1
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.n_heads)
        z = self.pattern(scores.softmax(-1)) @ v  # [batch, head, token, d_head]
        return self.proj(z.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_mlp: int):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d_model), Attention(d_model, n_heads)
        self.ln2, self.mlp = nn.LayerNorm(d_model), MLP(d_model, d_mlp)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


@register_module_class("DigitsViT")
class DigitsViT(nn.Module):
    """A pre-norm ViT: one class token before a (image_size / patch_size)^2 patch grid."""

    prefix_tokens = 1
    """Tokens before the patch grid (the class token): what a patch-grid reshape drops."""
    pattern_sites = "blocks.*.attn.pattern.hook_out"
    """The attention probabilities of every block, in order: what attention rollout reads."""

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 2,
        channels: int = 1,
        d_model: int = 64,
        n_layers: int = 4,
        n_heads: int = 4,
        d_mlp: int = 128,
        n_classes: int = 10,
    ):
        super().__init__()
        if image_size % patch_size or d_model % n_heads:
            raise ValueError(f"image_size {image_size} / patch_size {patch_size}, d_model / n_heads must divide")
        self.image_size, self.patch_size = image_size, patch_size
        self.patch_embed = nn.Conv2d(channels, d_model, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch_size) ** 2, d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    @property
    def gradcam_site(self) -> str:
        """Where Grad-CAM reads a ViT by default: the last block's first norm (its patch
        tokens still reach the class token through that block's attention)."""
        return f"blocks.{len(self.blocks) - 1}.ln1.hook_out"

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, channels, image_size, image_size] -> [batch, n_classes]`` logits."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise MechscopeError(
                f"this ViT reads {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}: resize them"
            )
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # [batch, grid*grid, d_model], row by row
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), patches], 1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


@dataclass(frozen=True)
class VitDigitsRecipe:
    """Everything that determines the trained `zoo:vit-digits` weights."""

    seed: int = 0
    """Seeds the train/test split (as zoo:digits), the weight init, minibatch order and shifts."""
    test_fraction: float = 0.2
    """Fraction of the 1,797 images held out for testing (stratified by class)."""
    patch_size: int = 2
    """Side of a square patch: an 8x8 image becomes a 4x4 grid of 16 patches."""
    d_model: int = 64
    """Width of the residual stream."""
    n_layers: int = 4
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads per block."""
    d_mlp: int = 128
    """Hidden width of each MLP."""
    epochs: int = 60
    """Passes over the training split."""
    batch_size: int = 64
    """Images per optimizer step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up over the first 5% of steps, then cosine to 0)."""
    weight_decay: float = 0.05
    """AdamW decoupled weight decay."""
    max_shift: int = 1
    """Training images are shifted by up to this many pixels (zero-filled), a seeded augmentation."""


def shift(x: Tensor, generator: torch.Generator, max_shift: int) -> Tensor:
    """Each image moved by a random (dy, dx) in [-max_shift, max_shift], the gap filled with blank."""
    if max_shift == 0:
        return x
    blank = float(digits.normalise(torch.zeros(1, 1, 1)).flatten()[0])
    padded = F.pad(x, (max_shift,) * 4, value=blank)
    d = torch.randint(0, 2 * max_shift + 1, (len(x), 2), generator=generator)
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(d.tolist())])


def build(recipe: VitDigitsRecipe) -> DigitsViT:
    return DigitsViT(8, recipe.patch_size, 1, recipe.d_model, recipe.n_layers, recipe.n_heads, recipe.d_mlp, 10)


def fit(recipe: VitDigitsRecipe, split: digits.DigitsData, progress: bool = False) -> DigitsViT:
    """Train a freshly initialised ViT on ``split``'s training images; deterministic."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = build(recipe)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(split.y_train) / recipe.batch_size)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))
    )
    order = torch.Generator().manual_seed(recipe.seed + 1)
    model.train()
    for _ in tqdm(range(recipe.epochs), desc="vit-digits", unit="epoch", disable=not progress):
        perm = torch.randperm(len(split.y_train), generator=order)
        for batch in perm.split(recipe.batch_size):
            x = shift(split.x_train[batch], order, recipe.max_shift)
            loss = F.cross_entropy(model(x), split.y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def train(out_dir: Path, recipe: VitDigitsRecipe = VitDigitsRecipe(), *, progress: bool = True) -> dict:
    """Train the ViT; write the module folder with ``card.json`` and ``CARD.md`` (atomically)
    into ``out_dir``; return the card."""
    from mechscope.zoo.vit_digits_card import make_card, render_card

    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever the machine: reproducible bits
    try:
        split = digits.data(recipe.seed, recipe.test_fraction)
        model = fit(recipe, split, progress)
        pred_test, pred_train = digits.predict(model, split.x_test), digits.predict(model, split.x_train)
    finally:
        torch.set_num_threads(threads)
    card = make_card(
        json.loads(json.dumps(dataclasses.asdict(recipe))),
        split,
        pred_test,
        pred_train,
        sum(p.numel() for p in model.parameters()),
        time.perf_counter() - start,
        TOLERANCE,
    )
    logger.info("vit-digits: test accuracy %.4f", card["metrics"]["test_accuracy"])
    kwargs = {
        "image_size": 8,
        "patch_size": recipe.patch_size,
        "channels": 1,
        "d_model": recipe.d_model,
        "n_layers": recipe.n_layers,
        "n_heads": recipe.n_heads,
        "d_mlp": recipe.d_mlp,
        "n_classes": 10,
    }
    files = {"card.json": json.dumps(card, indent=2) + "\n", "CARD.md": render_card(card)}
    save_module_folder(model, kwargs, Path(out_dir), files)
    return card


def plots(folder: Path, out_dir: Path) -> list[Path]:
    """Write test samples with predictions and the test confusion matrix of the ViT in
    ``folder`` as PNGs into ``out_dir`` (attention maps are `mechscope.vision`'s)."""
    from mechscope.io import write_figure
    from mechscope.zoo.storage import load_module_folder

    folder = Path(folder)
    model = load_module_folder(folder)
    card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").is_file() else {}
    split = digits.data(card.get("recipe", {}).get("seed", 0))
    pred = digits.predict(model, split.x_test)
    figures = {
        "vit_digits_samples.png": digits._samples_figure(split.x_test[:32], split.y_test[:32], pred[:32]),
        "vit_digits_confusion.png": digits._confusion_figure(digits.confusion_matrix(split.y_test, pred)),
    }
    return [write_figure(Path(out_dir) / name, fig, bbox_inches=None) for name, fig in figures.items()]
