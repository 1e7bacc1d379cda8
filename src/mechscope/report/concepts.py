"""Report section: a saved probe (sweep or confidence probe) and/or eraser read on the report
prompt. `section(model, run, probe_dir=..., eraser_dir=...)` returns an HTML fragment:
per-token probability strips, the probe's held-out numbers and figures, the eraser's loss
cost on the prompt."""

from __future__ import annotations

import html
from pathlib import Path

from .sections import _png, heading

MAX_STRIP = 200
"""The strip shows at most the prompt's last this many tokens."""


def _colour(p: float) -> str:
    """Red (0) through yellow to green (1)."""
    p = min(max(p, 0.0), 1.0)
    red, green = (255, int(510 * p)) if p < 0.5 else (int(510 * (1 - p)), 255)
    return f"rgb({red},{green},120)"


def strip(pieces: list[str], probs: list[float], labels: list[str] | None = None) -> str:
    """Tokens as coloured boxes (colour = probability), probability (and label) on hover."""
    cells = []
    for i, (t, p) in enumerate(zip(pieces, probs)):
        tip = f"{p:.3f}" + (f" {labels[i]}" if labels else "")
        text = html.escape(t).replace("\n", "⏎")
        cells.append(
            f'<span class="tok" title="{html.escape(tip)}" style="background:{_colour(p)};'
            f'padding:1px 2px;margin:1px;display:inline-block">{text or "&nbsp;"}</span>'
        )
    return '<div style="line-height:1.9;font-family:monospace">' + "".join(cells) + "</div>"


def _ids(run):
    n = int(run.lengths[0]) if run.mask is not None else run.tokens.shape[1]
    return run.tokens[:1, max(0, n - MAX_STRIP) : n]


def _confidence(model, run, folder: Path) -> str:
    from ..concepts import ConfidenceProbe, score

    conf = ConfidenceProbe.load(folder)
    s = score(model, conf, _ids(run))
    rows = s.tokens()
    t = conf.metrics.get("test", {})
    table = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{m.get('auroc', float('nan')):.3f}</td>"
        f"<td>{m.get('brier', float('nan')):.3f}</td><td>{m.get('ece', float('nan')):.3f}</td></tr>"
        for name, m in t.items()
        if isinstance(m, dict)
    )
    entropy = f"<p>Predictive entropy AUROC: {t['entropy_auroc']:.3f}.</p>" if "entropy_auroc" in t else ""
    return (
        f"<h3>Confidence probe ({html.escape(conf.site)}, {html.escape(conf.calibration)} calibration)</h3>"
        "<p>Calibrated probability that the model's next-token prediction at each position is right "
        "(green: likely right, red: likely wrong; hover for the number).</p>"
        + strip([p for p, _ in rows], [v for _, v in rows])
        + "<p>Test split (texts never seen in training, site choice or calibration):</p>"
        "<table><tr><th>score</th><th>AUROC</th><th>Brier</th><th>ECE (15 bins)</th></tr>"
        + table
        + "</table>"
        + entropy
        + _png(conf.plot())
    )


def _sweep(model, run, folder: Path) -> str:
    from ..concepts import ProbeSweep

    sweep = ProbeSweep.load(folder)
    best = sweep.best
    best.check(model)
    recorded = model.run(_ids(run), record=best.site, logits=False)
    x = recorded.cache[best.site][0].flatten(1)
    if best.kind == "linear":
        chosen = best.predict(x)
        probs = [1.0] * len(chosen)
    else:
        proba = best.proba(x).detach()
        probs, chosen = proba.max(-1).values.tolist(), proba.argmax(-1)
    labels = [best.classes[int(c)] for c in chosen]
    return (
        f"<h3>Probes of {html.escape(', '.join(best.classes[:8]))}</h3>"
        f"<p>Held-out accuracy per site (majority class {sweep.majority:.3f}); the best site, "
        f"{html.escape(best.site)}, labels each token of the prompt below (colour: the probe's "
        "probability of its label; hover for label and probability).</p>"
        + _png(sweep.plot())
        + strip(recorded.str_tokens(0), probs, labels)
    )


def _eraser(model, run, folder: Path) -> str:
    import torch.nn.functional as F

    from ..concepts import Eraser

    eraser = Eraser.load(folder)
    eraser.check(model)
    ids = _ids(run)
    if ids.shape[1] < 2 or not model.has_lm_head:
        return ""
    losses = []
    for edits in ((), eraser.edits()):
        logits = model.run(ids, edits=edits).logits[0].float()
        losses.append(float(F.cross_entropy(logits[:-1], ids[0, 1:].to(logits.device))))
    return (
        f"<h3>LEACE eraser ({html.escape(eraser.method)})</h3><p>Erases {html.escape(', '.join(eraser.classes))} "
        f"at {html.escape(', '.join(eraser.sites))}. Next-token loss on this prompt: {losses[0]:.3f} nats "
        f"without, {losses[1]:.3f} with the eraser (cost {losses[1] - losses[0]:+.3f}).</p>"
    )


def section(model, run, *, probe_dir: str | Path | None = None, eraser_dir: str | Path | None = None) -> str:
    """The probe's and eraser's view of the report prompt; "" when neither is given."""
    if run is None or (probe_dir is None and eraser_dir is None):
        return ""
    parts = [
        heading(
            "Concepts",
            "what linear probes read from the residual stream on this prompt (per token, coloured by the "
            "probe's probability), how well they did on held-out data, and what erasing a concept costs.",
        )
    ]
    if probe_dir is not None:
        folder = Path(probe_dir)
        confidence = (folder / "calibration.safetensors").is_file()
        parts.append(_confidence(model, run, folder) if confidence else _sweep(model, run, folder))
    if eraser_dir is not None:
        parts.append(_eraser(model, run, Path(eraser_dir)))
    return "".join(parts)
