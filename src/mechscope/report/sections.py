"""Report sections: each takes (model, run) and returns an HTML fragment."""

from __future__ import annotations

import base64
import html
import io
import math
import warnings

import torch

from .. import zoo

MAX_TABLE_POSITIONS = 128
"""The predictions table lists at most the prompt's last this many positions."""
MAX_LABELLED_POSITIONS = 128
"""Per-position figures name every token up to this many positions; longer prompts keep
all positions in a figure of this width, with position numbers for ticks (a figure wider
than 2^16 pixels cannot be drawn at all)."""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with warnings.catch_warnings():  # tokens in scripts the default font lacks draw as boxes: say nothing
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _tok(text: str) -> str:
    return f'<span class="tok">{html.escape(text)}</span>'


def _short_tokens(run) -> list[str]:
    return [t if len(t) <= 12 else t[:11] + "…" for t in run.str_tokens()]


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
        rows += [(k, f"{v:.4g}" if isinstance(v, float) else v) for k, v in metrics.items()]
    table = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in info["notes"])
    return f"<h2>Model</h2><p><b>{html.escape(model.name)}</b></p><table class='kv'>{table}</table>" + (
        f"<p>Conventions:</p><ul>{notes}</ul>" if notes else ""
    )


def predictions(model, run) -> str:
    if run is None:
        return ""
    if run.logits is None:
        return "<h2>Predictions</h2><p>This model has no LM head, so it makes no next-token predictions.</p>"
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
    fig, ax = _figure(_position_width(len(tokens)), 2.6)
    ax.plot(stats["top1"].numpy(), marker="o", label="top-1 probability")
    ax.plot(stats["p_actual"].numpy(), marker="x", label="probability of the actual next token")
    ax2 = ax.twinx()
    ax2.plot(stats["entropy"].numpy(), color="grey", linestyle="--", label="entropy (nats)")
    note = _position_ticks(ax, run, len(tokens))
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)
    head = "<tr><th>pos</th><th>token</th><th>top-5 next tokens</th><th>p(actual next)</th><th>entropy</th></tr>"
    cut = f"<p><b>Table of the last {MAX_TABLE_POSITIONS:,} of {len(tokens):,} positions.</b></p>" if first else ""
    return (
        f"<h2>Next-token predictions</h2><p>What the model predicts after each position of the prompt.{note}</p>"
        f"{_png(fig)}{cut}<table>{head}{''.join(rows)}</table>"
    )


def residual_norms(model, run) -> str:
    if run is None:
        return ""
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.dims.n_layers)]
    norms = torch.stack([run.cache[n][0].float().norm(dim=-1) for n in names]).cpu()
    fig, ax = _figure(_position_width(norms.shape[1]), 0.4 * len(names) + 1.5)
    image = ax.imshow(norms.numpy(), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(names)), [f"L{i}" for i in range(len(names))])
    note = _position_ticks(ax, run, norms.shape[1])
    fig.colorbar(image, ax=ax, label="‖resid_post‖")
    return (
        "<h2>Residual stream</h2><p>Norm of the residual stream after each block, per position "
        f"(<code>blocks.{{l}}.hook_resid_post</code>).{note}</p>" + _png(fig)
    )


def sites(model, run) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(s.name)}</code></td><td>{html.escape(s.describe().split(' ', 1)[1])}</td></tr>"
        for s in model.sites
    )
    return (
        f"<h2>Sites</h2><details><summary>{len(model.sites)} named activations (TransformerLens names) "
        f"that can be recorded and edited</summary><table>{rows}</table></details>"
    )


def zoo_figures(model, run) -> str:
    """The zoo model's own figures (the paper's plots), when it has any."""
    name = model.name.removeprefix("zoo:")
    if not model.name.startswith("zoo:") or name == "pycode":
        return ""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        images = [
            f"<figure>{_embed(path)}<figcaption>{html.escape(path.stem)}</figcaption></figure>"
            for path in zoo.plots(name, Path(tmp))
        ]
    return f"<h2>Figures</h2>{''.join(images)}"


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
