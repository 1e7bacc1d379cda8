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

from .sections import _png

ROWS = (
    ("l0", "L0 (active latents per token)"),
    ("fvu", "FVU"),
    ("ce_loss_score", "CE loss score"),
    ("kl_div_score", "KL score"),
    ("dead_fraction", "dead fraction"),
    ("relative_bias", "relative bias"),
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


def section(model, run, sae_dir: str | Path | None = None, *, n_features: int = 4) -> str:
    """HTML for the dictionary in `sae_dir` on the report prompt; a note when there is none."""
    if sae_dir is None:
        return (
            "<h2>Sparse dictionary</h2><p>No dictionary given: train one with <code>mechscope sae train</code> "
            "and pass its folder to see its metrics and features here.</p>"
        )
    from ..dictionary.evaluate import evaluate
    from ..dictionary.features import top_contexts
    from ..dictionary.formats import read

    coder = read(sae_dir)
    if getattr(coder.cfg, "transcoder", False):
        from .transcoder import transcoder_section

        return transcoder_section(model, run, sae_dir, coder)
    from .transcoder import error_part, meta_part

    extra = error_part(sae_dir) + meta_part(sae_dir)
    site = html.escape(coder.cfg.hook_name)
    columns, parts = {}, []
    saved = Path(sae_dir) / "eval.json"
    if saved.is_file():
        columns["held-out (eval.json)"] = json.loads(saved.read_text())
    if run is not None and run.mask is not None and int(run.lengths[0]) >= 2:
        ids = run.tokens[:1, : int(run.lengths[0])]
        result = evaluate(model, coder, ids)
        columns["report prompt"] = result.to_dict()
        parts.append(_png(result.plot()))
        acts = coder.encode(
            model.run(ids, record=[coder.cfg.hook_name], logits=False).cache[coder.cfg.hook_name].flatten(2)[0].float()
        )
        strongest = acts.max(0).values.topk(min(n_features, coder.cfg.d_sae)).indices.tolist()
        found = top_contexts(model, coder, ids, strongest, k=3, context=6)
        parts.append("<p>Features most active on the prompt, with their strongest positions:</p>" + found.to_html())
    if not columns:
        return (
            f"<h2>Sparse dictionary</h2><p>Dictionary at <code>{site}</code> ({coder.cfg.d_sae} latents): no "
            "eval.json and no prompt to measure it on.</p>" + extra
        )
    return (
        f"<h2>Sparse dictionary</h2><p>{html.escape(coder.cfg.arch)} dictionary with {coder.cfg.d_sae} latents at "
        f"<code>{site}</code>. Scores: 1 is a perfect splice, 0 as bad as zeroing the site.</p>"
        + _table(columns)
        + "".join(parts)
        + extra
    )
