"""The dashboard's HTML, rendered on the server from the same dicts the JSON API returns.
Every string that came from a corpus, a tokenizer or a file goes through `esc` (so `<script>`
in a corpus shows as text); attribute values are quoted and escaped the same way."""

from __future__ import annotations

import functools
import html
import math
from urllib.parse import urlencode

NAV = (("/", "Features"), ("/prompt", "Prompt"), ("/circuits", "Circuits"))


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def visible(token: str) -> str:
    """A token with its whitespace made visible (newline ⏎, tab ⇥, an all-space token as ·)."""
    shown = token.replace("\n", "⏎").replace("\t", "⇥")
    return shown.replace(" ", "·") if shown.strip() == "" or shown != token else shown


def layout(title: str, body: str, scripts: str = "") -> str:
    links = "".join(f'<a href="{href}">{esc(name)}</a>' for href, name in NAV)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)} · mechscope</title><link rel='stylesheet' href='/static/style.css'>"
        f"</head><body><nav><b>mechscope</b>{links}</nav><main><h1>{esc(title)}</h1>{body}</main>"
        f"<div id='hover' class='hover' hidden></div><script src='/static/app.js'></script>{scripts}</body></html>"
    )


@functools.lru_cache(maxsize=1 << 16)
def _shown(token: str) -> tuple[str, str]:
    """(escaped repr for the title, escaped visible text) of a token: a vocabulary's worth of
    strings, escaped once per server rather than once per token of every page."""
    return esc(repr(token)), esc(visible(token))


def tokens_html(tokens: list[str], acts: list[float] | None, centre: int, top: float, value=None) -> str:
    """A context as spans; each carries its activation (`data-act`) and shows it on hover
    (a sample knows only its centre's activation, `value`)."""
    out = []
    for j, tok in enumerate(tokens):
        act = acts[j] if acts is not None else (value if j == centre else None)
        alpha = 0.0 if not act or top <= 0 else min(1.0, act / top)
        cls = "tok centre" if j == centre else "tok"
        title, text = _shown(tok)
        if act is not None:  # a number's text needs no escaping
            data, title = f' data-act="{act!r}"', f"{title} = {act:.4g}"
        else:
            data = ""
        out.append(
            f'<span class="{cls}"{data} title="{title}" style="background:rgba(255,120,0,{alpha:.3f})">{text}</span>'
        )
    return f'<div class="ctx">{"".join(out)}</div>'


