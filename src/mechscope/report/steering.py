"""Report section: a steering vector (`mechscope report --vector DIR`): what it is, how
strongly the report prompt already points along it, and the prompt continued with it."""

from __future__ import annotations

import html
from pathlib import Path

from .sections import _png, heading

MAX_NEW_TOKENS = 24


def _card(vector) -> str:
    rows = "".join(
        f"<tr><td><code>{html.escape(site)}</code></td><td>{float(d.norm()):.4g}</td>"
        f"<td>{vector.norms.get(site, 0.0):.4g}</td></tr>"
        for site, d in vector.directions.items()
    )
    what = (
        f"{html.escape(vector.method)} from {vector.n_pairs} pair(s), read at {html.escape(vector.read)}, "
        f"on {html.escape(vector.model_name or 'an unnamed model')}"
    )
    return (
        f"<p>{what}.</p><table><tr><th>site</th><th>direction norm</th><th>mean activation norm</th></tr>{rows}</table>"
    )


def _projection_figure(model, run, vector):
    """Per position, the prompt's activation projected on each unit direction."""
    from .sections import _figure

    length = int(run.lengths[0])
    recorded = model.run(run.tokens[:1, :length], record=vector.sites, logits=False).cache
    fig, ax = _figure(7, 3)
    for site, d in vector.directions.items():
        unit = (d / d.norm().clamp_min(1e-12)).to(recorded[site])
        ax.plot(range(length), (recorded[site][0] @ unit).float().cpu().numpy(), marker=".", label=site)
    ax.set_xlabel("position")
    ax.set_ylabel("projection on the direction")
    ax.legend(fontsize=7)
    return fig


def _generations(model, prompt: str, vector) -> str:
    from ..steering import generate

    known = all(vector.norms.get(s) for s in vector.sites)
    scaled = vector.normalized("activation") if known else vector
    unit = "mean activation norms" if known else "times the stored vector"
    rows = [("unsteered", model.generate(prompt, max_new_tokens=MAX_NEW_TOKENS))]
    for strength in (-0.5, 0.5, 1.0) if known else (-1.0, 1.0, 2.0):
        text = generate(model, prompt, (scaled, strength, "all"), max_new_tokens=MAX_NEW_TOKENS)
        rows.append((f"{strength:+g} {unit}", text))
    body = "".join(
        f"<tr><td>{html.escape(label)}</td><td><span class='tok'>{html.escape(str(text))}</span></td></tr>"
        for label, text in rows
    )
    return f"<table><tr><th>strength</th><th>greedy continuation</th></tr>{body}</table>"


def section(model, run, *, vector_dir: str | Path | None) -> str:
    """The steering vector in `vector_dir` on this model; "" without one. Without a prompt
    (or an LM head) only the vector's card is shown."""
    if vector_dir is None:
        return ""
    from ..steering import SteeringVector

    vector = SteeringVector.load(vector_dir)
    vector.check_model(model)
    parts = [
        heading(
            "Steering vector",
            "a direction added to the residual stream while the model runs; the projection shows how much "
            "the prompt already points along it, the continuations what adding it does.",
        ),
        _card(vector),
    ]
    if run is not None and run.mask is not None and model.has_lm_head and model.tokenizer is not None:
        prompt = model.tokenizer.decode(run.tokens[0, : int(run.lengths[0])], skip_special_tokens=True)
        parts += [_png(_projection_figure(model, run, vector)), _generations(model, prompt, vector)]
    return "".join(parts)
