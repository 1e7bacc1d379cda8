"""`mechscope features build|show|export-neuronpedia` and `mechscope serve`'s refusals,
called in-process through `cli.main`."""

from __future__ import annotations

import json

from mechscope import features
from mechscope.cli import main
from tests.conftest import requires_pycode

from .helpers import planted_coder, pycode, texts

pytestmark = requires_pycode


def test_build_show_export(tmp_path, capsys):
    model = pycode()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(texts()[:3]):
        (corpus / f"{i}.py").write_text(text)
    planted_coder(model, 264, latent=2).save(tmp_path / "sae")
    argv = [
        "features",
        "build",
        "zoo:pycode",
        "--sae",
        str(tmp_path / "sae"),
        "--data",
        str(corpus / "*.py"),
        "--out",
        str(tmp_path / "store"),
        "--tokens",
        "512",
        "--ctx",
        "32",
        "--k",
        "4",
    ]
    assert main(argv) == 0
    assert "24 latents over 512 tokens" in capsys.readouterr().out
    store = features.open(tmp_path / "store")
    assert store.cfg["k"] == 4 and store.info()["n_tokens"] == 512
    assert main(["features", "show", str(tmp_path / "store"), "2", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["count"] == store.feature(2).count and len(shown["top"]) <= 4
    assert main(["features", "show", str(tmp_path / "store"), "2"]) == 0
    assert "latent 2: density" in capsys.readouterr().out
    assert main(["features", "export-neuronpedia", str(tmp_path / "store"), str(tmp_path / "np")]) == 0
    assert json.loads((tmp_path / "np" / "batch-0.json").read_text())["model_id"] == "zoo:pycode"
    assert main(["features", "show", str(tmp_path / "store"), "99"]) == 2
    assert "no latent 99" in capsys.readouterr().err
    assert main(["features", "show", str(tmp_path), "1"]) == 2
    assert "not a feature store" in capsys.readouterr().err


def test_serve_refusals(tmp_path, capsys):
    assert main(["serve", "--host", "0.0.0.0", "--store", str(tmp_path)]) == 2
    assert "without a token" in capsys.readouterr().err
    assert main(["serve", "--port", "0"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
