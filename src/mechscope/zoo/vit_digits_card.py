"""`zoo:vit-digits`'s model card: card.json's fields and the human-readable CARD.md."""

from __future__ import annotations

import torch
from torch import Tensor

from mechscope.zoo import digits


def make_card(
    recipe: dict,
    split: digits.DigitsData,
    pred_test: Tensor,
    pred_train: Tensor,
    n_params: int,
    seconds: float,
    tolerance: dict,
) -> dict:
    """card.json: the recipe, test and train accuracy, the test confusion matrix, the time."""
    return {
        "name": "vit-digits",
        "architecture": (
            f"DigitsViT: {recipe['patch_size']}x{recipe['patch_size']} patches "
            f"({(8 // recipe['patch_size']) ** 2} + class token), {recipe['n_layers']} pre-norm blocks "
            f"(d_model {recipe['d_model']}, {recipe['n_heads']} heads, MLP {recipe['d_mlp']}) -> norm -> head"
        ),
        "recipe": recipe,
        "metrics": {
            "test_accuracy": round(float((pred_test == split.y_test).float().mean()), 4),
            "train_accuracy": round(float((pred_train == split.y_train).float().mean()), 4),
            "n_train": len(split.y_train),
            "n_test": len(split.y_test),
            "confusion_matrix_test": digits.confusion_matrix(split.y_test, pred_test).tolist(),
            "n_params": n_params,
        },
        "train_time_s": round(seconds, 1),
        "software": {"torch": torch.__version__, "threads": 1},
        "tolerance": tolerance,
    }


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``)."""
    r, m = card["recipe"], card["metrics"]
    return f"""# zoo:vit-digits

{card["architecture"]} ({m["n_params"]:,} parameters), trained on scikit-learn's bundled
8x8 digits, the split of zoo:digits: {m["n_train"]} training and {m["n_test"]} test images,
stratified and seeded {r["seed"]}. AdamW (peak lr {r["lr"]}, warm-up then cosine, weight decay
{r["weight_decay"]}), {r["epochs"]} epochs of batch {r["batch_size"]}, random shifts of up to
{r["max_shift"]} pixel; {card["train_time_s"]:.0f} s on one thread with torch {card["software"]["torch"]}.

| | |
|---|---|
| test accuracy | {m["test_accuracy"]:.2%} |
| train accuracy | {m["train_accuracy"]:.2%} |

Inputs are `mechscope.zoo.digits.normalise(images)` (`[batch, 1, 8, 8]`); outputs are logits
over the 10 digits. Sites: `patch_embed`, `blocks.{{l}}.ln1`, `blocks.{{l}}.attn.pattern`
(attention probabilities `[batch, head, token, token]`, token 0 the class token, then the
patches row by row), `blocks.{{l}}.mlp`, `norm`, `head`, each with `.hook_in` / `.hook_out`.
Grad-CAM reads `blocks.{r["n_layers"] - 1}.ln1.hook_out` by default; `mechscope.vision.rollout`
reads the attention patterns. Rebuild with `mechscope zoo train vit-digits --out DIR` and compare
with `mechscope zoo check vit-digits DIR`; a retrain should match `card.json` within its `tolerance`.
"""
