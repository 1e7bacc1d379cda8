"""`zoo:chain`'s model card (``CARD.md``) and figures: accuracy per depth, and attention from
the final token to each hop's assignment per layer (`chain.py` trains and measures)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from .transformer import ToyTransformer


def render_card(card: dict) -> str:
    """The human-readable model card (``CARD.md``)."""
    r, m = card["recipe"], card["metrics"]
    accs = " / ".join(f"{a:.3f}" for a in m["accuracy_by_depth"].values())
    hops = "\n".join(
        f"| {d} | " + " | ".join(f"h{row['head']}: hop {row['hop']} ({row['mass']:.2f})" for row in rows) + " |"
        for d, rows in m["hop_attention"].items()
    )
    return f"""# zoo:chain

Multi-hop variable binding with stacked attention heads. Prompts are shuffled assignments,
one character per token (vocabulary `{card["vocab"]}`, `^` = BOS), and a query, e.g.
`^C=B,A=7,E=4,D=C,B=A,?D` -> `7`; the answer is predicted at the final token (the queried
variable). Depth = assignments from the queried variable to its digit.

| | |
|---|---|
| layers / d_model / heads x d_head / d_mlp / positions | {r["n_layers"]} / {r["d_model"]} / {r["n_heads"]} x {r["d_head"]} / {r["d_mlp"]} / {4 * (r["n_statements"] + r["train_queries"]) - 1} |
| parameters | {m["n_params"]:,} |
| steps x batch | {r["steps"]} x {r["batch_size"]} |
| held-out accuracy, depth 1..{r["max_depth"]} ({r["n_statements"]} assignments, {r["eval_prompts"]} prompts each) | {accs} |
| training time | {card["train_time_s"]:.0f} s (torch {card["torch"]}, {card["threads"]} thread) |

Attention from the final token per layer: the head most attending to one assignment of the chain,
which hop it is (hop 1 assigns the queried variable) and the mass on its tokens `X=Y,`:

| depth | {" | ".join(f"layer {i}" for i in range(r["n_layers"]))} |
|---|{"---|" * r["n_layers"]}
{hops}

Training: a depth curriculum over {r["curriculum_steps"]} steps, {r["train_queries"]} queries per prompt, and for {r["scaffold_steps"]} steps
a decaying loss (weight {r["scaffold"]}) showing head 0 of each layer where to attend; then the task alone.
Rebuild with `mechscope.zoo.chain.train(out_dir, ChainRecipe())`.
"""


def plots(folder: Path, out_dir: Path) -> list[Path]:
    """Accuracy per depth (final and over training) and attention to each hop per layer."""
    from ..io import make_folder, write_figure
    from .chain import ChainRecipe, accuracy, attention_to_hops, eval_set

    folder, out_dir = Path(folder), make_folder(out_dir)
    card = json.loads((folder / "card.json").read_text())
    recipe = ChainRecipe(**card["recipe"])
    model = ToyTransformer.from_pretrained(folder).eval()
    evals = eval_set(recipe)
    accs = {d: accuracy(model, t, a) for d, (t, a, _) in evals.items()}
    figures = {
        "chain_accuracy.png": _accuracy_figure(accs, card["metrics"]["curve"]),
        "chain_hop_attention.png": _hop_figure(attention_to_hops(model, evals)),
    }
    for name, fig in figures.items():
        write_figure(out_dir / name, fig, bbox_inches=None)  # atomic; a full disk fails in one line
    return [out_dir / name for name in figures]


def _accuracy_figure(accs: dict[int, float], curve: list[list[float]]) -> Figure:
    fig = Figure(figsize=(9.0, 3.4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.bar([str(d) for d in accs], list(accs.values()), color="tab:blue")
    left.axhline(0.95, color="grey", ls="--", lw=1)
    left.set(xlabel="depth (hops)", ylabel="held-out accuracy", ylim=(0, 1.02), title="accuracy per depth")
    for d, column in enumerate(torch.tensor(curve)[:, 2:].T, start=1):
        right.plot(torch.tensor(curve)[:, 0], column, label=f"depth {d}")
    right.set(xlabel="training step", ylabel="held-out accuracy", ylim=(0, 1.02), title="during training")
    right.legend(fontsize=7)
    return fig


def _hop_figure(masses: dict[int, list]) -> Figure:
    """One panel per depth: for each layer, the largest head's mass on each hop's assignment."""
    fig = Figure(figsize=(3.0 * len(masses), 3.2), layout="constrained")
    for ax, (depth, per_layer) in zip(fig.subplots(1, len(masses)), masses.items()):
        best = torch.tensor(per_layer)[:, :, :depth].amax(1)  # [layer, hop]
        image = ax.imshow(best.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for layer, hop in torch.cartesian_prod(torch.arange(best.shape[0]), torch.arange(depth)).tolist():
            ax.text(
                hop,
                layer,
                f"{best[layer, hop]:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if best[layer, hop] > 0.6 else "black",
            )
        ax.set(
            xlabel="hop (1 = queried variable)",
            ylabel="layer",
            title=f"depth {depth}",
            xticks=range(depth),
            xticklabels=[str(k + 1) for k in range(depth)],
            yticks=range(best.shape[0]),
        )
    fig.colorbar(image, ax=fig.axes, shrink=0.8, label="attention from the query (best head)")
    return fig
