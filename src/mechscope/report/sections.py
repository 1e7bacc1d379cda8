"""Report sections: each takes (model, run) and returns an HTML fragment."""

from __future__ import annotations

import base64
import html
import io
import math
import warnings

import torch

from .. import zoo
from ..plots import figure, visible

MAX_TABLE_POSITIONS = 128
"""The predictions table lists at most the prompt's last this many positions."""
WIDE_PIXELS = 1500
"""Figures wider than this many pixels keep their size and scroll sideways in the page."""
MAX_LABELLED_POSITIONS = 128
"""Per-position figures name every token up to this many positions; longer prompts keep
all positions in a figure of this width, with position numbers for ticks (a figure wider
than 2^16 pixels cannot be drawn at all)."""


def _png(fig) -> str:
    """The figure as an inline PNG whose alt text names its title and axes."""
    from .figures import describe

    buf = io.BytesIO()
    with warnings.catch_warnings():  # tokens in scripts the default font lacks draw as boxes: say nothing
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    alt = html.escape(describe(fig), quote=True)
    data = buf.getvalue()
    image = f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
    width = int.from_bytes(data[16:20], "big")  # the PNG header's IHDR width
    # shrunk to the page, a very wide figure's labels become unreadable: it scrolls instead
    return f'<div class="wide">{image}</div>' if width > WIDE_PIXELS else image


def _figure(width: float, height: float):
    return figure(width, height)


def heading(title: str, what: str) -> str:
    """A section's heading and its one-line "what this shows" (`what` is HTML); the page's
    index is built from these headings."""
    return f"<h2>{html.escape(title)}</h2><p class='what'><b>What this shows:</b> {what}</p>"


def _tok(text: str) -> str:
    """A token in a table cell, whitespace drawn visibly (a raw newline breaks the cell)."""
    return f'<span class="tok" title="{html.escape(repr(text))}">{html.escape(visible(text))}</span>'


def _short_tokens(run) -> list[str]:
    return [visible(t, 12) for t in run.str_tokens()]


def _position_width(n: int) -> float:
    """Width (inches) of a figure with one column per position."""
    return max(6.0, 0.35 * min(n, MAX_LABELLED_POSITIONS))


def _position_ticks(ax, run, n: int) -> str:
    """Token labels on the x axis, or position numbers past MAX_LABELLED_POSITIONS; the
    note to print under the figure then."""
    if n <= MAX_LABELLED_POSITIONS:
        ax.set_xticks(range(n), _short_tokens(run), rotation=90, fontsize=8)
        return ""
    ax.set_xlabel("position")
    return f" All {n:,} positions, numbered: token labels are drawn up to {MAX_LABELLED_POSITIONS:,} positions."


