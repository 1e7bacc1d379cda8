"""Report section: a crosscoder (across layers, or across two models) and where its latents live.

`section(model, run, crosscoder_dir)`: what the crosscoder reads, its held-out
reconstruction per block (the `eval.json` that `mechscope crosscoder train` writes), and
from the weights alone where each latent writes:
- a two-model crosscoder ("A:site", "B:site" blocks): the relative-decoder-norm histogram
  and the counts of A-only / shared / B-only latents (`mechscope.dictionary.diffing`);
- a crosscoder across layers of the report's model: latents by the block of their largest
  decoder norm, and its reconstruction of each block on the report prompt.
Without a folder, a one-line note. Wire it with `functools.partial(section, crosscoder_dir=...)`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .sections import _png, heading

TITLE = "Crosscoder"
WHAT = (
    "one dictionary read across several layers (or the same site of two models): which latents live in "
    "which layer or model, and how well it reconstructs each."
)


def other_model_warning(model, coder) -> str:
    """A page warning (and a log line) when `coder` was trained on other models than the
    report's; "" when it was trained on this one or does not say."""
    import logging

    from ..dictionary.attach import same_model

    trained_on = getattr(coder.cfg, "model_name", "") or ""
    names = [n.strip() for n in trained_on.split(" vs ")] if trained_on else []
    if model is None or not names or any(same_model(n, model.name) for n in names):
        return ""
    text = (
        f"This {'crosscoder' if coder.cfg.blocks else 'dictionary'} was trained on {' and '.join(names)}, not on "
        f"{model.name}: its latents describe {'those models' if len(names) > 1 else 'that model'}, and what it "
        "shows about this one may mean nothing."
    )
    logging.getLogger(__name__).warning(text)
    return f"<p class='warn'><b>Another model.</b> {html.escape(text)}</p>"


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _block_table(columns: dict[str, dict], blocks: list[str]) -> str:
    def row(label: str, values) -> str:
        return f"<tr><td>{label}</td>{''.join(f'<td>{_fmt(v)}</td>' for v in values)}</tr>"

    metrics = list(columns.values())
    rows = [row("FVU, all blocks", [m.get("fvu") for m in metrics])]
    rows += [
        row(f"FVU <code>{html.escape(b)}</code>", [m.get("fvu_per_block", {}).get(b) for m in metrics]) for b in blocks
    ]
    rows += [
        row(label, [m.get(key) for m in metrics])
        for key, label in (("l0", "L0 (active latents per token)"), ("dead_fraction", "dead fraction"))
    ]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    return f"<table class='kv'><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _main_blocks_plot(coder):
    from ..plots import figure

    main = coder.block_norms().argmax(-1)
    counts = [int((main == b).sum()) for b in range(coder.n_blocks)]
    fig, ax = figure(6.0, 0.35 * coder.n_blocks + 1.0)
    ax.barh(list(coder.cfg.blocks)[::-1], counts[::-1], color="#4c78a8")
    ax.set_xlabel("latents whose largest decoder norm is in this block")
    ax.set_ylabel("block (site)")
    ax.set_title(f"Where the {coder.cfg.d_sae} latents live", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    return fig


def section(model, run, crosscoder_dir: str | Path | None = None) -> str:
    """HTML for the crosscoder in `crosscoder_dir`; a note when there is none."""
    if crosscoder_dir is None:
        return heading(TITLE, WHAT) + (
            "<p>No crosscoder given: train one with <code>mechscope crosscoder train</code> "
            "(several layers, or <code>--vs</code> another model) and pass its folder to see it here.</p>"
        )
    from ..dictionary.base import SparseCoder
    from ..dictionary.crosscoder import Crosscoder, block_metrics
    from ..dictionary.diffing import diff, stacked_activations
    from ..errors import MechscopeError

    coder = SparseCoder.load(crosscoder_dir)
    if not isinstance(coder, Crosscoder):
        raise MechscopeError(f"{crosscoder_dir} holds a {coder.cfg.arch} dictionary, not a crosscoder")
    blocks = list(coder.cfg.blocks)
    two_models = coder.n_blocks == 2 and all(":" in b for b in blocks)
    columns, parts = {}, []
    saved = Path(crosscoder_dir) / "eval.json"
    if saved.is_file():
        columns["held-out (eval.json)"] = json.loads(saved.read_text())
    if two_models:
        result = diff(coder)
        c = result.counts()
        parts.append(
            f"<p>Relative decoder norm r = |d_B| / (|d_A| + |d_B|) per latent (A = "
            f"{html.escape(result.labels[0])}, B = {html.escape(result.labels[1])}), from the weights: "
            f"{c['a_only']} latents only in A (r &le; {result.threshold}), {c['shared']} shared, "
            f"{c['b_only']} only in B. Firing on data is not checked here (<code>mechscope crosscoder "
            "diff</code> does).</p>" + _png(result.plot())
        )
    else:
        parts.append(_png(_main_blocks_plot(coder)))
        if run is not None and all(b in model.table.by_name for b in blocks) and int(run.lengths[0]) >= 2:
            ids = run.tokens[:1, : int(run.lengths[0])]
            x = stacked_activations([(model, b) for b in blocks], ids)[0, 1:]  # the first position is left out
            columns["report prompt"] = block_metrics(coder, x)
    kind = "two models" if two_models else "layers" if coder.cfg.arch == "crosscoder" else "layers, weakly causal"
    table = _block_table(columns, blocks) if columns else "<p>No eval.json and no prompt to measure it on.</p>"
    return (
        heading(TITLE, WHAT)
        + other_model_warning(model, coder)
        + f"<p>{html.escape(coder.cfg.arch)} with {coder.cfg.d_sae} latents across "
        f"{kind}: {', '.join(f'<code>{html.escape(b)}</code>' for b in blocks)}.</p>" + table + "".join(parts)
    )
