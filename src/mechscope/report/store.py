"""Report part: a feature store (`mechscope features build`) beside the SAE section.

`store_part(model, coder, store_dir, latents)`: the store's corpus-wide dead fraction and
density histogram (what one prompt cannot give), and for each of `latents` (the features
most active on the prompt) its density, top promoted tokens and top contexts from the
corpus, each token highlighted by its activation (`data-act` holds the value). The store
must have been built from this model and this dictionary (checked by identity).
"""

from __future__ import annotations

import html
from pathlib import Path

from ..errors import MechscopeError
from ..plots import visible
from .sections import _png

TOP_CONTEXTS = 3


def open_checked(model, coder, store_dir: str | Path):
    """The store, refused (one line) when it was built for another model or dictionary."""
    from ..dictionary.fingerprint import model_identity
    from ..features import FeatureStore, dictionary_identity

    store = FeatureStore(store_dir)
    models = store.meta.get("models") or {}
    if list(models.values()) != [model_identity(model)]:
        names = ", ".join(m.get("name", "?") for m in models.values()) or "an unknown model"
        raise MechscopeError(f"feature store {store_dir} was built on {names}, not {model.name}: give its own model")
    if store.meta.get("dictionary") != dictionary_identity(coder):
        raise MechscopeError(
            f"feature store {store_dir} was built from another dictionary than the --sae one: "
            "give the dictionary it was built from, or rebuild the store"
        )
    return store


def corpus_metrics(store) -> dict:
    """The dictionary's metrics that need a corpus, from the store."""
    return {"dead_fraction": len(store.dead()) / store.d_sae}


def _density_figure(store):
    from ..plots import figure

    n_tokens = int(store.meta["finalized_tokens"])
    density = store.array("count").double() / max(n_tokens, 1)
    floor = -(len(str(n_tokens)) + 1.0)
    values = density.clamp_min(10**floor).log10().numpy()
    fig, ax = figure(6.0, 2.8)
    ax.hist(values, bins=50, color="#4c78a8")
    ax.set_xlabel(f"log10 firing frequency on the corpus (dead latents at {floor:g})")
    ax.set_ylabel("latents")
    ax.set_title(f"Feature density over the store's {n_tokens:,} tokens", fontsize=9)
    return fig


def _context(example) -> str:
    """One top context, every token shaded by its activation (value in data-act and the tooltip)."""
    acts = example.acts or [example.value if j == example.centre else 0.0 for j in range(len(example.tokens))]
    top = max(max(acts), 1e-9)
    spans = []
    for j, (token, act) in enumerate(zip(example.tokens, acts)):
        edge = ";outline:1px solid #c33" if j == example.centre else ""
        spans.append(
            f"<span class='tok' data-act='{act:.4g}' title='{act:.4g}' "
            f"style='background:rgba(214,39,40,{max(act, 0.0) / top:.2f}){edge}'>{html.escape(visible(token))}</span>"
        )
    return f"<tr><td>{example.value:.3f}</td><td>{''.join(spans)}</td></tr>"


def _feature(store, latent: int) -> str:
    f = store.feature(latent)
    if f.count == 0:
        return f"<h4>feature {latent} in the corpus</h4><p>Never active on the store's corpus.</p>"
    promoted = ", ".join(f"<span class='tok'>{html.escape(visible(t))}</span>" for t, _ in f.logits_up[:5])
    rows = "".join(_context(e) for e in f.top[:TOP_CONTEXTS])
    explanation = f" — {html.escape(f.explanation)}" if f.explanation else ""
    return (
        f"<h4>feature {latent} in the corpus{explanation}</h4><p>density {f.density:.3g} "
        f"(active on {f.count:,} corpus tokens), "
        f"max {f.max:.3g}; promotes {promoted or '–'}</p>"
        f"<table><tr><th>max act</th><th>top contexts in the corpus (shade: activation)</th></tr>{rows}</table>"
    )


def store_part(store, latents: list[int]) -> str:
    """HTML: the density histogram and the store's view of `latents`."""
    n_tokens = int(store.meta["finalized_tokens"])
    return (
        f"<h3>From the feature store</h3><p>{html.escape(str(store.folder))}: {n_tokens:,} corpus tokens, "
        f"{len(store.dead()):,} of {store.d_sae:,} latents never active there. The features most active on the "
        "prompt, as the corpus shows them:</p>"
        + _png(_density_figure(store))
        + "".join(_feature(store, i) for i in latents)
    )
