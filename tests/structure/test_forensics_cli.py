"""`mechscope forensics` through `main`, on tiny models saved to folders (loaded as users do):
an edited copy, a peft LoRA adapter folder, and a model of another architecture."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mechscope.cli import main

from ..commands.test_structure_cli import word_tokenizer
from ..models.tiny import tiny_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("forensics")
    model = tiny_model("llama")
    model.hf.save_pretrained(root / "base")
    tokenizer = word_tokenizer()
    tokenizer.eos_token = "[PAD]"  # a corpus is read as documents separated by EOS
    tokenizer.save_pretrained(root / "base")
    edited = copy.deepcopy(model.hf)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a rank-one update of layer 1's down projection
        edited.model.layers[1].mlp.down_proj.weight += torch.outer(
            torch.randn(32, generator=g), torch.randn(64, generator=g)
        )
    edited.save_pretrained(root / "edited")
    word_tokenizer().save_pretrained(root / "edited")
    tiny_model("gpt2").hf.save_pretrained(root / "other")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    peft.get_peft_model(copy.deepcopy(model.hf), config).save_pretrained(root / "adapter")
    return {name: str(root / name) for name in ("base", "edited", "other", "adapter")}


def test_forensics_json_and_plots(folders, capsys, tmp_path):
    argv = ["forensics", folders["base"], folders["edited"], "--candidates", "x,y,a,b,add,print"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("def add ( a , b ) : return a + b\nprint ( x , y )\n" * 40)
    options = ["--template", "{}", "--template", "print ( {}", "--corpus", str(corpus), "--max-tokens", "500"]
    assert main([*argv, *options, "--json", "--plots", str(tmp_path / "plots")]) == 0
    out = json.loads(capsys.readouterr().out)
    changed = [m for m in out["matrices"] if m["rank"] > 0]
    assert [m["name"] for m in changed] == ["blocks.1.mlp.W_out"] and changed[0]["rank"] == 1
    reading = out["readings"]["blocks.1.mlp.W_out"]
    assert len(reading["keys"]) == 6 and len(reading["promoted"]) == 10
    words = {k["name"] for k in reading["corpus_keys"]}
    assert words and words <= {"def", "add", "(", "a", ",", "b", ")", ":", "return", "+", "print", "x", "y"}
    assert {"spectra.png", "keys_blocks.1.mlp.W_out.png", "promoted_blocks.1.mlp.W_out.png"} <= {
        p.name for p in (tmp_path / "plots").iterdir()
    }
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "1 of" in text and "blocks.1.mlp.W_out is rank one" in text


def test_forensics_of_a_lora_folder(folders, capsys):
    assert main(["forensics", folders["base"], folders["adapter"], "--json"]) == 0
    modules = json.loads(capsys.readouterr().out)["modules"]
    assert [m["name"] for m in modules] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert all(m["r"] == 2 and m["rank"] == 2 for m in modules)


def test_different_architectures_fail_in_one_line(folders, capsys):
    assert main(["forensics", folders["base"], folders["other"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mechscope: error:") and "same architecture" in err and err.count("\n") == 1
    assert main(["forensics", folders["base"], folders["edited"], "--candidates", " , "]) == 2
    assert "no candidate" in capsys.readouterr().err
