"""`zoo:icl`'s model card (``CARD.md``) and figure: accuracy per task by number of
demonstrations (`icl.py` trains and measures)."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure


def _outputs(recipe: dict) -> str:
    if not recipe.get("own_outputs", False):
        return "The four item tasks all answer with items."
    return (
        "Each task answers in its own output vocabulary: copy `n3 -> c3`, successor `n3 -> n4`, "
        "predecessor `n3 -> p2`, permutation `n3 -> q12`, parity `n3 -> odd`. This is what makes "
        "function vectors work here: with all four item tasks answering with items (the previous "
        "weights: `own_outputs=False`, 1500 steps), 5-shot accuracy was 1.0 but their function "
        "vectors (3 heads, 4 shots, held-out queries) lifted zero-shot accuracy only to 0.12 (copy), "
        "0.38 (successor), 0.25 (predecessor), 0.38 (permutation); parity, alone in its vocabulary, "
        "reached 1.0: consistent with mean head outputs that carry the answers' vocabulary rather "
        "than the relation to the query."
    )


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``)."""
    r, m = card["recipe"], card["metrics"]
    rows = "\n".join(
        f"| {t} | {m['icl_accuracy'][t]:.3f} | {m['zero_shot_accuracy'][t]:.3f} | {m['chance'][t]:.2f} |"
        for t in card["tasks"]
    )
    heads = f"{r['n_heads']} x {r['d_head']}"
    return f"""# zoo:icl

In-context learning of hidden tasks. A prompt is demonstrations of one task, then a query:
`<s> n3 -> n4 ; n10 -> n11 ; n7 ->` -> `n8`. Items `n0`..`n{r["n_items"] - 1}`; tasks: copy,
successor, predecessor (mod {r["n_items"]}), a fixed permutation `{card["permutation"]}`, parity
(`even`/`odd`). {_outputs(r)} The task is never named; training sequences hold {r["n_demos"]}
demonstrations of one random task and the loss is taken at every arrow.

| | |
|---|---|
| layers / d_model / heads x d_head / d_mlp | {r["n_layers"]} / {r["d_model"]} / {heads} / {r["d_mlp"]} |
| parameters | {m["n_params"]:,} |
| steps x batch | {r["steps"]} x {r["batch_size"]} |
| training time | {card["train_time_s"]:.0f} s (torch {card["torch"]}, {card["threads"]} thread) |

Accuracy (greedy top-1, {r["eval_prompts"]} fixed prompts per task on distinct random items):

| task | {r["eval_shots"]}-shot | zero-shot | chance (1 / tasks) |
|---|---|---|---|
{rows}

Zero-shot, nothing tells the tasks apart: the model guesses one task's answer, so the
zero-shot accuracies sum to about 1 over tasks ("chance" = 1 / number of tasks).
Rebuild with `mechscope.zoo.icl.train(out_dir, IclRecipe())`.
"""


def plots(folder: Path, out_dir: Path) -> list[Path]:
    """Accuracy per task against the number of demonstrations before the query."""
    from ..io import make_folder, write_figure

    folder, out_dir = Path(folder), make_folder(out_dir)
    card = json.loads((folder / "card.json").read_text())
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.subplots()
    for task, acc in card["metrics"]["accuracy_by_shots"].items():
        ax.plot(range(len(acc)), acc, marker=".", label=task)
    ax.axhline(1 / len(card["tasks"]), color="grey", ls="--", lw=1, label="chance")
    ax.set(xlabel="demonstrations before the query", ylabel="accuracy", ylim=(0, 1.05), title="zoo:icl")
    ax.legend(fontsize=7)
    return [write_figure(out_dir / "icl_accuracy_by_shots.png", fig)]
