"""One TopK-SAE trainer timed on cached activations, for `bench/sae.py`.

Runs with the interpreter of the library it times (the project's `.venv` for mechscope,
`bench/.peers/sparsify` and `bench/.peers/saelens` for the peers; see bench/README.md):

    PYTHON bench/_sae_peers.py LIB ACTS.safetensors --steps 10 --warmup 2 --width 4096 --k 32 --threads 2

ACTS holds `train` [N, d_in] (already shuffled and scaled to mean norm sqrt(d_in)) and
`heldout` [M, d_in]. Step s trains on rows [s B, (s + 1) B) - the same batches for every
library - with Adam at a constant learning rate, each library's own TopK coder and its own
training-step recipe (loss, AuxK with a dead mask, decoder-norm constraint). Prints one JSON
line: seconds per timed step, tokens/s, the held-out FVU after the run and, with `--curve`,
the held-out FVU after every step (evaluated outside the timed region).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import torch
from safetensors.torch import load_file

_OUT = sys.stdout
sys.stdout = sys.stderr  # keep stdout for the one result line
warnings.filterwarnings("ignore")


def fvu(x, x_hat) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


# Each maker returns (step(x, s) -> None, reconstruct(x) -> x_hat, version).


def mechscope_trainer(d_in, args):
    import mechscope
    from mechscope.dictionary.config import CoderConfig
    from mechscope.dictionary.train import Trainer
    from mechscope.dictionary.trainer_config import TrainConfig

    class Memory:  # an in-memory stream of the same batches the peers see
        sites, widths, batch_tokens, start = ["x"], {"x": d_in}, args.batch, 0

        def __init__(self, train):
            self.train = train

        def batches(self, position=0, rank=0, world=1):
            s = position
            while True:
                yield {"x": self.train[s * args.batch:(s + 1) * args.batch]}, s + 1
                s += 1

    cfg = TrainConfig(total_tokens=10**12, batch_tokens=args.batch, lr=args.lr, warmup_steps=0, decay="none",
                      norm_batches=args.norm_batches, dead_window=args.dead_window)
    trainer = Trainer(Memory(TRAIN), [CoderConfig("topk", d_in, args.width, k=args.k)], cfg)
    trainer.setup()

    def step(x, s):
        trainer.step({"x": x})

    def reconstruct(x):
        coder = trainer.coders[0]
        return coder.decode(coder.encode(x))

    return step, reconstruct, getattr(mechscope, "__version__", "dev")


def sparsify_trainer(d_in, args):
    import importlib.metadata as md

    from sparsify import SparseCoder, SparseCoderConfig
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=args.width, k=args.k), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr)
    since_fired = torch.zeros(args.width, dtype=torch.long)

    def step(x, s):
        dead = since_fired >= args.dead_window
        out = sae(x, dead_mask=dead)
        loss = out.fvu + 1 / 32 * out.auxk_loss  # sparsify Trainer: fvu + auxk_alpha * auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.set_decoder_norm_to_unit_norm()
        since_fired.add_(len(x))
        since_fired[out.latent_indices.flatten().unique()] = 0

    def reconstruct(x):
        return sae(x).sae_out

    return step, reconstruct, md.version("eai-sparsify")


def saelens_trainer(d_in, args):
    import importlib.metadata as md

    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=args.width, k=args.k, device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.9, 0.999))
    since_fired = torch.zeros(args.width, dtype=torch.long)

    def step(x, s):
        dead = since_fired >= args.dead_window
        sae.train()
        out = sae.training_forward_pass(step_input=TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                                  n_training_steps=s, is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)  # SAETrainer clips to 1
        opt.step()
        opt.zero_grad(set_to_none=True)
        since_fired.add_(len(x))
        fired = out.feature_acts.bool().float().sum(-2).bool()
        since_fired[fired.to_dense() if fired.is_sparse else fired] = 0

    def reconstruct(x):
        return sae.decode(sae.encode(x))

    return step, reconstruct, md.version("sae-lens")


MAKERS = {"mechscope": mechscope_trainer, "sparsify": sparsify_trainer, "saelens": saelens_trainer}


def main() -> None:
    global TRAIN
    p = argparse.ArgumentParser()
    p.add_argument("lib", choices=list(MAKERS))
    p.add_argument("acts")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--dead-window", type=int, default=10_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--norm-batches", type=int, default=1, help="mechscope: batches for the input scale and b_dec init")
    p.add_argument("--curve", action="store_true", help="held-out FVU after every step (untimed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_file(args.acts)
    TRAIN, held = data["train"], data["heldout"]
    step, reconstruct, version = MAKERS[args.lib](TRAIN.shape[1], args)
    times, curve = [], []
    for s in range(args.warmup + args.steps):
        x = TRAIN[s * args.batch:(s + 1) * args.batch]
        start = time.perf_counter()
        step(x, s)
        if s >= args.warmup:
            times.append(time.perf_counter() - start)
        if args.curve:
            with torch.no_grad():
                curve.append(fvu(held, reconstruct(held)))
    with torch.no_grad():
        quality = curve[-1] if curve else fvu(held, reconstruct(held))
    result = {"lib": args.lib, "version": version, "step_s": times, "tokens_per_s": args.batch * len(times) / sum(times),
              "fvu": quality, "fvu_curve": curve, "steps": args.warmup + args.steps}
    if args.lib == "mechscope":  # whether the encoder GEMM ran in bfloat16 (selection only; see kernels.py)
        from mechscope.dictionary import kernels
        result["bf16_selection"] = kernels.bf16_selection()
    print(json.dumps(result), file=_OUT, flush=True)


TRAIN = None

if __name__ == "__main__":
    main()
