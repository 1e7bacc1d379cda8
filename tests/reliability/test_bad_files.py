"""Bad files end in one line, not a traceback or a silent success (issue 17 §2, issue 25 item 6).

Each case damages a copy of a good artifact (a dictionary in the mechscope, SAELens or
sparsify layout, a model folder), drives the real command line on it and checks: exit
status 2, one `mechscope: error:` line on stderr, no traceback, and every file that was
there before byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechscope.cli import main
from mechscope.dictionary import build
from mechscope.dictionary.config import CoderConfig
from mechscope.dictionary.formats import write_saelens
from tests.lens.helpers import save_worded, write_corpus

SITE = "blocks.1.hook_resid_post"
D_IN, D_SAE = 32, 64
FOLDERS = {"mechscope": "mechscope", "saelens": "saelens", "sparsify": "layers.1"}
"""Where each layout's good copy lives (sparsify's folder name is its hookpoint: layers.1 reads SITE)."""


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny text model, a corpus and one good dictionary per layout."""
    root = tmp_path_factory.mktemp("bad_files")
    model = save_worded(root / "model")
    write_corpus(root / "corpus.jsonl", 40)
    torch.manual_seed(0)
    coder = build(CoderConfig("topk", D_IN, D_SAE, k=4, hook_name=SITE, model_name=str(model)))
    coder.save(root / "mechscope")
    write_saelens(coder, root / "saelens")
    w = {
        "encoder.weight": coder.W_enc.detach().T.contiguous(),
        "encoder.bias": coder.b_enc.detach(),
        "W_dec": coder.W_dec.detach(),
        "b_dec": coder.b_dec.detach(),
    }
    sparsify = root / FOLDERS["sparsify"]
    sparsify.mkdir()
    save_file(w, str(sparsify / "sae.safetensors"))
    (sparsify / "cfg.json").write_text(
        json.dumps(
            {
                "expansion_factor": 2,
                "normalize_decoder": True,
                "num_latents": 0,
                "k": 4,
                "multi_topk": False,
                "skip_connection": False,
                "d_in": D_IN,
            }
        )
    )
    return root


