"""Report section: a sparse dictionary at work on the report prompt.

`section(model, run, sae_dir)`: the dictionary's metrics (from the `eval.json` that
`mechscope sae train` writes, and measured on the prompt), its feature-density histogram
and the features most active on the prompt with their top contexts there; the saved error
analysis (`sae_dir/error`) and meta-SAE (`sae_dir/meta`) when present; a transcoder folder
gets the transcoder section instead (report/transcoder.py). Without a dictionary folder, a
one-line note. Wire it with `functools.partial(section, sae_dir=...)`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .sections import _png, heading

ROWS = (
    ("l0", "L0 (active latents per token)"),
    ("fvu", "FVU"),
    ("ce_loss_score", "CE loss score"),
    ("kl_div_score", "KL score"),
    ("dead_fraction", "dead fraction (never active on the evaluation corpus)"),
    ("relative_bias", "relative bias"),
)
TITLE = "Sparse dictionary"
WHAT = (
    "how well the dictionary stands in for the model's activations at its site, and which of its latents "
    "are most active on the prompt, with the prompt positions where they fire."
)
NO_DENSITY = (
    "Which latents are dead (never active) needs a corpus: {n} prompt tokens cannot judge it, so the report "
    "prompt's column leaves it out{held}."
)


def _table(columns: dict[str, dict]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    body = []
    for key, label in ROWS:
        cells = "".join(f"<td>{_fmt(metrics.get(key))}</td>" for metrics in columns.values())
        body.append(f"<tr><td>{html.escape(label)}</td>{cells}</tr>")
    return f"<table class='kv'><tr><th></th>{head}</tr>{''.join(body)}</table>"


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _prompt_part(model, coder, run, n_features: int) -> tuple[dict, str, list[int]]:
    """The dictionary's metrics on the report prompt (dead fraction left out: a density
    needs a corpus) and its features most active there."""
    from ..dictionary.evaluate import evaluate
    from ..dictionary.features import top_contexts

    ids = run.tokens[:1, : int(run.lengths[0])]
    metrics = evaluate(model, coder, ids).to_dict()
    metrics["dead_fraction"] = None
    site = coder.cfg.hook_name
    acts = coder.encode(model.run(ids, record=[site], logits=False).cache[site].flatten(2)[0].float())
    peak = acts.max(0).values
    top = peak.topk(min(n_features, coder.cfg.d_sae))
    strongest = [i for i, v in zip(top.indices.tolist(), top.values.tolist()) if v > 0]  # a silent latent says nothing
    shown = _png(_l0_figure(model, ids[0], (acts > 0).sum(-1), site))
    if strongest:
        found = top_contexts(model, coder, ids, strongest, k=3, context=6)
        shown += "<p>Features most active on the prompt, with their strongest positions:</p>" + found.to_html()
    else:
        shown += "<p><b>No latent is active anywhere on the prompt.</b></p>"
    return metrics, shown, strongest


def _l0_figure(model, ids, l0, site: str):
    """Active latents at each prompt position: where the dictionary spends its budget."""
    from ..plots import figure, visible

    fig, ax = figure(max(6.0, 0.3 * min(len(ids), 128)), 2.6)
    ax.bar(range(len(ids)), l0.cpu().numpy(), color="#4c78a8")
    if len(ids) <= 128 and model.tokenizer is not None:
        ax.set_xticks(range(len(ids)), [visible(model.tokenizer.decode([int(t)]), 10) for t in ids], rotation=90)
        ax.set_xlabel("prompt token")
    else:
        ax.set_xlabel("prompt position")
    ax.set_ylabel("active latents (L0)")
    ax.set_ylim(0, max(1.0, float(l0.max())) * 1.1)
    ax.set_title(f"{site}: active latents per token on the report prompt", fontsize=9)
    return fig


def section(
    model, run, sae_dir: str | Path | None = None, *, store_dir: str | Path | None = None, n_features: int = 4
) -> str:
    """HTML for the dictionary in `sae_dir` on the report prompt; a note when there is none.
    `store_dir`, a feature store built from this dictionary on this model, adds the corpus's
    view: dead fraction, density histogram, and top contexts of the prompt's features."""
    if sae_dir is None:
        return heading(TITLE, WHAT) + (
            "<p>No dictionary given: train one with <code>mechscope sae train</code> and pass its folder "
            "(<code>--sae DIR</code>) to see its metrics and features here.</p>"
        )
    from ..dictionary.formats import read

    coder = read(sae_dir)
    if getattr(coder.cfg, "transcoder", False):
        from .transcoder import transcoder_section

        return transcoder_section(model, run, sae_dir, coder)
    from .crosscoder import other_model_warning
    from .transcoder import error_part, meta_part

    extra = error_part(sae_dir) + meta_part(sae_dir)
    warning = other_model_warning(model, coder)
    site = html.escape(coder.cfg.hook_name)
    columns: dict[str, dict] = {}
    parts = []
    store = None
    if store_dir is not None:
        from .store import corpus_metrics, open_checked

        store = open_checked(model, coder, store_dir)  # refused before any work when it does not match
    saved = Path(sae_dir) / "eval.json"
    if saved.is_file():
        columns["held-out (eval.json)"] = json.loads(saved.read_text())
    if store is not None:
        columns[f"feature store ({int(store.meta['finalized_tokens']):,} tokens)"] = corpus_metrics(store)
    strongest: list[int] = []
    if run is not None and run.mask is not None and int(run.lengths[0]) >= 2:
        columns["report prompt"], shown, strongest = _prompt_part(model, coder, run, n_features)
        held = "; the other columns are measured on a corpus" if len(columns) > 1 else ""
        parts += [f"<p>{NO_DENSITY.format(n=int(run.lengths[0]), held=held)}</p>", shown]
    if store is not None:
        from .store import store_part

        parts.append(store_part(store, strongest))
    if not columns:
        return (
            heading(TITLE, WHAT)
            + warning
            + (
                f"<p>Dictionary at <code>{site}</code> ({coder.cfg.d_sae} latents): no eval.json and no prompt to "
                "measure it on.</p>" + extra
            )
        )
    return (
        heading(TITLE, WHAT)
        + warning
        + f"<p>{html.escape(coder.cfg.arch)} dictionary with {coder.cfg.d_sae} latents at <code>{site}</code>. "
        "Scores: 1 is a perfect splice, 0 as bad as zeroing the site.</p>" + _table(columns) + "".join(parts) + extra
    )