def histogram_svg(edges: list[float], heights: list[int], title: str) -> str:
    """Bars over the log-spaced bins, with both axes labelled."""
    if not heights:
        return "<p class='note'>never active on this corpus: no histogram</p>"
    w, h, left, bottom = 520, 180, 50, 34
    top = max(heights)
    bw = (w - left - 10) / len(heights)
    bars = []
    for i, n in enumerate(heights):
        bh = (h - bottom - 10) * n / top
        x, y = left + i * bw, h - bottom - bh
        bars.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{bh:.1f}">'
            f"<title>{edges[i]:.3g} to {edges[i + 1]:.3g}: {n}</title></rect>"
        )
    ticks = "".join(
        f'<text x="{left + i * bw:.1f}" y="{h - bottom + 14}" class="tick">{edges[i]:.2g}</text>'
        for i in range(0, len(edges), max(1, len(edges) // 5))
    )
    return (
        f'<svg class="hist" viewBox="0 0 {w} {h}" role="img" aria-label="{esc(title)}"><title>{esc(title)}</title>'
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" class="axis"/>'
        f'<line x1="{left}" y1="10" x2="{left}" y2="{h - bottom}" class="axis"/>{"".join(bars)}{ticks}'
        f'<text x="{left}" y="20" class="tick">{top}</text>'
        f'<text x="{(w + left) / 2:.0f}" y="{h - 4}" class="label">activation (log-spaced bins)</text>'
        f'<text x="12" y="{(h - bottom) / 2:.0f}" class="label" transform="rotate(-90 12 {(h - bottom) / 2:.0f})">'
        "count</text></svg>"
    )


def _density(d: float) -> str:
    return "0" if d == 0 else f"{d:.3g} (10^{math.log10(d):.1f})"


def browser_page(stores: list[str], store: str, query: dict, page: dict) -> str:
    options = "".join(f"<option{' selected' if s == store else ''}>{esc(s)}</option>" for s in stores)
    sorts = "".join(
        f"<option{' selected' if s == query.get('sort', 'max') else ''}>{s}</option>"
        for s in ("max", "density", "mean", "count", "id")
    )
    form = (
        "<form class='search' method='get' action='/'>"
        f"<label>store <select name='store'>{options}</select></label>"
        f"<label>token <input name='token' value='{esc(query.get('token', ''))}'></label>"
        f"<label>explanation <input name='explanation' value='{esc(query.get('explanation', ''))}'></label>"
        f"<label>density ≥ <input name='min_density' size='6' value='{esc(query.get('min_density', ''))}'></label>"
        f"<label>≤ <input name='max_density' size='6' value='{esc(query.get('max_density', ''))}'></label>"
        f"<label>sort <select name='sort'>{sorts}</select></label>"
        f"<label><input type='checkbox' name='asc' value='1'{' checked' if query.get('asc') else ''}> ascending</label>"
        f"<label><input type='checkbox' name='dead' value='1'{' checked' if query.get('dead') else ''}> "
        "include dead latents</label>"
        "<button>search</button></form>"
    )
    rows = "".join(
        f"<tr><td><a href='/feature/{esc(store)}/{r['id']}'>{r['id']}</a></td><td>{esc(visible(r['top_token']))}</td>"
        f"<td>{r['max']:.4g}</td><td>{_density(r['density'])}</td><td>{esc(r['kind'])}</td>"
        f"<td>{esc(r['explanation'])}</td></tr>"
        for r in page["rows"]
    )
    n, per, total = page["page"], page["per_page"], page["total"]
    nav = []
    for label, target in (("← previous", n - 1), ("next →", n + 1)):
        if 0 <= target and target * per < total:
            nav.append(
                f"<a class='pager' href='/?{esc(urlencode({**query, 'store': store, 'page': target}))}'>{label}</a>"
            )
    table = (
        "<table class='latents'><thead><tr><th>latent</th><th>top token</th><th>max</th><th>density</th>"
        f"<th>kind</th><th>explanation</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    shown = f"<p class='note'>{total} latents match; page {n + 1} of {max(1, -(-total // per))}</p>"
    return layout("Feature browser", form + shown + table + " ".join(nav))


def _pairs_table(title: str, pairs, link_store: str | None = None, fmt: str = ".3f") -> str:
    rows = "".join(
        f"<tr><td>{f'<a href=/feature/{esc(link_store)}/{a}>{a}</a>' if link_store else esc(visible(str(a)))}</td>"
        f"<td>{b:{fmt}}</td></tr>"
        for a, b in pairs
    )
    return f"<section class='panel'><h3>{esc(title)}</h3><table>{rows or '<tr><td>none</td></tr>'}</table></section>"


def feature_page(store: str, f: dict) -> str:
    top = f["max"] or 1.0
    head = (
        f"<p class='stats'>density {_density(f['density'])} · active {f['count']} times · mean {f['mean']:.4g}"
        f" · max {f['max']:.4g}{' · ' + esc(f['kind']) if f['kind'] else ''}</p>"
        + (f"<p class='explanation'>{esc(f['explanation'])}</p>" if f["explanation"] else "")
    )
    examples = "".join(
        f"<div class='example'><span class='value'>{e['value']:.4g}</span>"
        f"{tokens_html(e['tokens'], e['acts'], e['centre'], top)}</div>"
        for e in f["top"]
    )
    samples = "".join(
        f"<div class='example'><span class='value'>{e['value']:.4g}</span>"
        f"{tokens_html(e['tokens'], None, e['centre'], top, e['value'])}</div>"
        for e in sorted(f["samples"], key=lambda e: -e["value"])
    )
    side = (
        _pairs_table("promoted tokens (logit effect)", f["logits_up"])
        + _pairs_table("suppressed tokens", f["logits_down"])
        + _pairs_table("decoder neighbours (cosine)", f["neighbours"], store)
        + _pairs_table("co-occurring at top examples (count)", f["co_occurring"], store, "d")
    )
    body = (
        f"<p><a href='/?store={esc(store)}'>← {esc(store)}</a></p>{head}"
        f"<div class='grid'><section class='panel'><h3>activation histogram</h3>"
        f"{histogram_svg(f['histogram']['edges'], f['histogram']['heights'], 'activations of latent ' + str(f['id']))}"
        f"</section>{side}</div>"
        f"<h2>top activations</h2><div id='top'>{examples or '<p>never active</p>'}</div>"
        f"<h2>samples across activation ranges</h2><div id='samples'>{samples or '<p>none</p>'}</div>"
    )
    return layout(f"Latent {f['id']} · {store}", body)


def prompt_page(stores: list[str], has_model: bool, probe: bool) -> str:
    if not has_model:
        return layout("Prompt", "<p class='note'>start the server with --model to analyse prompts</p>")
    boxes = "".join(
        f"<label><input type='checkbox' name='store' value='{esc(s)}' checked> {esc(s)}</label>" for s in stores
    )
    body = (
        "<form id='prompt-form'><textarea id='prompt' name='prompt' rows='4' cols='80'"
        " placeholder='def add(a, b):'></textarea><div>" + boxes + "</div><button>analyse</button></form>"
        f"<p class='note' id='status'>{'with' if probe else 'no'} confidence probe</p>"
        "<div id='result'></div>"
    )
    return layout("Prompt", body, "<script>mechscope.promptPage();</script>")


def circuits_page(names: list[str]) -> str:
    items = "".join(f"<li><a href='/circuit/{esc(n)}'>{esc(n)}</a></li>" for n in names)
    return layout("Circuits", f"<ul>{items}</ul>" if items else "<p class='note'>no --circuit given</p>")


def circuit_page(name: str) -> str:
    body = (
        f"<p class='note' id='circuit-info' data-name='{esc(name)}'></p>"
        "<svg id='circuit' class='circuit' role='img' aria-label='circuit graph'></svg><div id='edge-info'></div>"
    )
    return layout(f"Circuit {name}", body, "<script>mechscope.circuitPage();</script>")
