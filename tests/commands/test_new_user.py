"""What a new user meets at the command line (issue 17 §5, issue 25 items 5 and 6): snapshots
load everywhere, help shows defaults, the CLI starts without torch, readable output."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest
import torch

import mechscope as ms
from mechscope.cli import command_index, main, parser
from mechscope.zoo import WEIGHTS

requires_modadd = pytest.mark.skipif(
    not (WEIGHTS / "modadd" / "snapshots").is_dir(), reason="zoo:modadd snapshots are not shipped in this checkout"
)


@requires_modadd
def test_a_modadd_snapshot_loads_everywhere(capsys):
    from mechscope.zoo import modadd, zoo_path

    steps = [step for step, _ in modadd.load_snapshots(zoo_path("modadd"))]
    snapshot = ms.load(f"zoo:modadd@{steps[1]}", dtype="float64")
    expected = dict(modadd.load_snapshots(zoo_path("modadd")))[steps[1]].state_dict()
    state = snapshot.hf.state_dict()
    assert snapshot.name == f"zoo:modadd@{steps[1]}" and state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k].double()) for k in state)  # the snapshot's weights, as asked
    final = ms.load("zoo:modadd").hf.state_dict()
    assert not all(torch.equal(final[k].double(), state[k]) for k in state)  # not the final model's
    assert main(["info", f"zoo:modadd@{steps[1]}", "--json"]) == 0  # a command outside crosscoder
    assert json.loads(capsys.readouterr().out)["name"] == f"zoo:modadd@{steps[1]}"
    for name, text in [
        ("zoo:modadd@7", "no snapshot at step '7': choose one of 0,"),
        ("zoo:modadd@x", "no snapshot at step 'x'"),
        ("zoo:induction@3", "keeps no training snapshots"),
    ]:
        with pytest.raises(ms.MechscopeError, match=text):
            ms.load(name)


def _parsers(p):
    """Every parser of the command tree, subcommands of subcommands included."""
    yield p
    for action in p._actions:
        for child in getattr(action, "choices", None).values() if isinstance(action.choices, dict) else ():
            yield from _parsers(child)


def test_every_help_shows_defaults(capsys):
    from mechscope.commands.arguments import Formatter

    tree = list(_parsers(parser()))
    assert len(tree) > 25 and all(p.formatter_class is Formatter for p in tree)
    for argv, shown in [
        (["sae", "train", "--help"], ["(default: 20000000)", "(default: topk)", "(default: 100)"]),
        (["lens", "train", "--help"], ["(default: 250)", "(default: sgd)"]),
        (["trace", "--help"], ["default 10, at most the model's layers", "seeds the noise"]),
        (["sae", "meta", "--help"], ["--no-progress", "(default: 200)"]),
    ]:
        with pytest.raises(SystemExit) as done:
            main(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert done.value.code == 0 and all(s in text for s in shown), (argv, text)
        assert "(default: None)" not in text and "(default: False)" not in text


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"mechscope {ms.__version__}"


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout


def test_help_and_a_mistyped_layer_do_not_import_torch():
    """`mechscope --help` lists commands without importing them; a site whose layer the model
    lacks fails from config.json alone, before torch (seconds) loads."""
    out = _python(
        "import sys\nfrom mechscope.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit as e:\n"
        "    print(e.code, 'torch' in sys.modules, 'mechscope.commands.sae' in sys.modules)"
    )
    assert out.split()[-3:] == ["0", "False", "False"]
    if (WEIGHTS / "pycode" / "config.json").is_file():
        out = _python(
            "import sys\nfrom mechscope.cli import main\n"
            "print(main(['run', 'zoo:pycode', 'x', '--record', 'blocks.99.hook_resid_post']), 'torch' in sys.modules)"
        )
        assert out.split()[-2:] == ["2", "False"]


def test_subcommand_help_reads_config_defaults_without_importing_them():
    """--help of the training commands reads defaults and field docs from the config modules'
    source: they are the classes' own, and torch stays unloaded."""
    import dataclasses
    import importlib

    from mechscope.commands.arguments import ConfigDocs, constant

    for module, name in [
        ("data", "DataConfig"),
        ("dictionary.source", "SourceConfig"),
        ("dictionary.config", "CoderConfig"),
        ("dictionary.trainer_config", "TrainConfig"),
        ("lens.tuned", "TunedLensConfig"),
    ]:
        docs, cls = ConfigDocs(module, name), getattr(importlib.import_module(f"mechscope.{module}"), name)
        fields = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        assert fields and {k: docs.default(k) for k in fields} == fields, name
        assert set(docs.docs) <= {f.name for f in dataclasses.fields(cls)} and len(docs.docs) >= len(fields) // 2
    from mechscope.dictionary.config import ARCHITECTURES

    assert constant("dictionary.config", "ARCHITECTURES") == ARCHITECTURES
    out = _python(
        "import sys\nfrom mechscope.cli import main\n"
        "for argv in (['sae', 'train', '--help'], ['sae', '--help'], ['lens', 'train', '--help'],\n"
        "             ['crosscoder', 'train', '--help'], ['transcoder', 'train', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('torch' in sys.modules)"
    )
    assert out.split()[-1] == "False"


