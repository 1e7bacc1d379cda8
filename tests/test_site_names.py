"""The torch-free site vocabulary that lets the CLI refuse a mistyped site before loading:
every site any family's table builds is in it, typos are not, and module paths pass."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mechscope.site_names import unknown_kind
from mechscope.zoo import WEIGHTS
from tests.models.tiny import FAMILY_NAMES, MOE_NAMES, tiny_model


@pytest.mark.parametrize("family", FAMILY_NAMES + MOE_NAMES)
def test_every_table_site_is_in_the_vocabulary(family):
    assert [s.name for s in tiny_model(family).sites if unknown_kind(s.name)] == []


@pytest.mark.parametrize(
    "name, near",
    [
        ("blocks.0.hook_resid_pots", "blocks.0.hook_resid_post"),
        ("blocks.3.attn.hook_zz", "blocks.3.attn.hook_z"),
        ("blocks.2.mlp.hook_pots", "blocks.2.mlp.hook_post"),
        ("hook_embd", "hook_embed"),
        ("ln_final.hook_normalised", "ln_final.hook_normalized"),
    ],
)
def test_typos_are_refused_with_the_nearest_name(name, near):
    assert f"did you mean '{near}'" in unknown_kind(name)


@pytest.mark.parametrize(
    "name",
    [
        "blocks.*.hook_resid_post",
        "blocks.1.*",
        "fc1.hook_out",
        "model.layers.3.mlp.hook_in",
        "conv1.hook_out",
        "logits",
        "blocks.0.hook_mlp_in",
    ],
)
def test_globs_module_paths_and_real_names_pass(name):
    assert unknown_kind(name) is None


@pytest.mark.skipif(not (WEIGHTS / "pycode" / "config.json").is_file(), reason="zoo:pycode is not trained here")
def test_the_cli_refuses_a_mistyped_site_before_torch_loads():
    code = (
        "import sys\nfrom mechscope.cli import main\n"
        "print(main(['run', 'zoo:pycode', 'x', '--record', 'blocks.0.hook_resid_pots']), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split()[-2:] == ["2", "False"]
    assert "did you mean 'blocks.0.hook_resid_post'" in done.stderr and len(done.stderr.strip().splitlines()) == 1
