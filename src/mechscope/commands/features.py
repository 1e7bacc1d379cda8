"""`mechscope features build|show|export-neuronpedia`: the feature store from the shell.

    mechscope features build zoo:pycode --sae runs/sae --data 'corpus/*.txt' --out runs/store --tokens 1000000
    mechscope features show runs/store 12 [--json]
    mechscope features export-neuronpedia runs/store runs/np

`build` resumes an interrupted build, and adds a new corpus to an existing store; under
`torchrun --nproc_per_node N mechscope features build ...` the ranks share the batches and
rank 0 writes a store equal to a one-process build. Each maps onto one call of
`mechscope.features`; no science here.
"""

from __future__ import annotations

import argparse
import json

from .arguments import positive


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="features_cmd", required=True)
    b = sub.add_parser("build", help="build (or resume, or add a corpus to) a feature store")
    b.add_argument("model", help="hub id, local folder, or zoo:NAME (e.g. zoo:pycode)")
    b.add_argument("--sae", required=True, help="dictionary folder (mechscope, SAELens or sparsify layout)")
    b.add_argument("--data", required=True, help="corpus: a .txt/.py/.md/.jsonl/.parquet file, a folder or a glob")
    b.add_argument("--out", required=True, help="the store folder (created, resumed, or added to)")
    b.add_argument("--tokens", type=positive, help="read at most this many tokens of the corpus (default: all)")
    b.add_argument("--text-field", default="text", help="field of .jsonl records / parquet column holding the text")
    b.add_argument("--ctx", type=positive, default=64, help="tokens per context (at most the model's context)")
    b.add_argument("--batch-size", type=positive, default=16, help="contexts per forward pass")
    b.add_argument("--k", type=positive, default=20, help="top activating contexts kept per latent")
    b.add_argument("--hookpoint", help="which dictionary of a multi-site sparsify folder")
    s = sub.add_parser("show", help="one latent of a store: examples, density, logit effects, neighbours")
    s.add_argument("store", help="a store folder built by `mechscope features build`")
    s.add_argument("latent", type=int, help="the latent's index")
    s.add_argument("--top", type=positive, default=5, help="top examples to print")
    s.add_argument("--json", action="store_true", help="print everything the store holds about it as JSON")
    e = sub.add_parser("export-neuronpedia", help="write the store's features in Neuronpedia's JSON layout")
    e.add_argument("store", help="a store folder")
    e.add_argument("out", help="output folder (batch-N.json files)")
    e.add_argument("--model-id", help="Neuronpedia model id (default: the model's name)")
    e.add_argument("--sae-set", default="mechscope", help="Neuronpedia SAE set name")


def _build(args) -> int:
    """Under `torchrun` every rank builds (its share of the batches); rank 0 reports."""
    from ..distributed import init_distributed

    rank, world = init_distributed()
    try:
        return _build_ranked(args, rank)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _build_ranked(args, rank: int) -> int:
    from ..dictionary import read
    from ..features import BuildConfig, build
    from ..models.loading import load
    from .checks import context_length

    model = load(args.model)
    coder = read(args.sae, hookpoint=args.hookpoint) if args.hookpoint else args.sae
    cfg = BuildConfig(ctx_len=context_length(model, args.ctx, 64), batch_size=args.batch_size, k=args.k)
    store = build(model, coder, args.data, args.out, tokens=args.tokens, cfg=cfg, text_field=args.text_field)
    info = store.info()
    if rank == 0:
        print(f"feature store {args.out}: {info['d_sae']} latents over {info['n_tokens']} tokens, {info['dead']} dead")
    return 0


def _visible(tokens: list[str], centre: int) -> str:
    shown = [t.replace("\n", "⏎") for t in tokens]
    shown[centre] = f"[[{shown[centre]}]]"
    return "".join(shown)


def _show(args) -> int:
    from ..features import open_store

    f = open_store(args.store).feature(args.latent)
    if args.json:
        print(json.dumps(f.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(
        f"latent {f.id}: density {f.density:.4g} ({f.count} activations), mean {f.mean:.4g}, max {f.max:.4g}"
        + (f", {f.kind}" if f.kind else "")
    )
    if f.explanation:
        print(f"  explanation: {f.explanation}")
    for e in f.top[: args.top]:
        print(f"  {e.value:8.4f}  {_visible(e.tokens, e.centre)}")
    if f.logits_up:
        print("  promotes:  " + ", ".join(f"{t!r} {v:+.3f}" for t, v in f.logits_up[:5]))
        print("  suppresses: " + ", ".join(f"{t!r} {v:+.3f}" for t, v in f.logits_down[:5]))
    print("  neighbours: " + ", ".join(f"{i} ({c:.2f})" for i, c in f.neighbours[:5]))
    return 0


def _export(args) -> int:
    from ..features import export_neuronpedia

    paths = export_neuronpedia(args.store, args.out, model_id=args.model_id, sae_set=args.sae_set)
    print(f"wrote {len(paths)} Neuronpedia batch file(s) to {args.out}")
    return 0


def execute(args: argparse.Namespace) -> int:
    return {"build": _build, "show": _show, "export-neuronpedia": _export}[args.features_cmd](args)
