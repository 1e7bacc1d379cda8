"""Peer libraries (TransformerLens, nnsight) for `bench/hooks.py`.

Runs with the peers' own interpreter (`bench/.peers/bin/python`, see bench/README.md),
never with the project's: mechscope does not depend on these libraries.

    bench/.peers/bin/python bench/_peers.py MODEL_DIR IDS.safetensors --layer 5 --threads 2

Loads the Hugging Face folder MODEL_DIR (the same weights the parent times), wraps a copy in
nnsight (any architecture), and, for GPT-2 and Llama (TL_TYPES), builds a
TransformerLens `HookedTransformer` from a hand-written config and the converted HF
state dict (nothing from the hub), wraps a second copy of the HF model in nnsight and a
third in TransformerLens' `TransformerBridge` (its HF-wrapping successor to
HookedTransformer), and checks all of them against plain HF. Then it answers the parent on stdin/stdout, one JSON line
per request, so that the parent can interleave these timings with its own:

    ready line  {"versions": {...}, "checks": {...}, "attn": "sdpa"}
    request     "<variant> <inner>"  ->  {"seconds": <mean seconds per forward over inner calls>}
    variants    hf, nn_all, nn_early (+ tl_all, tl_early, tlb_all, tlb_early for TL_TYPES);
                the ready line lists them
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch
from safetensors.torch import load_file

# Keep stdout for the protocol: anything a library prints goes to stderr.
_PROTOCOL = sys.stdout
sys.stdout = sys.stderr
warnings.filterwarnings("ignore")

LAYERS_PATH = {"gpt2": "transformer.h", "llama": "model.layers", "qwen3": "model.layers", "mixtral": "model.layers"}
TL_TYPES = ("gpt2", "llama")
"""Model types with a hand-written TransformerLens config here; the others get nnsight only."""


def tl_config(hf_config):
    """A HookedTransformerConfig written by hand from the HF config (no hub look-up)."""
    from transformer_lens import HookedTransformerConfig

    c = hf_config
    if c.model_type == "gpt2":
        return HookedTransformerConfig(
            n_layers=c.n_layer,
            d_model=c.n_embd,
            n_ctx=c.n_positions,
            d_head=c.n_embd // c.n_head,
            n_heads=c.n_head,
            d_mlp=c.n_inner or 4 * c.n_embd,
            d_vocab=c.vocab_size,
            act_fn=c.activation_function,
            eps=c.layer_norm_epsilon,
            normalization_type="LN",
            positional_embedding_type="standard",
            original_architecture="GPT2LMHeadModel",
            default_prepend_bos=False,
        )
    if c.model_type == "llama":
        d_head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv = c.num_key_value_heads
        return HookedTransformerConfig(
            n_layers=c.num_hidden_layers,
            d_model=c.hidden_size,
            n_ctx=c.max_position_embeddings,
            d_head=d_head,
            n_heads=c.num_attention_heads,
            d_mlp=c.intermediate_size,
            d_vocab=c.vocab_size,
            act_fn=c.hidden_act,
            eps=c.rms_norm_eps,
            normalization_type="RMS",
            final_rms=True,
            gated_mlp=True,
            n_key_value_heads=kv if kv != c.num_attention_heads else None,
            positional_embedding_type="rotary",
            rotary_dim=d_head,
            rotary_adjacent_pairs=False,
            rotary_base=c.rope_parameters["rope_theta"],
            original_architecture="LlamaForCausalLM",
            default_prepend_bos=False,
        )
    raise SystemExit(f"_peers.py: no TransformerLens config for model_type {c.model_type!r}")


def build_tl(hf):
    """HookedTransformer with the HF weights, unprocessed (no LN folding) so logits match HF."""
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg = tl_config(hf.config)
    convert = {"gpt2": convert_gpt2_weights, "llama": convert_llama_weights}[hf.config.model_type]
    tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict(
        convert(hf, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return tl.eval()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("ids")
    p.add_argument("--layer", type=int, required=True, help="the middle layer of the early-stop case")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import nnsight
    import transformer_lens
    import transformers
    from nnsight import TransformersModel
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()
    tokenizer = lambda: AutoTokenizer.from_pretrained(args.model_dir)  # noqa: E731
    ids = load_file(args.ids)["input_ids"]
    mask = torch.ones_like(ids)
    load = lambda: AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()  # noqa: E731
    hf = load()
    n_layers, mid = hf.config.num_hidden_layers, args.layer
    with_tl = hf.config.model_type in TL_TYPES
    # nnsight and the bridge wrap their own copies, so that plain HF stays untouched
    nnm = TransformersModel(load(), tokenizer=tokenizer(), task="text-generation")
    envoy = nnm
    for part in LAYERS_PATH[hf.config.model_type].split("."):
        envoy = getattr(envoy, part)
    layers = envoy
    names = [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]

    def hf_run():
        return hf(input_ids=ids, attention_mask=mask, use_cache=False).logits

    def nn_all():
        saved = []
        with nnm.trace(ids, use_cache=False):
            for i in range(n_layers):
                saved.append(layers[i].output.save())
            saved.append(nnm.output.logits.save())
        return saved

    def nn_early():
        saved = []
        with nnm.trace(ids, use_cache=False) as tracer:
            saved.append(layers[mid].output.save())
            tracer.stop()
        return saved

    variants = {"hf": hf_run, "nn_all": nn_all, "nn_early": nn_early}
    bridge = None
    if with_tl:
        tl = build_tl(hf)
        bridge = TransformerBridge.boot_transformers(args.model_dir, hf_model=load(), tokenizer=tokenizer())
        variants.update(
            tl_all=lambda: tl.run_with_cache(ids, names_filter=names),
            tl_early=lambda: tl.run_with_cache(ids, names_filter=[names[mid]], stop_at_layer=mid + 1),
            tlb_all=lambda: bridge.run_with_cache(ids, names_filter=names),
            tlb_early=lambda: bridge.run_with_cache(ids, names_filter=[names[mid]], stop_at_layer=mid + 1),
        )
    with torch.inference_mode():
        ref = hf(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
        # hidden_states[i + 1] is block i's output, except the last one (final norm applied)
        inner_resid = range(n_layers - 1)

        def resid_maxdiff(cache) -> float:
            return max((cache[i] - ref.hidden_states[i + 1]).abs().max().item() for i in inner_resid)

        nn_saved, nn_mid = nn_all(), nn_early()
        checks = {
            "nn_logits_maxdiff": (nn_saved[-1] - ref.logits).abs().max().item(),
            "nn_resid_maxdiff": resid_maxdiff(nn_saved),
            "nn_early_maxdiff": (nn_mid[0] - ref.hidden_states[mid + 1]).abs().max().item(),
        }
        if with_tl:
            for peer in ("tl", "tlb"):
                logits, cache = variants[f"{peer}_all"]()
                checks[f"{peer}_logits_maxdiff"] = (logits - ref.logits).abs().max().item()
                checks[f"{peer}_resid_maxdiff"] = resid_maxdiff([cache[n] for n in names])
            tlb_mid = variants["tlb_early"]()[1][names[mid]]
            checks["tlb_early_maxdiff"] = (tlb_mid - ref.hidden_states[mid + 1]).abs().max().item()
    reply(
        {
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                **({"transformer_lens": _version("transformer-lens", transformer_lens)} if with_tl else {}),
                "nnsight": _version("nnsight", nnsight),
            },
            "checks": checks,
            "attn": hf.config._attn_implementation,
            "bridge_attn": getattr(bridge.original_model.config, "_attn_implementation", "?") if bridge else None,
            "variants": sorted(variants),
            "threads": torch.get_num_threads(),
            "pid": os.getpid(),
        }
    )
    for line in sys.stdin:
        if not line.strip() or line.strip() == "quit":
            break
        name, inner = line.split()
        fn = variants[name]
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(int(inner)):
                fn()
            reply({"seconds": (time.perf_counter() - start) / int(inner)})


def _version(dist: str, module) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return getattr(module, "__version__", "?")


def reply(obj: dict) -> None:
    _PROTOCOL.write(json.dumps(obj) + "\n")
    _PROTOCOL.flush()


if __name__ == "__main__":
    main()
