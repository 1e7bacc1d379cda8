"""The `mechscope` command line. Each command maps onto a library call; no science here.

`main(argv)` returns an exit code, so tests call it directly. Only the chosen command's
module is imported and only its parser is built, so that `mechscope --help` and a bad
argument answer without loading torch.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
from typing import Iterable

from .commands.arguments import Parser
from .errors import MechscopeError

# name -> (help, module under mechscope.commands, its configure and execute functions)
COMMANDS = {
    "info": ("family, sizes and every site of a model", "basics", "configure_info", "execute_info"),
    "run": ("one forward pass: top next tokens and recorded activations", "basics", "configure_run", "execute_run"),
    "report": ("write a self-contained HTML report", "basics", "configure_report", "execute_report"),
    "lens": ("logit lens (or tuned lens) of a prompt: what each layer predicts", "lens", "configure", "execute"),
    "lens-train": (
        "train a tuned lens on a local corpus (also: `mechscope lens train`)",
        "tuned_lens",
        "configure",
        "execute",
    ),
    "dla": ("direct logit attribution of a token (difference) to every head and MLP", "dla", "configure", "execute"),
    "heads": (
        "previous-token, duplicate-token and induction scores of every attention head",
        "heads",
        "configure",
        "execute",
    ),
    "attention-graph": (
        "attention patterns as graphs: statistics vs random, communities, spectra",
        "structure",
        "configure_attention_graph",
        "execute_attention_graph",
    ),
    "patch": (
        "activation patching sweep (resid, attn, mlp, heads) of a clean/corrupt task",
        "patching",
        "configure_patch",
        "execute_patch",
    ),
    "trace": (
        "causal tracing (ROME): which states carry what the model knows about a subject",
        "patching",
        "configure_trace",
        "execute_trace",
    ),
    "circuit": (
        "circuit discovery (ACDC, EAP, EAP-IG) on a clean/corrupt task: which edges carry it",
        "circuits",
        "configure",
        "execute",
    ),
    "sae": (
        "sparse dictionaries (SAEs): cache activations, train, evaluate, show features, convert formats",
        "sae",
        "configure",
        "execute",
    ),
    "transcoder": (
        "transcoders: sparse replacements of an MLP (read its input, predict its output), trained and spliced in",
        "transcoder",
        "configure",
        "execute",
    ),
    "crosscoder": (
        "crosscoders: one dictionary over several layers, or over two models (model diffing)",
        "crosscoder",
        "configure",
        "execute",
    ),
    "spectra": (
        "singular-value spectra of every weight and OV/QK circuit (or of a fine-tune's update)",
        "structure",
        "configure_spectra",
        "execute_spectra",
    ),
    "steer": (
        "steering: contrast vectors, SAE-feature clamps, layer x strength search, GGUF control vectors",
        "steer",
        "configure",
        "execute",
    ),
    "serve-steer": (
        "an OpenAI-compatible local server that steers each request with named vectors",
        "steer",
        "configure_serve",
        "execute_serve",
    ),
    "probe": ("per-layer probes of a concept, with control tasks and selectivity", "probe", "configure", "execute"),
    "confidence": (
        "a calibrated 'is the model right?' probe: train it, score a prompt per token",
        "probe",
        "configure_confidence",
        "execute_confidence",
    ),
    "erase": ("LEACE concept erasure inside the model: fit, evaluate", "probe", "configure_erase", "execute_erase"),
    "features": (
        "the feature store: build it from a corpus, show a latent, export to Neuronpedia",
        "features",
        "configure",
        "execute",
    ),
    "serve": ("the local dashboard: features, prompts, circuits in a browser", "serve", "configure", "execute"),
    "fv": (
        "function vectors: the heads that carry an in-context task, as one vector",
        "incontext",
        "configure_fv",
        "execute_fv",
    ),
    "relation": (
        "linear relational embeddings: the affine map from subject to object",
        "incontext",
        "configure_relation",
        "execute_relation",
    ),
    "attribute": (
        "attribution maps (Grad-CAM, IG, SHAP, LIME, occlusion) for images or tokens",
        "vision",
        "configure_attribute",
        "execute_attribute",
    ),
    "sanity": (
        "sanity checks of an attribution method: randomisation cascade, deletion/insertion",
        "vision",
        "configure_sanity",
        "execute_sanity",
    ),
    "forensics": (
        "what an edit or fine-tune changed, read from the weights (ROME, LoRA)",
        "forensics",
        "configure",
        "execute",
    ),
    "zoo": ("the bundled, project-trained models", "zoo", "configure", "execute"),
}
VALUED_GLOBALS = ("--device", "--dtype")
"""Global options that take a value (the word after them is not the command)."""


def parser(commands: Iterable[str] | None = None) -> Parser:
    """The whole parser; `commands`: configure only these subcommands (the others are listed
    in --help but take no arguments), None: all of them."""
    from . import __version__

    p = Parser(prog="mechscope", description="A microscope for neural networks.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and loading details")
    p.add_argument("--version", action="version", version=f"mechscope {__version__}")
    p.add_argument(
        "--device",
        help="where models run: cpu, cuda, cuda:N or auto (the GPU when there is one; "
        "under torchrun this rank's); default $MECHSCOPE_DEVICE, else cpu",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "float64"),
        help="model weights' dtype; default $MECHSCOPE_DTYPE, else float32",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = set(COMMANDS) if commands is None else set(commands)
    for name, (help_text, module, configure, execute) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name in wanted:
            found = importlib.import_module(f".commands.{module}", __package__)
            getattr(found, configure)(command)
            command.set_defaults(func=getattr(found, execute))
    return p


def command_index(argv: list[str]) -> int | None:
    """Where the command word is in `argv`, skipping the global options before it."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return i + 1 if i + 1 < len(argv) else None
        if (
            word.startswith("--")
            and "=" not in word
            and len(word) > 2
            and any(o.startswith(word) for o in VALUED_GLOBALS)
        ):
            i += 2  # --device cpu (or an abbreviation argparse accepts, --dev cpu)
        elif word.startswith("-"):
            i += 1
        else:
            return i
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    at = command_index(argv)
    if at is not None and argv[at : at + 2] == [
        "lens",
        "train",
    ]:  # `lens MODEL PROMPT` and `lens train MODEL` share a name
        argv[at : at + 2] = ["lens-train"]
    args = parser([argv[at]] if at is not None else []).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # every command loads through models.loading.load, which reads these (one place, no plumbing);
    # restored afterwards, so that main() called in-process (tests) leaves nothing behind
    chosen = {"MECHSCOPE_DEVICE": args.device, "MECHSCOPE_DTYPE": args.dtype}
    before = {env: os.environ.get(env) for env, value in chosen.items() if value}
    os.environ.update({env: value for env, value in chosen.items() if value})
    try:
        if args.device:
            from .models.loading import resolve_device

            resolve_device(args.device)  # a device that does not exist fails before any work
        return args.func(args)
    except MechscopeError as err:
        print(f"mechscope: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as err:  # a full disk met by a writer outside mechscope.io (e.g. a library's save_pretrained)
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from .io import write_error

        print(f"mechscope: error: {write_error(err.filename or 'the output', err)}", file=sys.stderr)
        return 2
    finally:
        for env, value in before.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


if __name__ == "__main__":
    sys.exit(main())