def test_global_options_before_lens_train(tmp_path, capsys):
    assert command_index(["-v", "--device", "cpu", "--dtype=float32", "lens", "train", "m"]) == 4
    assert command_index(["--dev", "cpu", "run"]) == 2 and command_index(["-v"]) is None
    from tests.lens.helpers import save_worded

    model = str(save_worded(tmp_path / "model"))
    for options in (["-v"], ["--device", "cpu"], ["--dtype", "float32", "-v"]):
        # parsed as `lens train` (not as `lens MODEL=train PROMPT`): the missing corpus is the error
        assert main([*options, "lens", "train", model, "--data", str(tmp_path / "none.txt"), "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" not in err and "none.txt" in err, err


@pytest.fixture(scope="module")
def worded(tmp_path_factory):
    from mechscope.dictionary.base import build
    from mechscope.dictionary.config import CoderConfig
    from tests.lens.helpers import save_worded, write_corpus

    tmp = tmp_path_factory.mktemp("new_user")
    corpus = write_corpus(tmp / "corpus.jsonl", 60)
    sae = build(CoderConfig("topk", 32, 64, k=4, hook_name="blocks.1.hook_resid_post")).save(tmp / "sae")
    return str(save_worded(tmp / "model")), str(sae), ["--data", str(corpus), "--ctx", "16", "--heldout", "0.3"], tmp


def test_sae_outputs_read_as_tables_and_mark_the_firing_token(worded, capsys, caplog):
    model, sae, data, tmp = worded
    assert main(["sae", "features", model, sae, *data, "--features", "0,1,2", "--top", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("feature")]
    assert len(rows) == 6 and all(line.count("«") == 1 and line.count("»") == 1 for line in rows)
    assert main(["sae", "meta", sae, "--epochs", "2", "--latents", "0,1", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "meta-SAE (batchtopk): 64 latents built from 16 meta-latents" in out.out and "it/s" not in out.err
    assert not any(r in out.out for r in ("[[", "[(", "{'", "':"))  # no Python lists or dicts
    assert re.search(r"^ +0  \d+ \(\d\.\d{3}\)", out.out, re.M)  # latent 0: meta-latent (weight), ...
    assert main(["sae", "error", model, sae, *data, "--contexts", "8"]) == 0
    out = capsys.readouterr().out
    assert "R² of ‖error‖ from the input" in out and "largest errors" in out
    assert not any(r in out for r in ("[[", "[(", "[{", "{'", "':"))
    with caplog.at_level(logging.WARNING, logger="mechscope.commands.checks"):
        assert (
            main(
                [
                    "sae",
                    "train",
                    model,
                    "--site",
                    "blocks.1.hook_resid_post",
                    *data,
                    "--out",
                    str(tmp / "short"),
                    "--width",
                    "16",
                    "--k",
                    "2",
                    "--total-tokens",
                    "64",
                    "--batch-tokens",
                    "32",
                    "--eval-contexts",
                    "0",
                    "--no-progress",
                ]
            )
            == 0
        )
    assert "only 2 training steps" in caplog.text and "100 warm-up steps" in caplog.text


def test_trace_window_fits_the_model_and_dla_names_soft_capping_only_where_it_is(worded, tmp_path, capsys):
    import transformers as T

    from tests.lens.helpers import text_tokenizer

    model, _, _, _ = worded
    assert main(["trace", model, "the quick brown fox jumps", "--subject", "quick", "--samples", "1", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["window"] == 2 and "window of 2 layers: " in out.err
    tokenizer = text_tokenizer()
    torch.manual_seed(0)
    gemma = T.Gemma2ForCausalLM(
        T.Gemma2Config(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=4,
            head_dim=8,
            num_key_value_heads=2,
            intermediate_size=64,
            vocab_size=len(tokenizer),
            max_position_embeddings=64,
            final_logit_softcapping=0.5,
        )
    )
    gemma.save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    assert main(["dla", str(tmp_path / "gemma"), "the quick brown fox", "--target", "dog"]) == 0
    assert "after soft-capping its logits at ±0.5" in capsys.readouterr().out
    assert main(["dla", model, "the quick brown fox", "--target", "dog"]) == 0
    assert "soft-capping" not in capsys.readouterr().out


def test_zoo_info_is_a_summary_and_json_the_whole_card(capsys):
    from mechscope import zoo

    assert main(["zoo", "info", "induction"]) == 0
    text = capsys.readouterr().out
    card = zoo.card("induction")
    assert len(text.splitlines()) < 80 < len(json.dumps(card, indent=2).splitlines())
    assert "second_copy_loss" in text and "(241 entries: see --json)" in text and "--json` prints" in text
    assert main(["zoo", "info", "induction", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == card
