"""Family quirks that the shared oracles do not pin down: configs a table refuses, scaled
embeddings, per-prompt positions, and `mechscope info` on saved tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as T

import mechscope as ms
from mechscope.cli import main
from mechscope.errors import MechscopeError

from .tiny import GQA, IDS, _configs, tiny_model


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "cls, config, match",
    [
        (
            T.OPTForCausalLM,
            T.OPTConfig(
                num_hidden_layers=1,
                hidden_size=32,
                num_attention_heads=4,
                ffn_dim=64,
                word_embed_proj_dim=32,
                do_layer_norm_before=False,
                vocab_size=97,
                **IDS,
            ),
            "post-LN OPT",
        ),
        (
            T.OPTForCausalLM,
            T.OPTConfig(
                num_hidden_layers=1,
                hidden_size=32,
                num_attention_heads=4,
                ffn_dim=64,
                word_embed_proj_dim=16,
                vocab_size=97,
                **IDS,
            ),
            "projected in and out",
        ),
        (
            T.Qwen3MoeForCausalLM,
            T.Qwen3MoeConfig(
                **{**GQA, "num_hidden_layers": 2},
                **IDS,
                head_dim=8,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=16,
                mlp_only_layers=[1],
            ),
            "dense MLP",
        ),
    ],
)
def test_configs_a_table_cannot_serve_are_refused(cls, config, match):
    with pytest.raises(MechscopeError, match=match):
        ms.Model(cls(config))


@pytest.mark.parametrize("kind", ["gemma", "gemma3"])
def test_scaled_embedding_is_read_after_the_scale(kind, ids):
    """Gemma and Gemma 3 scale inside the embedding module (Gemma 2 in the model's forward)."""
    model = tiny_model(kind)
    run = model.run(ids, record=["hook_embed", "blocks.0.hook_resid_pre"])
    expected = model.W_E[ids] * torch.tensor(math.sqrt(model.dims.d_model), dtype=model.W_E.dtype)
    assert torch.allclose(run.cache["hook_embed"], expected, atol=1e-6)
    assert torch.equal(run.cache["hook_embed"], run.cache["blocks.0.hook_resid_pre"])


def test_granite_multipliers(ids):
    model = tiny_model("granite")
    c = model.hf.config
    run = model.run(
        ids, record=["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.0.hook_attn_out"]
    )
    assert torch.allclose(run.cache["blocks.0.hook_resid_pre"], run.cache["hook_embed"] * c.embedding_multiplier)
    o_proj = model.block_module(0, "self_attn.o_proj")(run.cache["blocks.0.attn.hook_z"].flatten(-2))
    assert torch.allclose(run.cache["blocks.0.hook_attn_out"], o_proj * c.residual_multiplier, atol=1e-6)
    plain = model.hf(ids, output_hidden_states=True)
    assert torch.allclose(plain.logits, model.hf.lm_head(plain.hidden_states[-1]) / c.logits_scaling, atol=1e-6)


def test_opt_positions_are_per_prompt(ids):
    model = tiny_model("opt")
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    run = model.run(ids, record=["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre"], attention_mask=mask)
    pos = run.cache["hook_pos_embed"]
    assert pos.shape == (3, 9, model.dims.d_model)
    assert torch.allclose(run.cache["hook_embed"] + pos, run.cache["blocks.0.hook_resid_pre"], atol=1e-6)
    table = model.module("decoder.embed_positions").weight
    assert torch.equal(pos[1], table[2:11])  # OPT's table starts at row 2


def test_parallel_families_have_no_resid_mid():
    for kind in ("gptj", "phi", "cohere", "stablelm_parallel", "falcon"):
        model = tiny_model(kind)
        assert model.adapter.parallel
        with pytest.raises(MechscopeError, match="in parallel"):
            model.table["blocks.0.hook_resid_mid"]
    assert "blocks.0.hook_resid_mid" in tiny_model("falcon_seq").table.by_name


@pytest.mark.parametrize("kind, family", [("qwen3", "Qwen3"), ("phi3", "Phi-3"), ("opt", "OPT"), ("olmo2", "OLMo 2")])
def test_info_on_a_saved_tiny_model(kind, family, tmp_path, capsys):
    cls, config = _configs()[kind]
    torch.manual_seed(0)
    cls(config).save_pretrained(tmp_path)
    assert main(["info", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == family and info["notes"]
    assert info["sites"]["blocks.1.attn.hook_k"]["head"] == (getattr(config, "num_key_value_heads", None) or 4)


@pytest.mark.parametrize("kind", ["opt", "mixtral"])
def test_flattened_token_sites_follow_the_rows_run(kind, ids):
    """OPT's MLP and MoE routers see [batch * pos, ...]: sites unflatten by the block's actual
    input, also when copies of the prompts join at that block, and edits write back flat."""
    model = tiny_model(kind)
    sites = ["blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"]
    sites += ["blocks.1.mlp.hook_router_logits"] if model.adapter.moe_router else ["blocks.1.mlp.hook_post"]
    plain = model.run(ids, record=sites)
    forked = model.run(ids, record=sites, copies={1: 2})
    for site in sites:
        value = plain.cache[site]
        assert torch.allclose(forked.cache[site], value.repeat(2, *[1] * (value.dim() - 1)), atol=1e-6), site
    zeroed = model.run(ids, record="blocks.1.hook_mlp_out", edits=[ms.edits.zero("blocks.1.hook_mlp_out", positions=3)])
    out = zeroed.cache["blocks.1.hook_mlp_out"]
    assert torch.equal(out[:, 3], torch.zeros_like(out[:, 3])) and torch.equal(
        out[:, 4:], plain.cache["blocks.1.hook_mlp_out"][:, 4:]
    )


def test_every_table_has_a_tiny_model_and_notes():
    """Each model type a table serves is checked by the oracles (a tiny config of that type),
    and each table tells `mechscope info` its conventions."""
    from mechscope.models import FAMILIES

    covered = {config.model_type for _, config in _configs().values()}
    for adapter in FAMILIES:
        assert adapter.notes, adapter.family
        missing = set(adapter.model_types) - covered
        assert not missing, (adapter.family, missing)
