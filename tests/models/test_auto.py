"""The automatic adapter: on families that have a table it must find the same sites with the
same values; on what it cannot verify it must fall back to module paths and say so."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

import mechscope as ms
from mechscope.errors import MechscopeError
from mechscope.models.auto_model import (
    AUTO,
    PATHS,
    READ_ONLY,
    UNVERIFIED,
    AutoModel,
    ModulePathLM,
    auto_model,
)

from .tiny import tiny_model

TABLED = ["llama", "gpt2", "neox", "neox_seq", "qwen3"]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", TABLED)
def test_automatic_path_matches_the_table(kind, ids):
    table = tiny_model(kind)
    auto = ms.auto_model(table.hf, name=f"auto-{kind}")
    assert isinstance(auto, AutoModel)
    assert list(auto.table.by_name) == list(table.table.by_name)  # same sites, same order
    assert PATHS not in auto.provenance and auto.adapter.parallel == table.adapter.parallel
    a = auto.run(ids, record="*")
    t = table.run(ids, record="*")
    assert torch.equal(a.logits, t.logits)
    for name, value in t.cache.items():
        assert torch.equal(a.cache[name], value), name
    for layer in range(table.dims.n_layers):  # weights read the same way
        for w in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out", "b_Q", "b_O"):
            assert torch.equal(getattr(auto, w)(layer), getattr(table, w)(layer)), (w, layer)
    assert torch.equal(auto.to_logits(t.cache["blocks.1.hook_resid_post"]), t.logits)


def test_automatic_edits_match_the_table(ids):
    table, site = tiny_model("gpt2"), "blocks.0.attn.hook_z"
    auto = auto_model(table.hf)
    edit = [ms.edits.zero(site, heads=2, positions=3)]
    assert torch.equal(auto.run(ids, edits=edit).logits, table.run(ids, edits=edit).logits)


def test_resid_mid_that_an_edit_would_not_carry_is_read_only(ids):
    """Llama keeps its own copy of the stream for the skip connection before the MLP's norm, where
    hook_resid_mid is read: an edit there would reach the MLP only, so the automatic adapter
    offers it for recording and refuses edits."""
    auto = auto_model(tiny_model("llama").hf)
    assert any(k.startswith("hook_resid_mid") for k in auto.provenance[READ_ONLY])
    assert auto.run(ids, record="blocks.0.hook_resid_mid").cache["blocks.0.hook_resid_mid"].shape == (*ids.shape, 32)
    with pytest.raises(MechscopeError, match="not edited"):
        auto.run(ids, edits=[ms.edits.add("blocks.0.hook_resid_mid", torch.ones(32))])


def test_unverifiable_parts_fall_back_to_module_paths(ids):
    """Falcon's parallel block adds the attention output into the MLP's output in place, so a
    recorded hook_mlp_out would not be what the MLP returned: not offered; resid sites are."""
    hf = tiny_model("falcon").hf
    auto = auto_model(hf)
    assert "hook_resid_post" in auto.provenance[AUTO] and "hook_mlp_out" in auto.provenance[UNVERIFIED]
    assert PATHS in auto.provenance
    run = auto.run(ids, record=["blocks.*.hook_resid_post", "transformer.h.0.mlp.hook_out"])
    hidden = hf(ids, output_hidden_states=True).hidden_states
    assert torch.equal(run.cache["blocks.0.hook_resid_post"], hidden[1])
    assert run.cache["transformer.h.0.mlp.hook_out"].shape == (*ids.shape, 32)
    with pytest.raises(MechscopeError, match="could not verify"):
        auto.run(ids, record="blocks.0.hook_mlp_out")
    with pytest.raises(MechscopeError, match="could not verify"):
        auto.W_O(0)


class OddLM(nn.Module):
    """A language model in no familiar shape: no block list, a recurrent mixer, tied head."""

    def __init__(self, vocab: int = 50, d: int = 16):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.mix = nn.GRU(d, d, batch_first=True)
        self.gate = nn.Sequential(nn.Linear(d, d), nn.Sigmoid())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids)
        h, _ = self.mix(x)
        return (self.gate(h) * h + x) @ self.tok.weight.T


def test_odd_module_gets_module_paths_and_says_so():
    torch.manual_seed(0)
    odd = OddLM()
    model = auto_model(odd, name="odd")
    assert isinstance(model, ModulePathLM)
    assert list(model.provenance) == [PATHS, UNVERIFIED]
    assert "not a Hugging Face PreTrainedModel" in " ".join(model.provenance[UNVERIFIED])
    assert model.info()["provenance"] == model.provenance
    ids = torch.randint(0, 50, (2, 7))
    run = model.run(ids, record=["mix.hook_out", "gate.0.hook_out"])
    assert torch.equal(run.logits, odd(ids))
    assert torch.equal(run.cache["gate.0.hook_out"], odd.gate[0](odd.mix(odd.tok(ids))[0]))
    with pytest.raises(MechscopeError, match="unknown site"):
        model.run(ids, record="blocks.0.hook_resid_post")


def test_hf_model_without_block_list_gets_module_paths():
    """A registered-looking Hugging Face model whose blocks are not a ModuleList."""
    config = T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16)
    hf = T.GPT2LMHeadModel(config)
    hf.transformer.h = nn.Sequential(*hf.transformer.h)  # no ModuleList any more
    model = auto_model(hf)
    assert isinstance(model, ModulePathLM)
    assert "no list of identical blocks" in " ".join(model.provenance[UNVERIFIED])


def _untabled_folder(folder) -> None:
    """A tiny model of a type that has no table (yet), saved to `folder`."""
    from mechscope.models.families import adapter_for

    candidates = {"helium": T.HeliumConfig, "olmo": T.OlmoConfig, "glm": T.GlmConfig, "nemotron": T.NemotronConfig}
    kind = next((k for k in candidates if adapter_for(k) is None), None)
    if kind is None:
        pytest.skip("every candidate type has a table now")
    config = candidates[kind](
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        vocab_size=97,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)


def test_load_uses_the_automatic_adapter_for_untabled_types(tmp_path, ids):
    _untabled_folder(tmp_path)
    model = ms.load(str(tmp_path))
    assert isinstance(model, AutoModel) and "hook_resid_post" in model.provenance[AUTO]
    hidden = model.hf(ids, output_hidden_states=True).hidden_states
    run = model.run(ids, record="blocks.0.hook_resid_post")
    assert torch.equal(run.cache["blocks.0.hook_resid_post"], hidden[1])


def test_load_refuses_a_type_that_is_not_a_causal_lm(tmp_path):
    T.T5Config(d_model=16, num_layers=1, num_heads=2, d_ff=32, vocab_size=40).save_pretrained(tmp_path)
    with pytest.raises(MechscopeError, match="not supported"):
        ms.load(str(tmp_path))


def test_info_says_where_sites_come_from(tmp_path, capsys):
    from mechscope.cli import main

    _untabled_folder(tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"sites: {AUTO}: hook_embed, hook_resid_pre" in out
    assert main(["info", str(tmp_path), "--json"]) == 0
    assert '"provenance"' in capsys.readouterr().out
    table = tiny_model("llama")
    table.hf.save_pretrained(tmp_path / "llama")
    assert main(["info", str(tmp_path / "llama")]) == 0
    assert "sites: exact: adapter table: Llama" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["llama", "neox"])
def test_half_precision_verifies_the_same_sites(kind):
    """Tolerances follow the model's dtype: a bfloat16 model is not pushed to module paths."""
    full = auto_model(tiny_model(kind).hf)
    half = auto_model(tiny_model(kind, dtype=torch.bfloat16).hf)
    assert half.provenance[AUTO] == full.provenance[AUTO]
    assert half.adapter.qkv_layout == full.adapter.qkv_layout