def hashes(*folders: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def assert_untouched(before: dict[str, str], *folders: Path) -> None:
    """Every file that was there is still there, byte for byte (lock files may come and go)."""
    after = hashes(*folders)
    assert {path: after.get(path) for path in before} == before


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # NaN and Infinity are written as JSON's non-standard literals


def edit_tensors(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith(("WARNING ", "INFO "))]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("mechscope: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# Dictionaries: (layout, how the copy is damaged, words the one line must hold)


def _cfg(key, value):
    return lambda folder: edit_json(folder / "cfg.json", lambda d: d.__setitem__(key, value))


def _drop(key):
    return lambda folder: edit_json(folder / "cfg.json", lambda d: d.pop(key))


def _write(name, data: bytes):
    return lambda folder: (folder / name).write_bytes(data)


def _tensor(file, name, change):
    return lambda folder: edit_tensors(folder / file, lambda t: t.__setitem__(name, change(t[name])))


def _poison(t):
    t = t.clone()
    t.view(-1)[3] = math.nan
    return t


DICTIONARY_CASES = {
    "d_in string": ("mechscope", _cfg("d_in", "32"), ["d_in must be an integer", "'32'"]),
    "d_sae float": ("mechscope", _cfg("d_sae", 64.0), ["d_sae must be an integer", "64.0"]),
    "k string": ("mechscope", _cfg("k", "4"), ["k must be an integer"]),
    "k bool": ("mechscope", _cfg("k", True), ["k must be an integer", "True"]),
    "k zero": ("mechscope", _cfg("k", 0), ["k=0"]),
    "prefixes int": ("mechscope", _cfg("prefixes", 64), ["prefixes must be a list of integers"]),
    "blocks string": ("mechscope", _cfg("blocks", "abc"), ["blocks must be a list of strings"]),
    "skip int": ("mechscope", _cfg("skip", 0), ["skip must be true or false"]),
    "d_in missing": ("mechscope", _drop("d_in"), ["lacks d_in"]),
    "arch missing": ("mechscope", _drop("arch"), ["lacks arch"]),
    "arch unknown": ("mechscope", _cfg("arch", "sparse_magic"), ["unknown dictionary architecture 'sparse_magic'"]),
    "cfg is a list": ("mechscope", _write("cfg.json", b"[1, 2, 3]"), ["not a JSON object"]),
    "cfg is binary": ("mechscope", _write("cfg.json", bytes(range(256)) * 4), ["cannot read"]),
    "d_sae absurd": ("mechscope", _cfg("d_sae", 4_000_000_000), ["GB of memory", "GB is available"]),
    "norm_scale NaN": ("mechscope", _cfg("norm_scale", math.nan), ["norm_scale must be a finite number"]),
    "norm_scale inf": ("mechscope", _cfg("norm_scale", math.inf), ["norm_scale must be a finite number"]),
    "norm_scale negative": ("mechscope", _cfg("norm_scale", -1.0), ["norm_scale=-1.0", "positive"]),
    "weights wider than cfg": ("mechscope", _cfg("d_sae", 32), ["tensor W_dec", "[64, 32]", "[32, 32]"]),
    "weights lack a tensor": (
        "mechscope",
        lambda f: edit_tensors(f / "sae.safetensors", lambda t: t.pop("b_dec")),
        ["lacks b_dec"],
    ),
    "weights hold NaN": ("mechscope", _tensor("sae.safetensors", "W_dec", _poison), ["W_dec", "NaN"]),
    "weights hold inf": ("mechscope", _tensor("sae.safetensors", "b_enc", lambda t: t / 0), ["b_enc", "infinite"]),
    "saelens d_sae disagrees": ("saelens", _cfg("d_sae", 128), ["tensor W_enc", "[32, 64]", "[32, 128]"]),
    "saelens d_in string": ("saelens", _cfg("d_in", "32"), ["d_in must be a positive integer"]),
    "saelens k string": ("saelens", _cfg("activation_fn_kwargs", {"k": "4"}), ["k must be a positive integer"]),
    "saelens b_dec shape": (
        "saelens",
        _tensor("sae_weights.safetensors", "b_dec", lambda t: t[:5].clone()),
        ["tensor b_dec", "[5]", "[32]"],
    ),
    "saelens weights NaN": ("saelens", _tensor("sae_weights.safetensors", "W_enc", _poison), ["W_enc", "NaN"]),
    "saelens cfg binary": ("saelens", _write("cfg.json", b"\xff\xfe\x00garbage"), ["cannot read"]),
    "saelens cfg list": ("saelens", _write("cfg.json", b"[]"), ["not a JSON object"]),
    "sparsify k string": ("sparsify", _cfg("k", "4"), ["k must be a positive integer"]),
    "sparsify d_in disagrees": ("sparsify", _cfg("d_in", 16), ["tensor encoder.weight", "[64, 32]", "[32, 16]"]),
    "sparsify num_latents disagrees": ("sparsify", _cfg("num_latents", 48), ["[64, 32]", "[48, 32]"]),
    "sparsify cfg list": ("sparsify", _write("cfg.json", b"[4]"), ["not a JSON object"]),
}


@pytest.mark.parametrize("case", list(DICTIONARY_CASES))
def test_a_bad_dictionary_is_one_line(good, tmp_path, capsys, case):
    layout, damage, needles = DICTIONARY_CASES[case]
    folder = tmp_path / FOLDERS[layout]
    shutil.copytree(good / FOLDERS[layout], folder)
    damage(folder)
    before = hashes(folder, good / "model")
    code, err = run_cli(
        [
            "sae",
            "eval",
            str(good / "model"),
            str(folder),
            "--data",
            str(good / "corpus.jsonl"),
            "--ctx",
            "16",
            "--contexts",
            "2",
            "--json",
        ],
        capsys,
    )
    assert_one_line_error(code, err, *needles)
    assert_untouched(before, folder, good / "model")


def test_the_good_dictionaries_evaluate(good, capsys):
    """The undamaged copies pass, so each case above fails for its damage alone."""
    for layout in ("mechscope", "saelens", "sparsify"):
        code, err = run_cli(
            [
                "sae",
                "eval",
                str(good / "model"),
                str(good / FOLDERS[layout]),
                "--data",
                str(good / "corpus.jsonl"),
                "--ctx",
                "16",
                "--contexts",
                "2",
                "--json",
            ],
            capsys,
        )
        assert code == 0, err


# Models: NaN / inf weights, pickle-only folders


def _broken_model(good: Path, folder: Path, value: float) -> Path:
    shutil.copytree(good / "model", folder)
    edit_tensors(
        folder / "model.safetensors", lambda t: t.__setitem__(BROKEN, t[BROKEN].index_fill(1, torch.tensor([5]), value))
    )
    return folder


def _pickle_only(good: Path, folder: Path, value=None) -> Path:
    shutil.copytree(good / "model", folder)
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


BROKEN = "transformer.h.0.mlp.c_fc.weight"
LENS = [
    "lens",
    "train",
    "{model}",
    "--data",
    "{corpus}",
    "--ctx",
    "16",
    "--steps",
    "3",
    "--batch",
    "2",
    "--out",
    "{out}",
    "--no-progress",
]
REPORT = ["report", "{model}", "--prompt", "the quick brown fox", "--out", "{out}"]
EVAL = ["sae", "eval", "{model}", "{sae}", "--data", "{corpus}", "--ctx", "16", "--contexts", "2", "--json"]
MODEL_CASES = {
    "NaN weight: lens train": (_broken_model, math.nan, LENS, ["step 1 of 3", "blocks.0.hook_resid_post"]),
    "inf weight: lens train": (_broken_model, math.inf, LENS, ["step 1 of 3", "NaN or inf loss"]),
    "NaN weight: report": (_broken_model, math.nan, REPORT, [BROKEN, "no report written"]),
    "inf weight: report": (_broken_model, math.inf, REPORT, [BROKEN]),
    "NaN weight: sae eval": (_broken_model, math.nan, EVAL, ["'blocks.1.hook_resid_post'", "NaN or inf"]),
    "pickle only: info": (_pickle_only, None, ["info", "{model}"], ["pytorch_model.bin", "safetensors only"]),
    "pickle only: lens train": (_pickle_only, None, LENS, ["holds only pickle weights"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_bad_model_is_one_line(good, tmp_path, capsys, case):
    make, value, argv, needles = MODEL_CASES[case]
    model = make(good, tmp_path / "model", value)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("a file the user had here")
    before = hashes(model, out, good / FOLDERS["mechscope"])
    fill = {"model": model, "corpus": good / "corpus.jsonl", "out": out, "sae": good / FOLDERS["mechscope"]}
    code, err = run_cli([arg.format(**fill) for arg in argv], capsys)
    assert_one_line_error(code, err, *needles)
    assert_untouched(before, model, out, good / FOLDERS["mechscope"])
    assert not (out / "index.html").exists() and not (out / "cfg.json").exists()


def test_a_broken_model_loads_with_a_warning_naming_the_parameter(good, tmp_path, caplog):
    """A warning, not a refusal: loading a broken model is how one finds the damage."""
    import mechscope as ms

    model = ms.load(str(_broken_model(good, tmp_path / "model", math.nan)))
    assert model.dims.n_layers == 2
    assert any(BROKEN in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    ms.load(str(good / "model"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_loss_that_turns_nan_stops_training_and_keeps_the_last_checkpoint(good, tmp_path):
    """Contexts holding one token that embeds to NaN come up at step 3: the run stops there,
    the step-2 checkpoint is left as it was, and resuming from it with the repaired model gives
    the very lens an uninterrupted run gives."""
    import mechscope as ms
    from mechscope.lens.tuned import TunedLensConfig, rows_for_step, train

    clean = ms.load(str(good / "model"))
    broken = ms.load(str(good / "model"))
    bad_token = 1000

    class Poisoned(torch.nn.Embedding):  # the unembedding (tied to wte's weight) stays finite
        def forward(self, ids):
            return super().forward(ids).masked_fill((ids == bad_token)[..., None], math.nan)

    wte = broken.hf.transformer.wte
    broken.hf.transformer.wte = Poisoned(*wte.weight.shape, _weight=wte.weight)
    cfg = TunedLensConfig(steps=4, batch_size=2, checkpoint_every=1)
    data = torch.randint(2000, 3000, (8, 12))
    data[rows_for_step(len(data), 2, cfg), 5] = bad_token  # the third step's contexts
    with pytest.raises(ms.MechscopeError, match="step 3 of 4 .* from blocks.0.hook_resid_pre on") as err:
        train(broken, data, cfg, out=tmp_path / "run", progress=False)
    assert "\n" not in str(err.value)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["steps"] == 2
    resumed = train(clean, data, cfg, out=tmp_path / "run", progress=False)
    straight = train(clean, data, cfg, out=tmp_path / "straight", progress=False)
    assert torch.equal(resumed.weight, straight.weight) and torch.equal(resumed.bias, straight.bias)


@pytest.mark.parametrize("command", ["eval", "error"])
def test_a_dictionary_from_another_model_warns_naming_both(good, tmp_path, capsys, caplog, command):
    """Same width, other model: allowed (a fine-tune, a renamed copy), but said, naming both."""
    coder = build(CoderConfig("topk", D_IN, D_SAE, k=4, hook_name=SITE, model_name="meta-llama/Llama-3.2-1B"))
    coder.save(tmp_path / "sae")
    extra = ["--contexts", "2"] if command == "eval" else ["--contexts", "4"]
    code, err = run_cli(
        [
            "sae",
            command,
            str(good / "model"),
            str(tmp_path / "sae"),
            "--data",
            str(good / "corpus.jsonl"),
            "--ctx",
            "16",
            *extra,
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("meta-llama/Llama-3.2-1B" in m and str(good / "model") in m for m in said), said


def test_config_checks_keep_good_values_and_name_the_registry():
    """What the checks accept still builds: JSON ints for float fields, numpy integers, lists
    for tuples; the architectures a config may name are exactly those with a registered class."""
    import numpy as np

    from mechscope.dictionary.base import _REGISTRY
    from mechscope.dictionary.config import ARCHITECTURES, CROSSCODERS

    cfg = CoderConfig.from_dict(
        {
            "arch": "matryoshka",
            "d_in": np.int64(D_IN),
            "d_sae": D_SAE,
            "norm_scale": 2,
            "prefixes": [16, D_SAE],
            "k": 4,
            "unknown_future_field": 1,
        }
    )
    assert cfg.norm_scale == 2.0 and isinstance(cfg.norm_scale, float)
    assert type(cfg.d_in) is int and cfg.prefixes == (16, D_SAE)
    assert CoderConfig.from_dict(cfg.to_dict()) == cfg
    build(cfg)
    assert set(ARCHITECTURES + CROSSCODERS) == set(_REGISTRY)
