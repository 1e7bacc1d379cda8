"""Where labels come from: a column of a CSV/JSONL file (one label per text), a function of
the model's tokens, or Python's own `tokenize` module (the token kind of each BPE token).

A per-token labeller is any callable `labeller(text, tokens) -> [label | None, ...]`, one
entry per model token of `text` (`tokens` is a `TextTokens`); None leaves a token out.

    texts, labels = read_table("reviews.jsonl", text="text", label="sentiment")
    kinds = python_token_kinds                       # NAME, keyword, OP, NUMBER, STRING, ...
    ends = token_function(lambda pieces: [p.endswith(":") for p in pieces])
"""

from __future__ import annotations

import csv
import io
import json
import keyword
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import MechscopeError

Label = str | int | bool


@dataclass(frozen=True)
class TextTokens:
    """One text as the model's tokenizer splits it."""

    ids: list[int]
    """Token ids, in order."""
    pieces: list[str]
    """Each token decoded on its own."""
    offsets: list[tuple[int, int]]
    """Character span [start, end) of each token in the text ((0, 0) for added special tokens)."""


Labeller = Callable[[str, TextTokens], Sequence[Label | None]]


def read_table(path: str | Path, *, text: str = "text", label: str = "label") -> tuple[list[str], list[str]]:
    """Texts and labels from two columns of a CSV (header row) or JSONL file (one object a line)."""
    path = Path(path)
    if not path.is_file():
        raise MechscopeError(f"no data file at '{path}': give a .csv or .jsonl file")
    raw = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(raw)))
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise MechscopeError(f"{path} line {n} is not JSON: write one JSON object per line") from None
    else:
        raise MechscopeError(f"labels come from a .csv or .jsonl file, not '{path.name}'")
    if not rows:
        raise MechscopeError(f"{path} holds no rows: give at least one labelled text")
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or text not in row or label not in row:
            names = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise MechscopeError(
                f"{path} row {n} lacks the column {text!r} or {label!r} (it has: {names}): "
                "name the columns with --text-column/--labels"
            )
    return [str(r[text]) for r in rows], [str(r[label]) for r in rows]


def token_function(fn: Callable[[list[str]], Sequence[Label | None]]) -> Labeller:
    """A per-token labeller from a function of the token strings (one label per token)."""

    def labeller(text: str, tokens: TextTokens) -> Sequence[Label | None]:
        return fn(tokens.pieces)

    return labeller


_KINDS = {
    tokenize.NAME: "NAME",
    tokenize.OP: "OP",
    tokenize.NUMBER: "NUMBER",
    tokenize.STRING: "STRING",
    tokenize.COMMENT: "COMMENT",
    tokenize.NEWLINE: "NEWLINE",
    tokenize.NL: "NEWLINE",
}
for _name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"):  # Python 3.12+ splits f-strings
    if hasattr(tokenize, _name):
        _KINDS[getattr(tokenize, _name)] = "STRING"
KINDS = ("NAME", "keyword", "OP", "NUMBER", "STRING", "COMMENT", "NEWLINE")
"""The token kinds `python_token_kinds` gives (whitespace and indentation get no label)."""


def _char_kinds(text: str) -> list[str | None]:
    """The Python token kind of every character of `text` (None: whitespace, or past a
    tokenize error: the part before the error keeps its kinds)."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    kinds: list[str | None] = [None] * len(text)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            kind = _KINDS.get(tok.type)
            if kind is None or not tok.string:
                continue
            if kind == "NAME" and keyword.iskeyword(tok.string):
                kind = "keyword"
            begin = starts[tok.start[0] - 1] + tok.start[1]
            end = starts[tok.end[0] - 1] + tok.end[1] if tok.end[0] - 1 < len(starts) else len(text)
            for i in range(begin, min(end, len(text))):
                kinds[i] = kind
    except (tokenize.TokenError, SyntaxError):
        pass  # an unfinished text (a file cut mid-string): what came before keeps its labels
    return kinds


def python_token_kinds(text: str, tokens: TextTokens) -> list[str | None]:
    """The kind of the Python token (NAME, keyword, OP, NUMBER, STRING, COMMENT, NEWLINE)
    under the first labelled character of each BPE token; None for whitespace-only tokens."""
    chars = _char_kinds(text)
    out: list[str | None] = []
    for start, end in tokens.offsets:
        out.append(next((chars[i] for i in range(start, min(end, len(chars))) if chars[i] is not None), None))
    return out
