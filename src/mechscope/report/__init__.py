"""`mechscope report`: one self-contained HTML page about a model and a prompt.

Each section is a function (model, run) -> HTML (or "" when it does not apply; `run`
is None without a prompt) in `sections.py`; later methods add theirs to `SECTIONS`. The report computes nothing itself: it asks the model and the
methods, then formats.
"""

from __future__ import annotations

import functools
import html
import re
from datetime import datetime, timezone
from pathlib import Path

from ..errors import MechscopeError
from ..finite import SHOWN, first_nonfinite, nonfinite_parameters
from ..io import write_text
from . import concepts, crosscoder, incontext, sae, steering, vision
from .sections import SECTIONS, sites

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>mechscope report: {title}</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1d2330; padding: 0 1em; }}
h1 {{ font-size: 1.6em; margin-bottom: 0; }} h2 {{ border-bottom: 1px solid #d8dce4; padding-bottom: .2em; margin-top: 2em; }}
.sub {{ color: #667; margin-top: .2em; }}
table {{ border-collapse: collapse; font-size: 13px; }} td, th {{ border: 1px solid #e2e5ec; padding: 3px 7px; text-align: left; vertical-align: top; }}
th {{ background: #f3f5f9; }} code, .tok {{ font-family: ui-monospace, monospace; white-space: pre; background: #f3f5f9; border-radius: 3px; padding: 0 3px; }}
.kv td:first-child {{ color: #556; }} img {{ max-width: 100%; }} details {{ margin: .5em 0; }}
.wide {{ overflow-x: auto; }} .wide img {{ max-width: none; }}
.bar {{ display: inline-block; height: 9px; background: #4c78a8; margin-right: 4px; vertical-align: middle; }}
.what {{ color: #445; background: #f6f8fb; border-left: 3px solid #4c78a8; padding: .3em .6em; }}
nav.toc {{ background: #f6f8fb; border: 1px solid #e2e5ec; padding: .4em 1em; margin-top: 1em; }}
nav.toc ol {{ columns: 2; margin: .3em 0; }} .warn {{ color: #8a3b00; background: #fff4e5; padding: .3em .6em; }}
</style></head><body>
<h1>mechscope report</h1><p class="sub">{title} · generated {when}</p>
{index}
{body}
</body></html>
"""


def build_report(
    model,
    prompt: str | None,
    out_dir: Path,
    *,
    sae_dir: str | Path | None = None,
    crosscoder_dir: str | Path | None = None,
    store_dir: str | Path | None = None,
    vector_dir: str | Path | None = None,
    probe_dir: str | Path | None = None,
    eraser_dir: str | Path | None = None,
    fv_result: str | Path | None = None,
    relation_result: str | Path | None = None,
) -> Path:
    """Run `model` on `prompt` and write `out_dir/index.html` (images inlined).

    Sections that need a text run are left out when there is no prompt or the model
    does not read text (toy models, CNNs); zoo models add their figures. `sae_dir`, a
    dictionary folder, adds its metrics and features; `store_dir`, a feature store built from
    that dictionary (`mechscope features build`), adds the corpus's view of them;
    `crosscoder_dir` a crosscoder's; `vector_dir` a steering vector (`mechscope steer vector`);
    `probe_dir` a probe or confidence probe and `eraser_dir` a LEACE eraser (`mechscope probe`,
    `confidence`, `erase`); `fv_result` / `relation_result` a function vector's or a linear
    relation's saved result (`mechscope fv|relation ... --save-result DIR`). Image classifiers
    get attribution maps and their sanity checks."""
    if store_dir is not None and sae_dir is None:
        raise MechscopeError(f"--store {store_dir} needs --sae DIR: the dictionary the store was built from")
    _refuse_nonfinite_weights(model)
    run = None
    if prompt is not None:
        if model.tokenizer is None:
            raise MechscopeError(
                f"{model.name} has no tokenizer, so it cannot be run on a text prompt; leave out --prompt"
            )
        run = model.run(prompt, record="blocks.*.hook_resid_post")
        where = first_nonfinite({**run.cache, "the logits": run.logits})
        if where is not None:
            raise MechscopeError(
                f"{model.name} computes NaN or inf on this prompt (first at {where}): a report of it "
                "would show nothing; try another --prompt or a higher-precision --dtype"
            )
    sections = list(SECTIONS)
    sections.insert(sections.index(sites), vision.section)  # "" unless the model classifies images
    if vector_dir is not None:
        sections.append(functools.partial(steering.section, vector_dir=vector_dir))
    if probe_dir is not None or eraser_dir is not None:
        sections.append(functools.partial(concepts.section, probe_dir=probe_dir, eraser_dir=eraser_dir))
    if fv_result is not None:
        sections.append(functools.partial(incontext.saved_fv_section, folder=fv_result))
    if relation_result is not None:
        sections.append(functools.partial(incontext.saved_relation_section, folder=relation_result))
    if sae_dir is not None:
        sections.append(functools.partial(sae.section, sae_dir=sae_dir, store_dir=store_dir))
    if crosscoder_dir is not None:
        sections.append(functools.partial(crosscoder.section, crosscoder_dir=crosscoder_dir))
    parts = [section(model, run) for section in sections]
    body, index = _index("\n".join(part for part in parts if part))
    title = model.name if prompt is None else f"{model.name} on {prompt[:60]!r}"
    page = PAGE.format(
        title=html.escape(title),
        when=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        index=index,
        body=body,
    )
    return write_text(Path(out_dir) / "index.html", page)


def _index(body: str) -> tuple[str, str]:
    """The body with an id on every section heading (<h2>), and the table of contents
    that links to them."""
    entries: list[tuple[str, str]] = []

    def anchor(match: re.Match) -> str:
        slug = f"s{len(entries) + 1}-" + re.sub(r"[^a-z0-9]+", "-", html.unescape(match[1]).lower()).strip("-")
        entries.append((slug, match[1]))
        return f'<h2 id="{slug}">{match[1]}</h2>'

    body = re.sub(r"<h2>(.*?)</h2>", anchor, body)
    items = "".join(f'<li><a href="#{slug}">{text}</a></li>' for slug, text in entries)
    return body, f'<nav class="toc"><b>Contents</b><ol>{items}</ol></nav>'


def _refuse_nonfinite_weights(model) -> None:
    """Every section reads the weights or their activations: NaN or inf in them is reported, not drawn."""
    bad = nonfinite_parameters(model.hf, SHOWN)
    if bad:
        raise MechscopeError(
            f"{model.name} has NaN or inf in its weights ({', '.join(bad)}"
            f"{', ...' if len(bad) == SHOWN else ''}): restore or retrain the model; no report written"
        )


__all__ = ["build_report", "SECTIONS"]
