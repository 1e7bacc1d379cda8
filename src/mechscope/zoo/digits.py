"""`zoo:digits`: a small CNN on scikit-learn's bundled 8x8 handwritten digits (no download).

``conv1 (1->16, 3x3) -> relu1 -> conv2 (16->32, 3x3) -> relu2 -> pool (2x2 max) -> flatten
-> fc (512 -> 10)``, every stage a named submodule, so its sites are ``conv1.hook_out``,
``relu2.hook_out``, ``pool.hook_out``, ``fc.hook_in`` and so on. Inputs are ``[batch, 1, 8, 8]``
images normalised by `normalise` (pixel / 16, then standardised with the dataset's mean and
std); outputs are logits ``[batch, 10]``. ``train(out_dir)`` is deterministic and takes
seconds; the split is an 80/20 stratified split seeded by the recipe.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope.io import write_figure
from mechscope.zoo.storage import load_module_folder, register_module_class, save_module_folder

logger = logging.getLogger(__name__)

PIXEL_MEAN, PIXEL_STD = 0.3053, 0.3760
"""Mean and std of pixel / 16 over all 1,797 images: fixed, so `normalise` needs no split."""

TOLERANCE = {"test_accuracy_abs": 0.01, "train_accuracy_abs": 0.01}
"""How closely a retrain (other machine or torch build, same recipe) should match the card."""


@register_module_class("DigitsCNN")
class DigitsCNN(nn.Module):
    """Two 3x3 convolutions (padding 1, so 8x8 maps), a 2x2 max pool and a linear classifier."""

    def __init__(self, channels1: int = 16, channels2: int = 32, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels1, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels1, channels2, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)  # [batch, channels2, 4, 4]
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels2 * 16, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        """``[batch, 1, 8, 8] -> [batch, n_classes]`` logits."""
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.flatten(self.pool(x)))


@dataclass(frozen=True)
class DigitsRecipe:
    """Everything that determines the trained `zoo:digits` weights."""

    seed: int = 0
    """Seeds the train/test split, the weight init and the order of minibatches."""
    test_fraction: float = 0.2
    """Fraction of the 1,797 images held out for testing (stratified by class)."""
    channels1: int = 16
    """Output channels of the first convolution."""
    channels2: int = 32
    """Output channels of the second convolution."""
    epochs: int = 40
    """Passes over the training split."""
    batch_size: int = 64
    """Images per optimizer step."""
    lr: float = 2e-3
    """Adam learning rate (constant)."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""


class DigitsData(NamedTuple):
    """The split: images ``[N, 1, 8, 8]`` (normalised, float32) and labels ``[N]`` (int64)."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def normalise(images: Tensor) -> Tensor:
    """Raw digits pixels (0..16) ``[N, 8, 8]`` -> model inputs ``[N, 1, 8, 8]``."""
    return ((images.float() / 16 - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)


def data(seed: int = 0, test_fraction: float = 0.2) -> DigitsData:
    """scikit-learn's bundled digits, split stratified by class with ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    idx_train, idx_test = train_test_split(
        range(len(digits.target)), test_size=test_fraction, stratify=digits.target, random_state=seed
    )
    x = normalise(torch.from_numpy(digits.images))
    y = torch.from_numpy(digits.target).long()
    tr, te = torch.tensor(idx_train), torch.tensor(idx_test)
    return DigitsData(x[tr], y[tr], x[te], y[te])


def predict(model: nn.Module, x: Tensor, batch: int = 512) -> Tensor:
    """Predicted classes ``[N]``."""
    with torch.no_grad():
        return torch.cat([model(c).argmax(-1) for c in x.split(batch)])


def confusion_matrix(y_true: Tensor, y_pred: Tensor, n_classes: int = 10) -> Tensor:
    """Counts ``[true class, predicted class]``."""
    return torch.bincount(y_true * n_classes + y_pred, minlength=n_classes**2).view(n_classes, n_classes)