def _metric_cell(key: str, value) -> str:
    """One model-card value as a short cell: a number, or a one-line summary of a series
    (a series is drawn in the Figures section, not printed)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return f"{len(value)} points (drawn under Figures)" if value else "none"
    if isinstance(value, dict):
        return f"{len(value)} entries"
    return str(value)


def model_card(model, run) -> str:
    info = model.info()
    keys = (
        "family",
        "model_type",
        "parameters",
        "dtype",
        "n_layers",
        "d_model",
        "n_heads",
        "n_kv_heads",
        "d_head",
        "d_mlp",
        "d_vocab",
    )
    rows = [(k, f"{info[k]:,}" if k == "parameters" else info[k]) for k in keys if k in info]
    if model.name.startswith("zoo:"):
        metrics = zoo.card(model.name[4:]).get("metrics", {})
        rows += [(k, _metric_cell(k, v)) for k, v in metrics.items()]
    table = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in info["notes"])
    what = "the model's shape" + (" and its training card's metrics" if model.name.startswith("zoo:") else "")
    return (
        heading("Model", what + ".")
        + f"<p><b>{html.escape(model.name)}</b></p><table class='kv'>{table}</table>"
        + (f"<p>Conventions:</p><ul>{notes}</ul>" if notes else "")
    )


def _predictions_figure(run, stats, tokens):
    fig, ax = _figure(_position_width(len(tokens)), 2.8)
    ax.plot(stats["top1"].numpy(), marker="o", label="top-1 probability")
    ax.plot(stats["p_actual"].numpy(), marker="x", label="probability of the actual next token")
    ax2 = ax.twinx()
    ax2.plot(stats["entropy"].numpy(), color="grey", linestyle="--", label="entropy (nats)")
    note = _position_ticks(ax, run, len(tokens))
    if not note:
        ax.set_xlabel("input token (the prediction is for the token after it)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability")
    ax2.set_ylabel("entropy (nats)")
    ax.set_title("Next-token predictions at each position", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    return fig, note


def predictions(model, run) -> str:
    if run is None:
        return ""
    if run.logits is None:
        return heading("Next-token predictions", "nothing: this model has no LM head, so it makes no predictions.")
    stats = run.next_token_stats()
    tokens = run.str_tokens()
    first = max(0, len(tokens) - MAX_TABLE_POSITIONS)
    rows = []
    for pos, token in enumerate(tokens[first:], start=first):
        top = run.top_tokens(5, position=pos)[0]
        cells = " ".join(
            f"<span class='bar' style='width:{max(1, round(60 * p))}px'></span>{_tok(t)} {p:.2f}" for t, p in top
        )
        actual = stats["p_actual"][pos].item()
        follows = "" if math.isnan(actual) else f"{actual:.3f} (rank {int(stats['rank_actual'][pos])})"
        rows.append(
            f"<tr><td>{pos}</td><td>{_tok(token)}</td><td>{cells}</td><td>{follows}</td>"
            f"<td>{stats['entropy'][pos].item():.2f}</td></tr>"
        )
    fig, note = _predictions_figure(run, stats, tokens)
    head = "<tr><th>pos</th><th>token</th><th>top-5 next tokens</th><th>p(actual next)</th><th>entropy (nats)</th></tr>"
    cut = f"<p><b>Table of the last {MAX_TABLE_POSITIONS:,} of {len(tokens):,} positions.</b></p>" if first else ""
    return (
        heading(
            "Next-token predictions",
            "what the model predicts after each token of the prompt, how sure it is, and how much "
            "probability it gave the token that actually comes next (rank 0 = its first choice). "
            "Whitespace is drawn visibly: ⏎ a newline, · a space.",
        )
        + f"<p>{note}</p>{_png(fig)}{cut}<table>{head}{''.join(rows)}</table>"
    )


def residual_norms(model, run) -> str:
    if run is None:
        return ""
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.dims.n_layers)]
    norms = torch.stack([run.cache[n][0].float().norm(dim=-1) for n in names]).cpu()
    fig, ax = _figure(_position_width(norms.shape[1]), 0.4 * len(names) + 1.8)
    image = ax.imshow(norms.numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(names)), [f"L{i}" for i in range(len(names))])
    ax.set_ylabel("block (output of)")
    note = _position_ticks(ax, run, norms.shape[1])
    if not note:
        ax.set_xlabel("input token")
    ax.set_title("Residual-stream norm after each block", fontsize=10)
    fig.colorbar(image, ax=ax, label="‖resid_post‖ (L2 norm)")
    return (
        heading(
            "Residual stream",
            "how large the residual stream is after each block at each position "
            "(<code>blocks.{l}.hook_resid_post</code>); outlier tokens stand out as bright cells.",
        )
        + f"<p>{note}</p>"
        + _png(fig)
    )


def sites(model, run) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(s.name)}</code></td><td>{html.escape(s.describe().split(' ', 1)[1])}</td></tr>"
        for s in model.sites
    )
    return (
        heading("Sites", "the names under which every activation can be recorded or edited.")
        + f"<details><summary>{len(model.sites)} named activations (TransformerLens names) "
        f"that can be recorded and edited</summary><table>{rows}</table></details>"
    )


def zoo_figures(model, run) -> str:
    """The zoo model's own figures (the paper's plots), when it has any."""
    name = model.name.removeprefix("zoo:")
    if not model.name.startswith("zoo:"):
        return ""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        images = [
            f"<figure>{_embed(path)}<figcaption>{html.escape(path.stem.replace('_', ' '))}</figcaption></figure>"
            for path in zoo.plots(name, Path(tmp))
        ]
    return heading("Figures", "the zoo model's own figures, drawn from its training record and weights.") + "".join(
        images
    )


def _embed(path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _lens(model, run) -> str:
    from .lens import section

    return section(model, run)


def _structure(model, run) -> str:
    from .structure import section

    return section(model, run)


def _attribution(model, run) -> str:
    from .reading import attribution

    return attribution(model, run)


def _patching(model, run) -> str:
    from .patching import section

    return section(model, run)


def _circuits(model, run) -> str:
    from .circuits import section

    return section(model, run)


def _heads(model, run) -> str:
    from .reading import heads

    return heads(model, run)


SECTIONS = [
    model_card,
    predictions,
    _lens,
    _attribution,
    _patching,
    _circuits,
    residual_norms,
    _heads,
    _structure,
    zoo_figures,
    sites,
]
