"""Tasks, prompts and their bad inputs: one-line errors, nothing half-done."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.errors import MechscopeError
from mechscope.incontext import Task, Template, builtin_tasks, get_task, icl_prompts, load_task, zero_shot_prompts
from mechscope.incontext.prompts import answer_ids
from mechscope.model import Model
from mechscope.zoo.icl import IclRecipe, build_model, make_tokenizer


@pytest.fixture(scope="module")
def model() -> Model:
    return Model(build_model(IclRecipe(d_model=16, d_mlp=16, d_head=4, n_layers=1)), make_tokenizer())


def test_template_writes_prompts():
    t = Template()
    assert t.prompt([("n1", "n2"), ("n3", "n4")], "n5") == "n1 -> n2 ; n3 -> n4 ; n5 ->"
    assert t.answer_text("n6") == " n6"
    code = Template(pair="{x}{y}", separator="\n")
    assert code.prompt([("self.a =", " a")], "self.b =") == "self.a = a\nself.b ="
    with pytest.raises(MechscopeError, match="end with"):
        Template(pair="{y} <- {x}")


def test_tasks_need_two_pairs_of_strings():
    with pytest.raises(MechscopeError, match="at least 2"):
        Task("one", (("a", "b"),))
    with pytest.raises(MechscopeError, match="two non-empty strings"):
        Task("bad", (("a", "b"), ("c", "")))
    with pytest.raises(MechscopeError, match="two non-empty strings"):
        Task("bad", (("a", "b"), ("c",)))
    fit, test = Task("t", tuple((f"n{i}", f"n{i}") for i in range(10))).split(0.6)
    assert len(fit) == 6 and len(test) == 4 and not set(fit.pairs) & set(test.pairs)


def test_loaders(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"input": "n1", "output": "n2"}\n{"input": "n2", "output": "n3"}\n')
    (tmp_path / "b.csv").write_text("input,output\nn1,n2\nn2,n3\n")
    assert load_task(tmp_path / "a.jsonl").pairs == load_task(tmp_path / "b.csv").pairs == (("n1", "n2"), ("n2", "n3"))
    (tmp_path / "c.jsonl").write_text('{"input": "n1"}\n')
    with pytest.raises(MechscopeError, match="'input' and an 'output'"):
        load_task(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text("{not json\n")
    with pytest.raises(MechscopeError, match="not valid"):
        load_task(tmp_path / "d.jsonl")
    (tmp_path / "e.jsonl").write_text(json.dumps({"input": "n1", "output": "n2"}) + "\n")
    with pytest.raises(MechscopeError, match="at least 2"):
        load_task(tmp_path / "e.jsonl")
    with pytest.raises(MechscopeError, match="unknown task"):
        get_task("icl/nonsense")
    with pytest.raises(MechscopeError, match="does not exist"):
        get_task(tmp_path / "missing.csv")
    assert {"icl/successor", "icl/parity", "pycode/attribute-copy", "pycode/private-attribute-copy"} <= set(
        builtin_tasks()
    )


def test_prompts_and_first_token_answers(model):
    task = builtin_tasks()["icl/successor"]
    p = icl_prompts(model, task, shots=3, n=5, seed=1)
    assert p.ids.shape == (5, 1 + 4 * 3 + 2) and (p.ids[:, 0] == 0).all()
    vocab = make_tokenizer().get_vocab()
    for text, answer in zip(p.texts, p.answers.tolist()):
        query = text.split(" ; ")[-1].split()[0]
        assert answer == vocab[f"n{(int(query[1:]) + 1) % 16}"]
        assert query not in [d.split()[0] for d in text.split(" ; ")[:-1]]  # the query is not a demonstration
    shuffled = icl_prompts(model, task, shots=3, n=5, seed=1, shuffle_labels=True)
    assert torch.equal(shuffled.answers, p.answers) and shuffled.ids.shape == p.ids.shape
    for text in shuffled.texts:  # every demonstration's output belongs to another input
        for demo in text.split(" ; ")[:-1]:
            x, _, y = demo.split()
            assert int(y[1:]) != (int(x[1:]) + 1) % 16
    zero = zero_shot_prompts(model, task)
    assert len(zero) == 16 and zero.n_tokens == 3


def test_multi_token_outputs_use_the_first_token_or_are_refused(model):
    template = Template()
    ids = answer_ids(model, template, ["n4 n5", "n6"])
    vocab = make_tokenizer().get_vocab()
    assert ids.tolist() == [vocab["n4"], vocab["n6"]]  # scored by the first token
    with pytest.raises(MechscopeError, match="2 tokens where one is required"):
        answer_ids(model, template, ["n4 n5", "n6"], single_token=True)
    with pytest.raises(MechscopeError, match="too few"):
        icl_prompts(model, Task("t", (("n1", "n2"), ("n2", "n3"))), shots=3, n=2)