def _untabled(kinds: list[str]) -> list[str]:
    from mechscope.models.families import adapter_for

    return [k for k in kinds if adapter_for(k) is None]


UNTABLED = _untabled(["olmo", "gpt_neo", "bloom", "helium", "biogpt", "persimmon", "codegen"])[:4]


@pytest.fixture(scope="module", params=UNTABLED)
def untabled(request) -> AutoModel:
    from mechscope.models.sweep import build

    model = auto_model(build(request.param), name=request.param)
    assert isinstance(model, AutoModel)
    return model


def test_untabled_shapes_match_declared_dims(untabled):
    ids = torch.randint(4, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    sites = [s for s in untabled.sites if "." not in s.name or s.name.startswith(("blocks.", "ln_final"))]
    run = untabled.run(ids, record=[s.name for s in sites])
    sizes = {"batch": 2, "pos": 7, "q_pos": 7, "k_pos": 7}
    for site in sites:
        expected = tuple(sizes[d] if s is None else s for d, s in zip(site.dims, site.sizes))
        assert tuple(run.cache[site.name].shape) == expected, site.name


def test_untabled_edits_act_where_they_should(untabled):
    """Replacing every editable site by its own value changes nothing; zeroing one head at one
    position leaves every earlier position of the next block's output alone."""
    ids = torch.randint(4, 100, (2, 7), generator=torch.Generator().manual_seed(3))
    editable = [s.name for s in untabled.sites if s.name.startswith("blocks.") and s.view.editable]
    run = untabled.run(ids, record=editable)
    again = untabled.run(ids, edits=[ms.edits.replace(n, v) for n, v in run.cache.items()])
    assert torch.allclose(again.logits, run.logits, atol=1e-6)
    if "blocks.0.attn.hook_z" in untabled.table.by_name:
        zeroed = untabled.run(
            ids, record="blocks.1.hook_resid_post", edits=[ms.edits.zero("blocks.0.attn.hook_z", heads=1, positions=4)]
        )
        before = untabled.run(ids, record="blocks.1.hook_resid_post").cache["blocks.1.hook_resid_post"]
        after = zeroed.cache["blocks.1.hook_resid_post"]
        assert torch.equal(after[:, :4], before[:, :4]) and not torch.equal(after[:, 4], before[:, 4])


def test_model_of_an_untabled_causal_lm_points_to_auto_model(tmp_path):
    """`Model(hf)` needs a table; for a causal LM without one the error names the way out."""
    _untabled_folder(tmp_path)
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(MechscopeError, match=r"ms\.auto_model\(hf, tokenizer\)"):
        ms.Model(hf)
