"""Hooking plans (`mechscope.hooks.Plan`): a forward pass composed of small plans that each
register their own hooks; `Model.run(plans=...)` takes any of them."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

import mechscope as ms
from mechscope import edits, hooks
from mechscope.hooks import CopyRows, GatherLogits, Plan, installed

from .models.tiny import tiny_model

IDS = torch.randint(1, 97, (3, 6), generator=torch.Generator().manual_seed(0))


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


class Doubled(Plan):
    """A plan of a user's own: the rows twice from block 0 on, and the output halved back."""

    name = "doubled"
    one_batch = True

    def install(self, model, table, handles):
        block = model.get_submodule(table["blocks.0.hook_resid_pre"].module)
        handles.append(block.register_forward_pre_hook(self._double, with_kwargs=True))

    def _double(self, module, args, kwargs):
        return (torch.cat([args[0], args[0]]), *args[1:]), kwargs

    def rows(self, prompts):
        return 2 * prompts


def test_a_plan_of_ones_own_runs_with_records_and_edits():
    model = tiny_model("toy")
    plain = model.run(IDS, record="blocks.1.hook_resid_post", edits=[edits.zero("blocks.1.hook_mlp_out")])
    both = model.run(
        IDS, record="blocks.1.hook_resid_post", edits=[edits.zero("blocks.1.hook_mlp_out")], plans=[Doubled()]
    )
    assert both.logits.shape[0] == 6 and both.tokens.shape == (6, 6)
    torch.testing.assert_close(both.logits, plain.logits.repeat(2, 1, 1), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        both.cache["blocks.1.hook_resid_post"],
        plain.cache["blocks.1.hook_resid_post"].repeat(2, 1, 1),
        atol=1e-6,
        rtol=0,
    )
    with pytest.raises(ms.MechscopeError, match="^doubled need the prompts in one batch"):
        model.run(IDS, plans=[Doubled()], batch_size=1)
    assert _hook_count(model) == 0


def test_copy_and_gather_plans_equal_the_run_shortcuts():
    model = tiny_model("llama")
    read = torch.tensor([5, 3, 4])
    edit = edits.add("blocks.1.hook_resid_pre", torch.ones(32))
    short = model.run(IDS, edits=[edit], copies={1: 2}, logit_positions=read)
    planned = model.run(IDS, edits=[edit], plans=[CopyRows({1: 2}), GatherLogits(read)])
    assert short.logits.shape == (6, 97)
    torch.testing.assert_close(planned.logits, short.logits, atol=0, rtol=0)
    with pytest.raises(ms.MechscopeError, match="^copies and logit_positions need the prompts in one batch"):
        model.run(IDS, plans=[CopyRows({1: 2}), GatherLogits(read)], batch_size=2)


def test_hooks_are_removed_when_a_plan_fails_to_install():
    model = tiny_model("gpt2")

    class Broken(Plan):
        def install(self, model_, table, handles):
            handles.append(
                model_.get_submodule(table["blocks.0.hook_resid_pre"].module).register_forward_pre_hook(lambda *a: None)
            )
            raise ms.MechscopeError("broken plan")

    with pytest.raises(ms.MechscopeError, match="broken plan"):
        model.run(IDS, record="blocks.0.hook_resid_post", plans=[CopyRows({0: 2}), Broken()])
    assert _hook_count(model) == 0
    with pytest.raises(ms.MechscopeError, match="layers 0-1"), installed(model.hf, model.table, [CopyRows({7: 1})]):
        pass
    assert _hook_count(model) == 0


def test_hooks_functions_stay_short():
    """House rule: no function in hooks.py over 60 lines."""
    tree = ast.parse(inspect.getsource(hooks))
    longest = max(
        (n.end_lineno - n.lineno + 1, n.name)
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    )
    assert longest[0] <= 60, longest
