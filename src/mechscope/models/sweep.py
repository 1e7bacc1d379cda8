"""The all-types sweep: every causal-LM `model_type` that transformers knows, built offline
from a tiny config and checked against Hugging Face's own `hidden_states`.

    python -m mechscope.models.sweep --write docs/architectures.md   # regenerate the table
    python -m mechscope.models.sweep                                 # print it

Each type ends in one outcome:
- exact (table): a family table serves it and blocks.{l}.hook_resid_post == hidden_states[l + 1]
  (the final norm applied to the last block's output gives the last entry);
- exact (automatic): no table; the automatic adapter verified the same identities;
- module paths: the automatic adapter could not verify the residual stream, so only
  module-path sites are offered;
- refused: mechscope declined with a one-line MechscopeError;
- not built: the tiny config or the model cannot be made offline (remote code, files,
  optional packages, a config the generic shrinking cannot satisfy);
- wrong: resid_post disagrees with hidden_states although sites were offered; there must be none;
- crash: anything else. There must be none either.

The tiny config is generic: size attributes a config has are shrunk (widths, layers, heads,
experts, vocabulary), per-layer lists are cut to the new depth, token ids moved into the
vocabulary; `SPECIAL` holds the few values some configs need besides, as data.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MechscopeError

LAYERS = 2
SIZES = {
    # widths: d_model 32, 4 heads of 8, 2 key/value heads
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "n_embed", "embed_dim", "model_dim", "dim"), 32),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "n_kv_heads", "num_kv_heads", "multi_query_group_num"), 2),
    **dict.fromkeys(
        (
            "head_dim",
            "kv_channels",
            "attention_head_dim",
            "v_head_dim",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "qk_head_dim",
            "global_head_dim",
            "d_head",
        ),
        8,
    ),
    **dict.fromkeys(
        (
            "intermediate_size",
            "n_inner",
            "ffn_dim",
            "decoder_ffn_dim",
            "ffn_hidden_size",
            "d_ff",
            "inner_hidden_size",
            "mlp_dim",
            "dense_intermediate_size",
        ),
        64,
    ),
    **dict.fromkeys(
        (
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
            "expert_intermediate_size",
            "moe_ffn_hidden_size",
            "shared_intermediate_size",
            "ffn_dim_expert",
        ),
        16,
    ),
    **dict.fromkeys(
        ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_routed_experts"), 4
    ),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "top_k", "num_experts_per_token", "moe_k"), 2),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank"), 16),
    **dict.fromkeys(("rotary_dim", "rope_dim"), 4),
    **dict.fromkeys(("word_embed_proj_dim",), 32),
    **dict.fromkeys(("mamba_n_heads", "ssm_num_heads", "linear_num_value_heads", "linear_num_key_heads"), 4),
    **dict.fromkeys(("mamba_d_head", "linear_key_head_dim", "linear_value_head_dim", "mamba_head_dim"), 16),
    **dict.fromkeys(
        ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "num_decoder_layers"), LAYERS
    ),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length"), 64),
    **dict.fromkeys(("first_k_dense_replace", "num_dense_layers", "first_k_dense"), 1),
    "vocab_size": 128,
}
UNSET_SIZES = {"head_dim", "num_key_value_heads"}
"""Size keys whose default None the modeling code does not always fill in."""
TOKEN_IDS = {
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
    "sep_token_id": 2,
    "cls_token_id": 1,
    "mask_token_id": 3,
    "unk_token_id": 3,
}
SPECIAL: dict[str, dict] = {
    "mamba2": {"head_dim": 16},  # heads * head_dim must equal expand * hidden_size
    "zaya": {"num_experts_per_tok": 1},  # the only routing it supports
}
"""model_type -> extra config values some configs need beyond the generic shrinking (data)."""
OUTCOMES = ("exact (table)", "exact (automatic)", "module paths", "refused", "not built", "wrong", "crash")


@dataclass
class Result:
    model_type: str
    outcome: str
    detail: str = ""
    seconds: float = 0.0


def _shrink(values: dict, depth: int = 0) -> dict:
    """Tiny sizes for every size key the config has; per-layer lists cut to LAYERS; sub-configs too."""
    layers = next(
        (
            values[k]
            for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers")
            if isinstance(values.get(k), int)
        ),
        None,
    )
    out = dict(values)
    for key, value in values.items():
        if key in UNSET_SIZES and value is None:
            out[key] = SIZES[key]
        elif key in SIZES and isinstance(value, int) and not isinstance(value, bool):
            out[key] = min(value, SIZES[key]) if key.startswith(("first_k", "num_dense")) else SIZES[key]
        elif key in TOKEN_IDS and isinstance(value, int):
            out[key] = TOKEN_IDS[key]
        elif isinstance(value, list) and layers and len(value) == layers and layers != LAYERS:
            out[key] = value[:LAYERS]
        elif isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            out[key] = {k: v for k, v in value.items() if int(k) < LAYERS}  # per-layer overrides
        elif isinstance(value, dict) and depth < 3 and any(k in value for k in SIZES):
            out[key] = _shrink(value, depth + 1)
    if "kv_lora_rank" in values and "num_key_value_heads" in values:  # latent attention: kv heads = heads
        out["num_key_value_heads"] = SIZES["num_attention_heads"]
    return out


def tiny_config(model_type: str):
    """A tiny config of this model_type (MechscopeError-free; any exception means 'not built')."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    values = {**_shrink(cls().to_dict()), **SPECIAL.get(model_type, {})}
    config = cls.from_dict(values)
    config._attn_implementation = (
        "eager" if getattr(config, "_attn_implementation", None) is None else config._attn_implementation
    )
    return config


