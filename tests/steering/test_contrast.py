"""Vectors from contrast pairs: the oracle (steering-vectors), PCA methods, pairs files, saving."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope import steering
from mechscope.errors import MechscopeError
from mechscope.steering import SteeringVector

from .conftest import PAIRS, PROMPTS

SITE = "blocks.2.hook_resid_post"


def test_mean_diff_and_apply_equal_steering_vectors(pycode):
    """mechscope's mean difference == train_steering_vector, steered logits == its apply()."""
    try:
        from steering_vectors import train_steering_vector
    except Exception as err:  # noqa: BLE001 - recorded reason: the oracle needs an older transformers
        pytest.skip(f"steering-vectors cannot import here ({type(err).__name__}: {err})")
    ours = steering.contrast(pycode, PAIRS, SITE, batch_size=4, progress=False)
    theirs = train_steering_vector(pycode.hf, pycode.tokenizer, PAIRS, layers=[2], read_token_index=-1)
    assert torch.allclose(ours.directions[SITE], theirs.layer_activations[2], atol=1e-5, rtol=0)
    plain = pycode.run(PROMPTS).logits
    for m in (-4.0, 2.5):
        with theirs.apply(pycode.hf, multiplier=m):
            expected = pycode.run(PROMPTS).logits
        got = pycode.run(PROMPTS, edits=steering.vector_edits(ours, m)).logits
        assert (expected - plain).abs().max() > 0.1  # the steering does something
        assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_batching_does_not_change_the_vector(pycode):
    one = steering.contrast(pycode, PAIRS, "blocks.*.hook_resid_post", batch_size=1, progress=False)
    many = steering.contrast(pycode, PAIRS, "blocks.*.hook_resid_post", batch_size=5, progress=False)
    assert one.sites == [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
    for site in one.sites:
        assert torch.allclose(one.directions[site], many.directions[site], atol=1e-5)
        assert one.norms[site] == pytest.approx(many.norms[site], rel=1e-5)
    assert one.n_pairs == len(PAIRS) and one.model_name == "zoo:pycode"


def test_pca_methods_match_their_definitions(pycode):
    """pca_diff: top eigenvector of the centred differences; pca_center: of +-diff/2 (via SVD here)."""
    pos = pycode.run([p for p, _ in PAIRS], record=SITE, positions=-1).cache[SITE][:, 0]
    neg = pycode.run([n for _, n in PAIRS], record=SITE, positions=-1).cache[SITE][:, 0]
    diff = (pos - neg).double()
    centred = diff - diff.mean(0)
    expect = {
        "pca_diff": torch.linalg.svd(centred, full_matrices=False).Vh[0],
        "pca_center": torch.linalg.svd(torch.cat([diff, -diff]) / 2, full_matrices=False).Vh[0],
    }
    for method, ref in expect.items():
        v = steering.contrast(pycode, PAIRS, SITE, method=method, batch_size=4, progress=False)
        d = v.directions[SITE].double()
        assert d.norm() == pytest.approx(1.0, abs=1e-6)
        assert float(d @ diff.mean(0)) > 0  # points the way of the mean difference
        assert abs(float(d @ ref)) == pytest.approx(1.0, abs=1e-4)


def test_read_mean_and_positions(pycode):
    v = steering.contrast(pycode, PAIRS[:2], SITE, read="mean", progress=False)
    run_p = pycode.run(PAIRS[0][0], record=SITE).cache[SITE][0].mean(0)
    run_n = pycode.run(PAIRS[0][1], record=SITE).cache[SITE][0].mean(0)
    run_p2 = pycode.run(PAIRS[1][0], record=SITE).cache[SITE][0].mean(0)
    run_n2 = pycode.run(PAIRS[1][1], record=SITE).cache[SITE][0].mean(0)
    expected = ((run_p - run_n) + (run_p2 - run_n2)) / 2
    assert torch.allclose(v.directions[SITE], expected, atol=1e-5)
    at = steering.contrast(pycode, PAIRS[:2], SITE, read=[-2], progress=False)
    assert at.read == "-2"


def test_save_load_round_trip(pycode, tmp_path):
    v = steering.contrast(pycode, PAIRS, "blocks.[12].hook_resid_post", progress=False)
    v.save(tmp_path / "v")
    cfg = json.loads((tmp_path / "v" / "cfg.json").read_text())
    assert cfg["layers"] == {"blocks.1.hook_resid_post": 1, "blocks.2.hook_resid_post": 2}
    back = SteeringVector.load(tmp_path / "v")
    assert back.sites == v.sites and back.norms == v.norms and back.method == v.method
    for site in v.sites:
        assert torch.equal(back.directions[site], v.directions[site])


def test_pairs_files(tmp_path):
    (tmp_path / "p.csv").write_text('positive,negative\n"a, b",c\nd,e\n')
    assert steering.read_pairs(tmp_path / "p.csv") == [("a, b", "c"), ("d", "e")]
    (tmp_path / "p.jsonl").write_text('{"positive": "x", "negative": "y"}\n\n{"pos": "u", "neg": "v"}\n')
    assert steering.read_pairs(tmp_path / "p.jsonl") == [("x", "y"), ("u", "v")]
    caa = [
        {
            "question": "Do you agree?\n\nChoices:\n (A) Yes\n (B) No",
            "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)",
        }
    ]
    (tmp_path / "caa.json").write_text(json.dumps(caa))
    [(pos, neg)] = steering.read_pairs(tmp_path / "caa.json")
    assert pos.endswith("Answer: (A") and neg.endswith("Answer: (B") and pos[:-1] == neg[:-1]


def test_arithmetic_and_normalisation(pycode):
    a = steering.contrast(pycode, PAIRS[:3], "blocks.1.hook_resid_post", progress=False)
    b = steering.contrast(pycode, PAIRS[3:], "blocks.2.hook_resid_post", progress=False)
    both = a + 2 * b
    assert both.sites == ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
    assert torch.equal(both.directions["blocks.2.hook_resid_post"], 2 * b.directions["blocks.2.hook_resid_post"])
    assert torch.allclose((a - a).directions["blocks.1.hook_resid_post"], torch.zeros(256))
    unit = both.normalized("unit")
    assert all(float(d.norm()) == pytest.approx(1.0) for d in unit.directions.values())
    act = both.normalized("activation")
    for site, d in act.directions.items():
        assert float(d.norm()) == pytest.approx(both.norms[site], rel=1e-5)
    with pytest.raises(MechscopeError, match="finite"):
        a * float("nan")
