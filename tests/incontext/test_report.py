"""Report sections of in-context results: headings, the measured numbers, inline figures."""

from __future__ import annotations

import torch

from mechscope.incontext import builtin_tasks, function_vector, relation
from mechscope.incontext.function_vector import FunctionVectorResult
from mechscope.model import Model
from mechscope.report.incontext import fv_section, relation_section
from mechscope.zoo.icl import IclRecipe, build_model, make_tokenizer


def test_sections_render_saved_results(tmp_path):
    torch.manual_seed(0)
    model = Model(build_model(IclRecipe(d_model=16, d_mlp=16, d_head=4, n_layers=2)), make_tokenizer())
    fv = function_vector(model, builtin_tasks()["icl/copy"], n_heads=2, shots=2, n_prompts=8)
    loaded = FunctionVectorResult.load(fv.save(tmp_path / "fv"))
    assert torch.equal(loaded.effects, fv.effects) and loaded.heads == fv.heads
    html = fv_section(loaded)
    assert "Function vector: icl/copy" in html and "data:image/png;base64" in html
    assert f"{fv.tokens_saved:.1f} tokens replaced" in html
    rel = relation(model, [f"n{i} ;" for i in range(6)], [f"n{i}" for i in range(6)], "blocks.0.hook_resid_pre",
                   "blocks.1.hook_resid_post", ranks=[2, 16])  # fmt: skip
    html = relation_section(rel)
    assert "Linear relation" in html and f"faithfulness {rel.faithfulness:.3f}" in html
