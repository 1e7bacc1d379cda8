"""EAP / EAP-IG / ACDC: exactness where the model is linear in an edge, first-order
consistency (finite differences) on every family, and recovery of planted circuits."""

import random

import pytest
import torch

import mechscope as ms
from mechscope.circuits import EdgePatcher, acdc, discover, eap, eap_ig, induction_task
from mechscope.errors import MechscopeError
from mechscope.heads import induction_scores, previous_token_scores, repeated_random_tokens
from mechscope.patching import Task, kl_to_clean, logit_diff
from tests.models.tiny import tiny_model


def _random_task(model, batch=3, pos=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(1, model.dims.d_vocab, (batch, pos), generator=gen)
    corrupt = torch.randint(1, model.dims.d_vocab, (batch, pos), generator=gen)
    answers, wrong = torch.randint(0, model.dims.d_vocab, (2, batch), generator=gen)
    return Task(clean, corrupt, answers, wrong)


def _exact_single_edge(patcher, task, metric, ablated, edge):
    removed = patcher.graph.mask_of([edge])
    with torch.no_grad():
        base = metric(patcher.run(task.clean, ablated))
        return float(metric(patcher.run(task.clean, ablated, removed)) - base)


def test_eap_is_exact_where_the_model_is_linear_in_the_edge():
    """Attention-only, norm-free: edges into logits and into last-layer values are linear."""
    model = tiny_model("toy_attn_only")
    task = _random_task(model)
    metric = logit_diff(task)
    scores = eap(model, task, metric)
    patcher = EdgePatcher(model)
    _, ablated = patcher.ablated_values(task)
    for edge in [
        ("embed", "logits"),
        ("a0.h1", "logits"),
        ("a1.h3", "logits"),
        ("embed", "a1.h2.v"),
        ("a0.h0", "a1.h1.v"),
    ]:
        assert scores.score(*edge) == pytest.approx(
            _exact_single_edge(patcher, task, metric, ablated, edge), abs=1e-4, rel=1e-4
        )
    # all edges into logits together: the whole change of the (linear) readout
    into_logits = sum(v for (s, r), v in zip(scores.edges, scores.scores.tolist()) if r == "logits")
    with torch.no_grad():
        total = float(metric(model.run(task.corrupt).logits) - metric(model.run(task.clean).logits))
    assert into_logits == pytest.approx(total, abs=1e-4, rel=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "neox", "gemma2"])
def test_eap_matches_finite_differences_on_every_family(kind):
    """EAP's score is the derivative of the metric as one edge moves from clean towards
    ablated: checked for a q, a (KV-head) k and v, an MLP and the logits receiver."""
    model = tiny_model(kind)
    model.hf.double()
    task = _random_task(model)
    rows = torch.arange(len(task))

    def metric(logits):  # logit difference in float64 (the library's metrics read float32)
        last = task.read(logits)
        return (last[rows, task.answers] - last[rows, task.wrong]).mean()

    scores = eap(model, task, metric)
    patcher = EdgePatcher(model)
    clean, ablated = patcher.ablated_values(task)
    eps, g = 1e-2, patcher.graph
    top = scores.scores.abs().max()
    kv = g.receivers[g.receivers.index("a1.h0.q") + g.n_heads]  # first k receiver of layer 1
    for receiver in ["a1.h2.q", kv, kv[:-1] + "v", "m1", "logits"]:
        # the sender with the largest score into this receiver (tiny random models have many ~0 edges)
        edge = max((e for e in scores.edges if e[1] == receiver), key=lambda e: abs(scores.score(*e)))
        up = _exact_single_edge(patcher, task, metric, clean + eps * (ablated - clean), edge)
        down = _exact_single_edge(patcher, task, metric, clean - eps * (ablated - clean), edge)
        numeric = (up - down) / (2 * eps)  # central difference
        assert scores.score(*edge) == pytest.approx(numeric, rel=1e-2, abs=1e-3 * float(top)), edge
    # sum into logits = first-order change through the final residual stream
    L = model.dims.n_layers
    name = f"blocks.{L - 1}.hook_resid_post"
    resid = model.run(task.clean, record=[name]).cache[name].requires_grad_(True)
    (grad,) = torch.autograd.grad(metric(model.to_logits(resid)), resid)
    first_order = float(((ablated - clean).sum(2) * grad).sum())
    into_logits = sum(v for (s, r), v in zip(scores.edges, scores.scores.tolist()) if r == "logits")
    assert into_logits == pytest.approx(first_order, rel=1e-6, abs=1e-8)


def test_eap_ig_with_one_step_is_eap_and_stays_close_to_it():
    model = tiny_model("llama")
    task = _random_task(model)
    one, plain = eap_ig(model, task, steps=1), eap(model, task)
    assert torch.allclose(one.scores, plain.scores, atol=1e-6)
    assert eap_ig(model, task, steps=3).info["steps"] == 3


def test_acdc_removing_everything_gives_the_corrupted_run():
    model = tiny_model("gpt2")
    task = _random_task(model)
    circuit = acdc(model, task, threshold=1e9, progress=False)
    assert len(circuit) == 0
    with torch.no_grad():
        kl = kl_to_clean(model.run(task.clean).logits, task)(model.run(task.corrupt).logits)
    assert circuit.info["final_metric"] == pytest.approx(float(kl), rel=1e-4)