def fit(recipe: DigitsRecipe, split: DigitsData, progress: bool = False) -> DigitsCNN:
    """Train a freshly initialised CNN on ``split``'s training images; deterministic."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = DigitsCNN(recipe.channels1, recipe.channels2)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    order = torch.Generator().manual_seed(recipe.seed + 1)
    model.train()
    for _ in tqdm(range(recipe.epochs), desc="digits", unit="epoch", disable=not progress):
        perm = torch.randperm(len(split.y_train), generator=order)
        for batch in perm.split(recipe.batch_size):
            loss = F.cross_entropy(model(split.x_train[batch]), split.y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def train(out_dir: Path, recipe: DigitsRecipe = DigitsRecipe(), *, progress: bool = True) -> dict:
    """Train the CNN; write the module folder with ``card.json`` and ``CARD.md`` (atomically)
    into ``out_dir``; return the card."""
    start, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(1)  # one reduction order, whatever the machine: reproducible bits
    try:
        split = data(recipe.seed, recipe.test_fraction)
        model = fit(recipe, split, progress)
        pred_test, pred_train = predict(model, split.x_test), predict(model, split.x_train)
    finally:
        torch.set_num_threads(threads)
    card = {
        "name": "digits",
        "architecture": "DigitsCNN: conv1 3x3 -> relu1 -> conv2 3x3 -> relu2 -> pool 2x2 -> fc",
        "recipe": json.loads(json.dumps(dataclasses.asdict(recipe))),
        "metrics": {
            "test_accuracy": round(float((pred_test == split.y_test).float().mean()), 4),
            "train_accuracy": round(float((pred_train == split.y_train).float().mean()), 4),
            "n_train": len(split.y_train),
            "n_test": len(split.y_test),
            "confusion_matrix_test": confusion_matrix(split.y_test, pred_test).tolist(),
            "n_params": sum(p.numel() for p in model.parameters()),
        },
        "train_time_s": round(time.perf_counter() - start, 1),
        "software": {"torch": torch.__version__, "threads": 1},
        "tolerance": TOLERANCE,
    }
    logger.info("digits: test accuracy %.4f", card["metrics"]["test_accuracy"])
    kwargs = {"channels1": recipe.channels1, "channels2": recipe.channels2, "n_classes": 10}
    save_module_folder(
        model, kwargs, Path(out_dir), {"card.json": json.dumps(card, indent=2) + "\n", "CARD.md": render_card(card)}
    )
    return card


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``)."""
    r, m = card["recipe"], card["metrics"]
    return f"""# zoo:digits

{card["architecture"]} ({m["n_params"]:,} parameters), trained on scikit-learn's bundled
8x8 digits: {m["n_train"]} training and {m["n_test"]} test images, a stratified split seeded
{r["seed"]}. AdamW (lr {r["lr"]}, weight decay {r["weight_decay"]}), {r["epochs"]} epochs of
batch {r["batch_size"]}, {card["train_time_s"]:.0f} s with torch {card["software"]["torch"]}.

| | |
|---|---|
| test accuracy | {m["test_accuracy"]:.2%} |
| train accuracy | {m["train_accuracy"]:.2%} |

Inputs are `mechscope.zoo.digits.normalise(images)` (`[batch, 1, 8, 8]`); outputs are logits
over the 10 digits. Sites: `conv1`, `relu1`, `conv2`, `relu2`, `pool`, `flatten`, `fc`, each
with `.hook_in` / `.hook_out`. Rebuild with `mechscope.zoo.digits.train(out_dir, DigitsRecipe())`;
a retrain elsewhere should match `card.json` within its `tolerance`.
"""


def plots(folder: Path, out_dir: Path) -> list[Path]:
    """Write test samples with predictions, the test confusion matrix and the first-layer
    filters of the model in ``folder`` as PNGs into ``out_dir``."""
    folder = Path(folder)
    model = load_module_folder(folder)
    seed = json.loads((folder / "card.json").read_text())["recipe"]["seed"] if (folder / "card.json").is_file() else 0
    split = data(seed)
    pred = predict(model, split.x_test)
    figures = {
        "digits_samples.png": _samples_figure(split.x_test[:32], split.y_test[:32], pred[:32]),
        "digits_confusion.png": _confusion_figure(confusion_matrix(split.y_test, pred)),
        "digits_filters.png": _filters_figure(cast(nn.Conv2d, model.conv1).weight.detach()),
    }
    return [write_figure(Path(out_dir) / name, fig, bbox_inches=None) for name, fig in figures.items()]


def _samples_figure(x: Tensor, y: Tensor, pred: Tensor):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.6), layout="constrained")
    for k, ax in enumerate(fig.subplots(4, 8).flat):
        ax.imshow(x[k, 0].numpy(), cmap="gray_r")
        ax.set_title(f"pred {int(pred[k])} / {int(y[k])}", fontsize=8, color="black" if pred[k] == y[k] else "red")
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle("test images: predicted / true label (red: wrong)", fontsize=10)
    return fig


def _confusion_figure(cm: Tensor):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 4.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(cm.numpy(), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(
                    j,
                    i,
                    str(int(cm[i, j])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if cm[i, j] > cm.max() / 2 else "black",
                )
    ax.set_xticks(range(10)), ax.set_yticks(range(10))
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    acc = cm.diagonal().sum() / cm.sum()
    ax.set_title(f"test confusion matrix (accuracy {acc:.2%})", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="test images")
    return fig


def _filters_figure(weight: Tensor):
    from matplotlib.figure import Figure

    n = weight.shape[0]
    cols = 8
    fig = Figure(figsize=(1.2 * cols, 1.3 * ((n + cols - 1) // cols) + 0.4), layout="constrained")
    lim = float(weight.abs().max())
    for k, ax in enumerate(fig.subplots((n + cols - 1) // cols, cols, squeeze=False).flat):
        ax.set_xticks([]), ax.set_yticks([])
        if k < n:
            ax.imshow(weight[k, 0].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"conv1[{k}]", fontsize=7)
    fig.suptitle("first-layer 3x3 filters (red +, blue -)", fontsize=10)
    return fig
