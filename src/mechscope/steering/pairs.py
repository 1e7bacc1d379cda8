"""Contrast pairs: (positive, negative) texts from lists, CSV or JSONL files, and CAA's
A/B-answer datasets (Rimsky et al. 2024: the same question, the answer letter differs).

File content is data: every loader reads strings and nothing else.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import MechscopeError

Pair = tuple[str, str]
POSITIVE_KEYS = ("positive", "pos", "positive_str", "chosen")
NEGATIVE_KEYS = ("negative", "neg", "negative_str", "rejected")
CAA_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")


def read_pairs(source: str | Path | Iterable[Pair], *, what: str = "pairs") -> list[Pair]:
    """Pairs from a list of (positive, negative) tuples or a file: .csv (columns positive,
    negative, or the first two), .jsonl / .json (objects with positive/negative, or CAA's
    question/answer_matching_behavior/answer_not_matching_behavior). Never empty."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise MechscopeError(f"no {what} file at '{path}': give a .csv, .jsonl or .json file")
        pairs = _read_file(path)
        where = f" in {path}"
    else:
        pairs = [_as_pair(p, i) for i, p in enumerate(source)]
        where = ""
    if not pairs:
        raise MechscopeError(f"no {what}{where}: give at least one (positive, negative) pair")
    for i, (pos, neg) in enumerate(pairs):
        if not pos.strip() or not neg.strip():
            raise MechscopeError(f"pair {i}{where} has an empty text: every pair needs two non-empty texts")
    return pairs


def _as_pair(item, index: int) -> Pair:
    if isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, str) for t in item):
        return (item[0], item[1])
    raise MechscopeError(f"pair {index} is {item!r}: give (positive, negative) text pairs")


def _read_file(path: Path) -> list[Pair]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise MechscopeError(f"cannot read {path}: {err}") from None
    if path.suffix.lower() == ".csv":
        return _from_csv(text, path)
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as err:
            raise MechscopeError(f"{path} is not valid JSON ({err})") from None
        if not isinstance(rows, list):
            raise MechscopeError(f"{path} must hold a JSON list of pair objects")
        return [_from_object(row, path, i) for i, row in enumerate(rows)]
    if path.suffix.lower() == ".jsonl":
        return [_from_object(_json_line(line, path, i), path, i) for i, line in _lines(text)]
    raise MechscopeError(f"{path}: pairs files are .csv, .jsonl or .json, not {path.suffix or 'no extension'}")


def _lines(text: str) -> list[tuple[int, str]]:
    return [(i, line) for i, line in enumerate(text.splitlines()) if line.strip()]


def _json_line(line: str, path: Path, index: int):
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise MechscopeError(f"{path} line {index + 1} is not valid JSON ({err.msg})") from None


def _from_csv(text: str, path: Path) -> list[Pair]:
    rows = [r for r in csv.reader(text.splitlines()) if any(cell.strip() for cell in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    pos = next((header.index(k) for k in POSITIVE_KEYS if k in header), None)
    neg = next((header.index(k) for k in NEGATIVE_KEYS if k in header), None)
    body = rows[1:] if pos is not None and neg is not None else rows
    pos, neg = (0, 1) if pos is None or neg is None else (pos, neg)
    pairs = []
    for i, row in enumerate(body):
        if len(row) <= max(pos, neg):
            raise MechscopeError(f"{path} row {i + 1} has {len(row)} column(s): each row needs a positive and negative")
        pairs.append((row[pos], row[neg]))
    return pairs


def _from_object(row, path: Path, index: int) -> Pair:
    if not isinstance(row, dict):
        raise MechscopeError(f"{path} item {index} is not a JSON object")
    if all(k in row for k in CAA_KEYS):
        return caa_pair(row["question"], row["answer_matching_behavior"], row["answer_not_matching_behavior"])
    pos = next((row[k] for k in POSITIVE_KEYS if k in row), None)
    neg = next((row[k] for k in NEGATIVE_KEYS if k in row), None)
    if not isinstance(pos, str) or not isinstance(neg, str):
        raise MechscopeError(
            f"{path} item {index} needs string fields positive and negative "
            f"(or CAA's {', '.join(CAA_KEYS)}); it has {sorted(row)}"
        )
    return (pos, neg)


def caa_pair(question: str, matching: str, not_matching: str) -> Pair:
    """CAA's A/B format: the question (with its choices) followed by each answer letter.
    The closing parenthesis is dropped ("(A)" -> "(A"), so the last token is the letter,
    where CAA reads the activation (read="last")."""
    for value in (question, matching, not_matching):
        if not isinstance(value, str):
            raise MechscopeError(f"CAA fields must be strings, got {value!r}")
    stem = question.rstrip() + "\n\nAnswer: "
    return (stem + matching.strip().removesuffix(")"), stem + not_matching.strip().removesuffix(")"))


def caa_pairs(items: Sequence[dict]) -> list[Pair]:
    """Pairs from CAA records (dicts with question, answer_matching_behavior, answer_not_matching_behavior)."""
    return read_pairs([caa_pair(*(item[k] for k in CAA_KEYS)) for item in items], what="CAA items")