@pytest.mark.parametrize("kind", ["llama", "neox", "gemma2"])
def test_acdc_keeps_every_edge_at_negative_threshold(kind):
    """threshold < 0 keeps an edge unless removing it lowers KL: a full-ish circuit
    whose faithfulness (KL form) is 1."""
    model = tiny_model(kind)
    task = _random_task(model, batch=2, pos=4)
    circuit = acdc(model, task, threshold=-1e9, progress=False)
    assert len(circuit) == len(circuit.graph.edges)
    assert circuit.faithfulness(model, task) == pytest.approx(1.0, abs=1e-4)


# Planted circuits


@pytest.fixture(scope="module")
def induction():
    model = ms.load("zoo:induction")
    rows = repeated_random_tokens(model.dims.d_vocab, 20, 16, seed=0, prefix_token=0)
    prev = previous_token_scores(model, rows).scores[0].argmax().item()
    ind = induction_scores(model, rows).scores[1].argmax().item()
    task = induction_task(model, span=12, prefix=8, batch=24, seed=3)
    return model, task, f"a0.h{prev}", f"a1.h{ind}"


@pytest.mark.parametrize("method", ["acdc", "eap", "eap-ig"])
def test_induction_circuit_is_recovered(induction, method):
    model, task, prev, ind = induction
    found = discover(model, task, method, **({"threshold": 0.02, "progress": False} if method == "acdc" else {}))
    circuit = found if method == "acdc" else found.circuit(top=10)
    edges = set(circuit.edges)
    assert (prev, f"{ind}.k") in edges and (ind, "logits") in edges
    if method != "acdc":
        assert circuit.top(1)[0][0] == (ind, "logits")
    assert circuit.faithfulness(model, task) >= 0.8


def _auc(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).float() + 0.5 * (pos[:, None] == neg[None, :]).float()
    return float(greater.mean())


def test_eap_ranks_acdc_edges(induction):
    model, task, _, _ = induction
    found = acdc(model, task, threshold=0.02, progress=False)
    scores = eap(model, task)
    positive = torch.tensor([e in set(found.edges) for e in scores.edges])
    assert 3 <= int(positive.sum()) < len(positive)
    assert _auc(scores.scores.abs(), positive) >= 0.9


def _chain_task(depth=2, n=8, statements=4, seed=5):
    """Redirect hop 1 (``D=C`` -> ``D=E``) to a distractor of the same remaining depth and
    another digit: only the path of stacked hop heads carries the difference."""
    from mechscope.zoo import chain as Z

    rng, rows = random.Random(seed), []
    while len(rows) < n:
        text, answer, hops, resolved = Z.make_prompt(rng, depth, statements, 4)
        parts = text.split(",")
        lhs = parts[hops[0]].split("=")[0]
        chain = {parts[i].split("=")[0] for i in hops}
        other = [v for v, (d, k) in resolved.items() if k == depth - 1 and d != answer and v not in chain]
        if other:
            new = rng.choice(other)
            parts[hops[0]] = f"{lhs}={new}"
            rows.append((text, ",".join(parts), Z.TOKEN[answer], Z.TOKEN[resolved[new][0]]))
    clean, corrupt, answers, wrong = zip(*rows)
    return Task(Z.encode(list(clean)), Z.encode(list(corrupt)), torch.tensor(answers), torch.tensor(wrong))


def test_chain_circuit_is_the_stack_of_hop_heads():
    """zoo:chain, depth 2: hop 1 is head 0 of layer 1, hop 2 head 0 of layer 2 (card's
    hop_attention); ACDC keeps the path embed -> a1.h0 (value) -> a2.h0 (query) -> output."""
    model = ms.load("zoo:chain")
    task = _chain_task()
    circuit = acdc(model, task, threshold=0.3, progress=False)
    edges = set(circuit.edges)
    assert ("a1.h0", "a2.h0.q") in edges
    assert any(s == "a2.h0" for s, _ in edges) and any(r == "a1.h0.v" for _, r in edges)
    assert circuit.faithfulness(model, task) >= 0.7


# Bad input


def test_bad_input_errors():
    model = tiny_model("toy_attn_only")
    task = _random_task(model)
    with pytest.raises(MechscopeError, match="unknown circuit method"):
        discover(model, task, "magic")
    with pytest.raises(MechscopeError, match="returned nan"):
        eap(model, task, lambda logits: logits.sum() * float("nan"))
    with pytest.raises(MechscopeError, match="unknown ablation"):
        eap(model, task, ablation="noise")
    scores = eap(model, task)
    with pytest.raises(MechscopeError, match="no edge"):
        scores.circuit(threshold=1e12)
    with pytest.raises(MechscopeError, match="exactly one"):
        scores.circuit()
    with pytest.raises(MechscopeError, match="steps"):
        eap_ig(model, task, steps=0)
    with pytest.raises(MechscopeError, match="not in this model's graph"):
        scores.graph.mask_of([("a1.h0", "a0.h0.q")])


def test_cli_bad_input_is_one_line(capsys):
    from mechscope.cli import main

    for argv, text in [
        (["circuit", "zoo:digits", "induction"], "zoo:digits has no attention heads"),
        (["circuit", "zoo:induction", "induction", "--top", "0"], "top must be at least 1, got 0"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("mechscope: error:") and "\n" not in err and text in err, err
