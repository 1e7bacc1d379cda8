"""The vocabulary of site names, without torch: what `blocks.{l}.KIND` and the model-level
sites can be called in any family's table. The CLI checks a name against it before loading
anything, so a typo fails in a fraction of a second; whether one model has that site is
decided by its own table once it is loaded."""

from __future__ import annotations

import difflib
import re

BLOCK_KINDS = (
    "hook_resid_pre",
    "attn.hook_q",
    "attn.hook_k",
    "attn.hook_v",
    "attn.hook_pattern",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_in",
    "mlp.hook_post",
    "mlp.hook_router_logits",
    "mlp.hook_expert_weights",
    "hook_mlp_out",
    "hook_resid_post",
)
"""Site kinds inside block l (`blocks.{l}.KIND`), in forward order."""
MODEL_KINDS = ("hook_embed", "hook_pos_embed", "ln_final.hook_normalized", "logits")
"""Sites outside the blocks."""
_BLOCK = re.compile(r"blocks\.(-?\d+)\.(.+)")


def unknown_kind(name: str) -> str | None:
    """Why `name` cannot be a table site of any family (with the nearest kind), or None. Globs
    and module paths (`PATH.hook_in` / `PATH.hook_out`, offered where no table applies) pass."""
    if any(c in name for c in "*?[") or name.endswith((".hook_in", ".hook_out")):
        return None
    block = _BLOCK.fullmatch(name)
    if block is None and not name.startswith("blocks."):
        if name in MODEL_KINDS or "." in name and not name.startswith(("hook_", "ln_final.")):
            return None  # a module path of a model without a table
        near = difflib.get_close_matches(name, MODEL_KINDS, n=1)
    else:
        kind = block.group(2) if block else name.removeprefix("blocks.")
        if kind in BLOCK_KINDS:
            return None
        near = [
            f"blocks.{block.group(1) if block else 'L'}.{k}" for k in difflib.get_close_matches(kind, BLOCK_KINDS, n=1)
        ]
    hint = f": did you mean '{near[0]}'?" if near else ""
    return f"unknown site '{name}'{hint} (`mechscope info MODEL` lists every site with its shape)"
