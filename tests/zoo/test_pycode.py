"""The bundled `zoo:pycode` model and its recipe: loads offline, copies, trains deterministically."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from mechscope.errors import MechscopeError
from mechscope.zoo import pycode, pycode_data
from mechscope.zoo.pycode import PycodeRecipe, copying_loss, lr_at, train

SHIPPED = Path(pycode.__file__).parent / "weights" / "pycode"

# A few steps of a tiny model on a few stdlib files: seconds, not minutes.
TINY = PycodeRecipe(
    max_files=4,
    vocab_size=320,
    d_model=32,
    n_layers=1,
    n_heads=2,
    n_kv_heads=1,
    d_mlp=64,
    context=32,
    batch_size=4,
    steps=6,
    warmup_steps=2,
    eval_sequences=8,
    eval_every=3,
)


@pytest.fixture(scope="module")
def shipped():
    """The shipped model and tokenizer, loaded the way a user would, with the hub off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = AutoModelForCausalLM.from_pretrained(SHIPPED, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(SHIPPED, local_files_only=True)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((SHIPPED / "card.json").read_text())


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny runs: seed 0 twice, seed 1, and seed 0 interrupted after 3 steps then resumed."""
    root = tmp_path_factory.mktemp("pycode")
    out = {name: root / name for name in ("a", "b", "c", "resumed")}
    train(out["a"], TINY, progress=False)
    train(out["b"], TINY, progress=False)
    train(out["c"], dataclasses.replace(TINY, seed=1), progress=False)
    stopped = train(out["resumed"], TINY, progress=False, stop_after=3)
    assert stopped == {"stopped_at_step": 3}
    state = json.loads((out["resumed"] / "checkpoint" / "state.json").read_text())
    assert state["step"] == 3 and not (out["resumed"] / "config.json").exists()
    with pytest.raises(MechscopeError, match="different recipe"):
        train(out["resumed"], dataclasses.replace(TINY, lr=1e-4), progress=False)
    train(out["resumed"], TINY, progress=False)
    return out


# ------------------------------------------------------------------------ shipped model


def test_shipped_folder_loads_offline(shipped):
    model, tokenizer = shipped
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert not cfg.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    assert model.dtype == torch.float32
    assert len(tokenizer) == cfg.vocab_size
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == eos
    assert cfg.bos_token_id == cfg.eos_token_id == eos
    code = "def add(a, b):\n    return a + b  # ünïcode\n"
    ids = tokenizer(code)["input_ids"]
    assert tokenizer.decode(ids) == code
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), cfg.vocab_size) and torch.isfinite(logits).all()


def test_shipped_folder_is_small_and_complete():
    names = {p.name for p in SHIPPED.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "card.json", "CARD.md"} <= names
    assert "checkpoint" not in names
    assert sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file()) <= 25 * 2**20


def test_card_records_recipe_and_metrics(card):
    assert card["recipe"] == json.loads(json.dumps(dataclasses.asdict(PycodeRecipe())))
    m = card["metrics"]
    for key in (
        "heldout_loss",
        "train_split_loss",
        "train_loss_last50",
        "copying_first_loss",
        "copying_second_loss",
        "train_time_s",
        "train_cpu_s",
        "tokens_seen",
        "n_params",
    ):
        assert math.isfinite(m[key]) and m[key] > 0, key
    uniform = math.log(card["data"]["vocab_size"])
    assert m["train_split_loss"] < uniform / 2 and m["heldout_loss"] < 0.6 * uniform
    # the budget is 40 minutes of wall time on 2 cores (CPU time sums both threads)
    assert m["train_time_s"] < 40 * 60 and card["software"]["threads"] <= 2
    assert len(card["data"]["stdlib_fingerprint"]) == 64 and card["data"]["python_version"]
    assert "held-out loss" in (SHIPPED / "CARD.md").read_text()


def test_shipped_model_copies_random_tokens(shipped, card):
    model, tokenizer = shipped
    first, second = copying_loss(model, tokenizer)
    assert first == pytest.approx(card["metrics"]["copying_first_loss"], rel=1e-3)
    assert second == pytest.approx(card["metrics"]["copying_second_loss"], rel=1e-3, abs=1e-3)
    assert first > 0.7 * math.log(len(tokenizer))  # random tokens are unpredictable once
    assert second < 0.5 * first  # ... and predictable when repeated: induction


# ----------------------------------------------------------------------------- recipe


def test_same_seed_same_weights_other_seed_differs(runs):
    assert same(weights(runs["a"]), weights(runs["b"]))
    assert (runs["a"] / "tokenizer.json").read_bytes() == (runs["b"] / "tokenizer.json").read_bytes()
    assert not same(weights(runs["a"]), weights(runs["c"]))


def test_interrupted_and_resumed_run_equals_uninterrupted(runs):
    assert same(weights(runs["a"]), weights(runs["resumed"]))
    assert not (runs["resumed"] / "checkpoint").exists()
    a = json.loads((runs["a"] / "card.json").read_text())["metrics"]
    r = json.loads((runs["resumed"] / "card.json").read_text())["metrics"]
    for key in ("heldout_loss", "train_loss_last50", "copying_curve", "copying_second_loss"):
        assert a[key] == r[key], key


def test_tiny_run_writes_a_loadable_folder_atomically(runs):
    folder = runs["a"]
    assert sorted(p.name for p in folder.parent.iterdir()) == ["a", "b", "c", "resumed"]
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    card = json.loads((folder / "card.json").read_text())
    assert card["metrics"]["n_params"] == sum(p.numel() for p in model.parameters())
    assert card["metrics"]["tokens_seen"] == TINY.steps * TINY.batch_size * TINY.context
    assert len(tokenizer) == model.config.vocab_size <= TINY.vocab_size


def test_batches_are_a_function_of_the_step():
    chunks = torch.arange(10 * 9).reshape(10, 9)
    recipe = dataclasses.replace(TINY, batch_size=4, context=8, random_fraction=0.0)
    seen = torch.cat([pycode_data.batch_for_step(chunks, s, recipe) for s in range(5)])
    assert torch.equal(seen, torch.cat([pycode_data.batch_for_step(chunks, s, recipe) for s in range(5)]))
    assert sorted(seen[:10, 0].tolist()) == list(range(0, 90, 9))  # an epoch visits each chunk once
    tiled = dataclasses.replace(recipe, repeat_fraction=1.0, repeat_span=(2, 4))
    rep = pycode_data.batch_for_step(chunks, 0, tiled)
    assert torch.equal(rep[:, :2], seen[:4, :2])  # same chunks, each tiling its own start
    periods = [min(p for p in (2, 3, 4) if torch.equal(row, row[torch.arange(9) % p])) for row in rep]
    assert all(torch.equal(row[p : 2 * p], row[:p]) for row, p in zip(rep, periods))
    assert len(set(periods)) > 1  # spans vary, so only content marks the previous copy


def test_random_rows_tile_random_ids_after_endoftext():
    chunks = torch.arange(1000, 1000 + 40 * 65).reshape(40, 65)  # ids no random row can draw
    recipe = dataclasses.replace(
        TINY, batch_size=40, context=64, random_fraction=0.5, alternation_prob=0.5, repeat_span=(5, 12)
    )
    with pytest.raises(ValueError, match="vocabulary size"):
        pycode_data.batch_for_step(chunks, 0, recipe)
    batch = pycode_data.batch_for_step(chunks, 0, recipe, vocab_size=50)
    random_rows = batch[(batch < 50).all(-1)]
    assert 5 <= len(random_rows) <= 35 and ((batch < 50).all(-1) | (batch >= 1000).all(-1)).all()
    assert (random_rows[:, 0] == 0).all() and (random_rows[:, 1:] > 0).all()  # bos, then no specials
    body = random_rows[:, 1:]
    periods = [min(p for p in range(5, 13) if torch.equal(row, row[torch.arange(64) % p])) for row in body]
    assert len(set(periods)) > 1
    # within the first span, ids repeat the one two back about alternation_prob / (1 + p) of the time
    # (never chained), far above chance (1/49)
    two_back = torch.cat([row[2:p] == row[: p - 2] for row, p in zip(body, periods)]).float().mean()
    assert 0.2 < float(two_back) < 0.5


def test_learning_rate_schedule():
    r = PycodeRecipe()
    assert lr_at(0, r) == pytest.approx(r.lr / r.warmup_steps)
    assert lr_at(r.warmup_steps, r) == pytest.approx(r.lr)
    assert lr_at(r.steps - 1, r) == pytest.approx(r.lr * r.min_lr_ratio, rel=1e-2)


def test_copying_loss_on_untrained_model_is_near_uniform():
    cfg = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        bos_token_id=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    first, second = copying_loss(model, 300, seq_len=20, batch=4)
    assert first == pytest.approx(math.log(300), rel=0.05) and second == pytest.approx(first, rel=0.05)


def test_held_out_split_is_by_path_hash():
    files = pycode_data.list_sources(pycode_data.stdlib_root(), include_tests=False)
    held = [f for f in files if pycode_data.is_heldout(f, 0.05)]
    assert 0 < len(held) < 0.15 * len(files)
    assert all(pycode_data.is_heldout(f, 0.05) for f in held)  # no state, no order
    skipped = pycode_data.SKIP_DIRS | pycode_data.TEST_DIRS
    assert not any(skipped & set(f.split("/")[:-1]) for f in files)


def test_plots_draw_the_copying_curve(tmp_path):
    from mechscope import zoo

    (path,) = zoo.plots("pycode", tmp_path)
    assert path.name == "pycode_copying_curve.png" and path.read_bytes()[:4] == b"\x89PNG"