MAX_PARAMETERS = 2_000_000


def build(model_type: str):
    """The tiny model; a ValueError when the generic shrinking leaves it large (sizes it does not know)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            size = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        if size > MAX_PARAMETERS:
            raise ValueError(
                f"the tiny config still has {size / 1e6:.0f}M parameters (sizes the shrinking does not know)"
            )
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(config).eval()


def oracle(model, hf, ids) -> bool:
    """blocks.{l}.hook_resid_post == hidden_states[l + 1]; final norm of the last == the last entry."""
    from .auto_check import close

    with torch.no_grad():
        hidden = hf(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        L = model.dims.n_layers
        run = model.run(ids, record="blocks.*.hook_resid_post")
        post = [run.cache[f"blocks.{i}.hook_resid_post"] for i in range(L)]
        return (
            len(hidden) == L + 1
            and all(torch.equal(p, h) for p, h in zip(post[:-1], hidden[1:-1]))
            and close(model.final_norm(post[-1]), hidden[L])
        )


def check(model_type: str) -> Result:
    """One model_type through load()'s logic: its table if it has one, else the automatic adapter."""
    from ..model import Model
    from .auto_model import AutoModel, auto_model
    from .families import adapter_for

    try:
        hf = build(model_type)
    except Exception as err:  # noqa: BLE001 - whatever stops a tiny model from being built offline
        return Result(model_type, "not built", _first_line(err))
    try:
        vocab = hf.get_input_embeddings().num_embeddings
        ids = torch.randint(4, min(vocab, SIZES["vocab_size"]), (2, 8), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            hf(input_ids=ids, use_cache=False)
    except Exception as err:  # noqa: BLE001 - Hugging Face's own forward fails on this tiny config
        return Result(model_type, "not built", f"Hugging Face's forward fails on the tiny config: {_first_line(err)}")
    try:
        if adapter_for(hf.config.model_type) is not None:
            model = Model(hf, None, name=model_type)
            if oracle(model, hf, ids):
                return Result(model_type, "exact (table)", model.adapter.family)
            return Result(model_type, "wrong", f"the {model.adapter.family} table disagrees with hidden_states")
        auto = auto_model(hf, name=model_type)
        if not isinstance(auto, AutoModel):
            why = [w.strip("()") for w in auto.provenance.get("not offered", [])]
            return Result(model_type, "module paths", why[0] if why else "")
        if not oracle(auto, hf, ids):
            return Result(model_type, "wrong", "the automatic adapter's resid_post disagrees with hidden_states")
        missing = [k for k in auto.provenance.get("not offered", []) if not k.startswith("(")]
        paths = " (+ module paths)" if "module paths" in " ".join(auto.provenance) else ""
        return Result(
            model_type,
            "exact (automatic)",
            ("every site kind" if not missing else "not offered: " + ", ".join(missing)) + paths,
        )
    except MechscopeError as err:
        return Result(model_type, "refused", _first_line(err))
    except Exception as err:  # noqa: BLE001 - reported, and the tests require there are none
        return Result(model_type, "crash", f"{type(err).__name__}: {_first_line(err)}")


def _first_line(err: BaseException) -> str:
    text = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    first = " ".join(text[:2]) if len(text) > 1 and text[0].endswith(":") else (text[0] if text else type(err).__name__)
    return first[:160]


def _import(model_type: str) -> None:
    """Import the modeling module of this type (the first access is slow: transformers imports lazily)."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        MODEL_FOR_CAUSAL_LM_MAPPING[CONFIG_MAPPING[model_type]]
    except Exception:  # noqa: BLE001, S110 - build() meets the same error and reports it
        pass


class _Timeout(BaseException):  # not an Exception: no `except Exception` in the checks may swallow it
    pass


def _alarm(signum, frame):
    raise _Timeout


def sweep(types: list[str] | None = None, timeout: int = 10) -> list[Result]:
    """Every causal-LM model_type (or `types`), each within `timeout` CPU seconds."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    quiet = logging.getLogger("mechscope")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # each module-path fallback warns; the table says it instead
    results = []
    # CPU seconds, not wall seconds: the outcome must not depend on how busy the machine is
    previous = signal.signal(signal.SIGPROF, _alarm)
    try:
        for model_type in types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES):
            start = time.perf_counter()
            _import(model_type)  # outside the alarm: an import cut short leaves its module half-registered
            signal.setitimer(signal.ITIMER_PROF, timeout)
            try:
                result = check(model_type)
            except _Timeout:
                result = Result(model_type, "not built", f"took more than {timeout} CPU seconds")
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
            result.seconds = time.perf_counter() - start
            results.append(result)
    finally:
        signal.signal(signal.SIGPROF, previous)
        quiet.setLevel(level)
    return results


