"""The all-types sweep (mechscope.models.sweep): every causal-LM model_type of transformers, built
tiny and offline, checked against Hugging Face's hidden_states. No type may crash or be silently
wrong; the exact counts may only grow; docs/architectures.md must agree with a fresh sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mechscope.models import sweep

DOCS = Path(__file__).resolve().parents[2] / "docs" / "architectures.md"
EXACT = ("exact (table)", "exact (automatic)")
# Measured on transformers 5.25 (2026-12-07): 26 by a table, 126 by the automatic adapter, 10 module
# paths only, 38 not built offline, of 200; 39 s of CPU (134 s wall on a busy 2-core machine).
AT_LEAST_EXACT = 152
AT_LEAST_TABLE = 26
REGENERATE = "regenerate it: python -m mechscope.models.sweep --write docs/architectures.md"


def test_a_few_types_end_in_the_right_outcome():
    results = {r.model_type: r for r in sweep.sweep(["gpt2", "olmo", "mamba", "musicgen"])}
    assert results["gpt2"].outcome == "exact (table)"
    assert results["olmo"].outcome in EXACT  # automatic until a table arrives
    assert results["mamba"].outcome == "module paths"
    assert "differ from Hugging Face's hidden_states" in results["mamba"].detail
    assert results["musicgen"].outcome == "not built"  # its config lacks a value its model reads


def test_tiny_configs_are_tiny():
    config = sweep.tiny_config("llama")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 2, 128)
    gpt2 = sweep.tiny_config("gpt2")  # token ids (50256 by default) moved into the vocabulary
    assert (gpt2.n_embd, gpt2.n_layer, gpt2.bos_token_id, gpt2.eos_token_id) == (32, 2, 1, 2)


def test_markdown_round_trip():
    results = [sweep.Result("a", "exact (table)", "A"), sweep.Result("b", "module paths", "x | y")]
    text = sweep.markdown(results)
    assert sweep.read_counts(text)["exact (table)"] == 1 and sweep.read_counts(text)["crash"] == 0
    assert sweep.read_outcomes(text) == {"a": "exact (table)", "b": "module paths"}


@pytest.fixture(scope="module")
def results() -> list[sweep.Result]:
    return sweep.sweep()


@pytest.mark.slow
def test_no_type_crashes_or_is_silently_wrong(results):
    bad = [(r.model_type, r.outcome, r.detail) for r in results if r.outcome in ("crash", "wrong")]
    assert not bad
    assert len(results) == len(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


@pytest.mark.slow
def test_exact_counts_do_not_shrink(results):
    n = sweep.counts(results)
    assert n["exact (table)"] + n["exact (automatic)"] >= AT_LEAST_EXACT, n
    assert n["exact (table)"] >= AT_LEAST_TABLE, n


@pytest.mark.slow
def test_committed_table_is_current(results):
    text = DOCS.read_text()
    committed = sweep.read_outcomes(text)
    assert set(committed) == {r.model_type for r in results}, REGENERATE
    # a new family table moves a type from "automatic" to "table": still exact, so only exactness must agree
    changed = {
        r.model_type: (committed[r.model_type], r.outcome)
        for r in results
        if (committed[r.model_type] in EXACT) != (r.outcome in EXACT)
    }
    assert not changed, f"{changed}: {REGENERATE}"
    counts = sweep.read_counts(text)
    assert sum(counts[o] for o in EXACT) == sum(r.outcome in EXACT for r in results), REGENERATE
