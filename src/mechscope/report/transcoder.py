"""Report sections for what lives beside a dictionary: a transcoder spliced in for its MLP,
and the saved error analysis and meta-SAE of an SAE.

`transcoder_section(model, run, folder)`: the transcoder's metrics from eval.json (written by
`mechscope transcoder train`) and measured on the report prompt — CE clean, with the
transcoder in place of the MLP, with the MLP zero-ablated — and its density histogram.
`error_part(folder)` / `meta_part(folder)`: HTML for `folder/error` (`mechscope sae error
--save`) and `folder/meta` (`mechscope sae meta --out`), or "" when they are absent.
`report/sae.py` calls these; they compute nothing but the prompt's evaluation.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from .sections import _png, heading

ROWS = (
    ("ce_clean", "CE clean (nats)"),
    ("ce_sae", "CE with the transcoder"),
    ("ce_zero", "CE with the MLP zeroed"),
    ("ce_loss_score", "CE loss score"),
    ("kl_sae", "KL(clean ‖ transcoder)"),
    ("kl_div_score", "KL score"),
    ("fvu", "FVU (against the MLP output)"),
    ("l0", "L0 (active latents per token)"),
    ("dead_fraction", "dead fraction (never active on the evaluation corpus)"),
)


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))


def _table(columns: dict[str, dict], rows) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in columns)
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_fmt(metrics.get(key))}</td>" for metrics in columns.values())
        + "</tr>"
        for key, label in rows
    )
    return f"<table class='kv'><tr><th></th>{head}</tr>{body}</table>"


def transcoder_section(model, run, folder: str | Path, coder) -> str:
    """HTML for the transcoder `coder` loaded from `folder`."""
    from ..dictionary.evaluate import evaluate

    cfg = coder.cfg
    columns, parts = {}, []
    saved = Path(folder) / "eval.json"
    if saved.is_file():
        columns["held-out (eval.json)"] = json.loads(saved.read_text())
    if run is not None and run.mask is not None and int(run.lengths[0]) >= 2:
        result = evaluate(model, coder, run.tokens[:1, : int(run.lengths[0])])
        columns["report prompt"] = {**result.to_dict(), "dead_fraction": None}
        parts.append(
            f"<p>Which latents are dead (never active) needs a corpus: {int(run.lengths[0])} prompt tokens cannot "
            "judge it, so the report prompt's column leaves it out.</p>"
        )
    intro = heading(
        "Transcoder",
        "how well a sparse stand-in for one MLP predicts what the MLP writes, and what splicing it in costs the "
        "model's next-token loss.",
    ) + (
        f"<p>{html.escape(cfg.arch)} transcoder with {cfg.d_sae} latents"
        f"{' and a linear skip' if cfg.skip else ''}: reads <code>{html.escape(cfg.hook_name)}</code>, predicts "
        f"<code>{html.escape(cfg.target_hook)}</code> and is spliced in its place. Scores: 1 is as good as the "
        "MLP, 0 as bad as zeroing it.</p>"
    )
    if not columns:
        return intro + "<p>No eval.json and no prompt to measure it on.</p>"
    return intro + _table(columns, ROWS) + "".join(parts)


def error_part(folder: str | Path) -> str:
    """The saved error analysis in `folder/error`, or ""."""
    from ..dictionary.error import ErrorAnalysis

    path = Path(folder) / "error"
    if not (path / "cfg.json").is_file():
        return ""
    result = ErrorAnalysis.load(path)
    rows = (
        ("norm_r2", "R² of ‖e‖ from x"),
        ("vector_r2", "R² of e from x (error variance explained)"),
        ("input_norm_r2", "R² of ‖e‖ from ‖x‖ alone"),
        ("mean_error_norm", "mean ‖e‖"),
        ("fvu", "FVU"),
        ("n_test", "test tokens"),
    )
    return (
        "<h3>How predictable the error is</h3><p>Ridge regressions from the input x to the error e = x − x̂ "
        "(and its norm), fitted on half of the held-out tokens and scored on the other half (Engels et al. "
        "2024). Near 1: a linear part of x the dictionary misses; near 0: noise to a linear probe.</p>"
        + _table({"test R²": result.to_dict()}, rows)
        + _png(result.plot())
    )


def meta_part(folder: str | Path, n_latents: int = 5) -> str:
    """The saved meta-SAE in `folder/meta`, or ""."""
    from ..dictionary.meta import MetaSAE

    path = Path(folder) / "meta"
    if not (path / "composition.safetensors").is_file():
        return ""
    meta = MetaSAE.load(path)
    info = meta.to_dict()
    items = "".join(
        f"<li>latent {i}: " + ", ".join(f"meta {j} ({w:.2f})" for j, w in meta.components(i)) + "</li>"
        for i in range(min(n_latents, len(meta.indices)))
    )
    return (
        f"<h3>Meta-SAE</h3><p>{info['meta_d_sae']} meta-latents ({html.escape(info['arch'])}) trained on the "
        f"unit decoder directions: each latent is built from {info['l0']:.2f} of them on average (FVU "
        f"{info['fvu']:.3f}, mean cosine {info['cosine']:.3f}).</p><ul>{items}</ul>" + _png(meta.plot())
    )