def counts(results: list[Result]) -> dict[str, int]:
    return {o: sum(r.outcome == o for r in results) for o in OUTCOMES}


def markdown(results: list[Result]) -> str:
    import transformers

    n = counts(results)
    lines = [
        "# Architectures",
        "",
        (
            "Generated by `python -m mechscope.models.sweep --write docs/architectures.md` "
            f"(transformers {transformers.__version__}); do not edit by hand."
        ),
        "",
        (
            "Every causal-LM `model_type` in transformers' auto mapping, built offline from a tiny random-weight "
            "config and checked against Hugging Face's own `hidden_states`: `blocks.{l}.hook_resid_post` equals "
            "`hidden_states[l + 1]`, and the final norm maps the last block's output to the last entry. "
            "*exact (table)*: a family table in `mechscope/models/families*.py`; *exact (automatic)*: the automatic "
            "adapter (`mechscope/models/auto*.py`) found and verified the sites itself (`mechscope info` lists which); "
            "*module paths*: nothing could be verified, so sites are module paths only; *refused*: a one-line "
            "MechscopeError; *not built*: the tiny model could not be made offline."
        ),
        "",
        "| outcome | model types |",
        "| --- | --- |",
        *[f"| {o} | {n[o]} |" for o in OUTCOMES],
        f"| total | {len(results)} |",
        "",
        "| model_type | outcome | detail |",
        "| --- | --- | --- |",
        *[f"| `{r.model_type}` | {r.outcome} | {r.detail.replace('|', '/')} |" for r in results],
        "",
    ]
    return "\n".join(lines)


def read_counts(text: str) -> dict[str, int]:
    """The outcome counts of a generated table (for the test that keeps it current)."""
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 2 and cells[0] in OUTCOMES:
            found[cells[0]] = int(cells[1])
    return found


def read_outcomes(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            found[cells[0].strip("`")] = cells[1]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mechscope.models.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="FILE", help="write the markdown table here (else print it)")
    parser.add_argument("--types", nargs="*", help="only these model types")
    parser.add_argument("--timeout", type=int, default=10, help="CPU seconds per model type")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = sweep(args.types, args.timeout)
    text = markdown(results)
    if args.write:
        from ..io import write_text

        write_text(Path(args.write), text)
    else:
        print(text)
    slow = sorted(results, key=lambda r: -r.seconds)[:5]
    print(
        f"{len(results)} types in {time.perf_counter() - start:.0f} s; {counts(results)}; slowest: "
        + ", ".join(f"{r.model_type} {r.seconds:.1f}s" for r in slow)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
