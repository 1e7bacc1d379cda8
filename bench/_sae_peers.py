"""One TopK-SAE trainer timed on cached activations, for `bench/sae.py`.

Runs with the interpreter of the library it times (the project's `.venv` for mechscope,
`bench/.peers/sparsify` and `bench/.peers/saelens` for the peers; see bench/README.md):

    PYTHON bench/_sae_peers.py LIB ACTS.safetensors --steps 10 --warmup 2 --width 4096 --k 32 --threads 2

ACTS holds `train` [N, d_in] (already shuffled and scaled to mean norm sqrt(d_in)) and
`heldout` [M, d_in]. Step s trains on rows [s B, (s + 1) B) - the same batches for every
library - with Adam at a constant learning rate, each library's own TopK coder, its own
trainer's initialisation (data-driven where that trainer does it: mechscope's geometric-median
b_dec and input scale, sparsify's first-batch-mean b_dec; SAELens 6.54.12 has none) and its
own training-step recipe (loss, AuxK with a dead mask, decoder-norm constraint); SAELens runs
through its own `SAETrainer.step`. `sparsify-bare` is sparsify without its b_dec init (the
bench before 2026-12-07). Prints one JSON
line: seconds per timed step, tokens/s, the held-out FVU after the run and, with `--curve`,
the held-out FVU after every step (evaluated outside the timed region), and this process's
peak RSS (VmHWM in /proc/self/status) read twice: after the training steps
(before the final held-out evaluation; with `--curve` it includes the per-step evaluations)
and at the end. One process times one trainer at one width, so each reading is that
trainer's alone (the held-out rows and the torch import included; the same for every library).

`--adam lazy` (mechscope only) sets `TrainConfig.adam = "lazy"` (Adam updates only the
latents that received gradient); it fails with a one-line message where this mechscope's
`TrainConfig` has no `adam` field. `--eval-chunk N` reconstructs the held-out rows N at a
time (a width-262k dictionary's dense pre-activations of 8192 rows would take 8.6 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings

import torch
from _machine import peak_rss_mib
from safetensors.torch import load_file

_OUT = sys.stdout
sys.stdout = sys.stderr  # keep stdout for the one result line
warnings.filterwarnings("ignore")


def fvu(x, x_hat) -> float:
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def heldout_fvu(held, reconstruct, chunk: int) -> float:
    """FVU of the held-out rows; reconstructed `chunk` rows at a time (0: all at once)."""
    if not chunk:
        return fvu(held, reconstruct(held))
    return fvu(held, torch.cat([reconstruct(held[i : i + chunk]) for i in range(0, len(held), chunk)]))


def peak_rss_mb() -> float:
    return peak_rss_mib()  # VmHWM (see _machine.py)


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
                yield {"x": self.train[s * args.batch : (s + 1) * args.batch]}, s + 1
                s += 1

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if args.adam != "dense" and "adam" not in fields:
        raise SystemExit(f"this mechscope's TrainConfig has no 'adam' field: cannot time adam={args.adam!r}")
    cfg = TrainConfig(
        **({"adam": args.adam} if "adam" in fields else {}),
        total_tokens=10**12,
        batch_tokens=args.batch,
        lr=args.lr,
        warmup_steps=0,
        decay="none",
        norm_batches=args.norm_batches,
        dead_window=args.dead_window,
    )
    trainer = Trainer(Memory(TRAIN), [CoderConfig("topk", d_in, args.width, k=args.k)], cfg)
    trainer.setup()

    def step(x, s):
        trainer.step({"x": x})

    def reconstruct(x):
        coder = trainer.coders[0]
        return coder.decode(coder.encode(x))

    return step, reconstruct, getattr(mechscope, "__version__", "dev")


def sparsify_trainer(d_in, args, bare: bool = False):
    """sparsify 1.3.3's `Trainer` recipe on in-memory batches (its Trainer needs a Hugging Face
    model to hook, so its per-step body is followed line by line instead: trainer.py, `fit` and
    its forward hook, loss_fn "fvu", autoencoding, grad_acc_steps = micro_acc_steps = 1).

    Init as `Trainer.__init__` and the hook's first iteration do it: torch.manual_seed(0)
    (init_seeds [0]), SparseCoder(d_in, cfg, dtype=float32) - encoder nn.Linear (kaiming
    uniform), encoder bias 0, W_dec = encoder.weight rows scaled to unit norm (so W_enc =
    W_dec^T with rows of norm about 1/sqrt(3)), b_dec 0 - then on step 0 b_dec = the mean of
    the first batch. `bare` skips that b_dec line (what this bench did until 2026-12-07)."""
    import importlib.metadata as md

    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)  # Trainer: torch.manual_seed(seed) for seed in cfg.init_seeds ([0])
    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=args.width, k=args.k), "cpu", dtype=torch.float32)
    # TrainConfig(optimizer="adam") pgs: lr = cfg.lr or 2e-4 / sqrt(num_latents / 2**14) (4e-4 at 4096 latents);
    # torch's Adam (bitsandbytes is not installed), default betas. Its linear schedule (1000 warm-up steps,
    # then decay to 0 at the end of the data) is replaced by this bench's constant rate for every trainer.
    opt = torch.optim.Adam([{"params": sae.parameters(), "lr": args.lr}])
    since_fired = torch.zeros(args.width, dtype=torch.long)
    did_fire = torch.zeros(args.width, dtype=torch.bool)
    auxk_alpha = 0.0  # TrainConfig.auxk_alpha default in 1.3.3 (no dead-latent loss)

    def step(x, s):
        if s == 0 and not bare:  # "On the first iteration, initialize the encoder and decoder biases"
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()  # normalize_decoder and not transcode: every step, before the forward
        dead = since_fired > args.dead_window if auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=dead, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.div(1).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(len(x))
            since_fired[did_fire] = 0
            did_fire.zero_()

    def reconstruct(x):
        return sae(x).sae_out

    return step, reconstruct, md.version("eai-sparsify")


def sparsify_bare_trainer(d_in, args):
    return sparsify_trainer(d_in, args, bare=True)


def saelens_trainer(d_in, args):
    """SAELens 6.54.12 through its own `SAETrainer.step` (what `SAETrainer.fit` calls each step,
    with `maybe_reset_sparsity` before and `n_training_steps += 1` after; no wandb, no checkpoints).

    Init as its runner does it: `TopKTrainingSAE(TopKTrainingSAEConfig(d_in, d_sae, k))` with the
    defaults - W_dec kaiming uniform, rows rescaled to decoder_init_norm 0.1, W_enc = W_dec^T,
    b_enc 0, b_dec 0 (6.54.12 has no data-driven b_dec: no b_dec_init_method, and the trainer
    never sets it), normalize_activations "none" (no input scale), rescale_acts_by_decoder_norm
    True. Trainer: Adam (betas 0.9, 0.999), constant schedule (the runner's default
    lr_scheduler_name), grad-norm clip 1, dead latents = no firing for > 1000 steps."""
    import importlib.metadata as md

    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=args.width, k=args.k, device="cpu"))
    cfg = SAETrainerConfig(
        total_training_samples=10**12, train_batch_size_samples=args.batch, lr=args.lr, lr_end=args.lr / 10
    )  # the runner config sets lr_end = lr / 10 (unused by "constant")
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x, s):
        trainer.maybe_reset_sparsity()
        trainer.step(x)
        trainer.n_training_steps += 1

    def reconstruct(x):
        return sae.decode(sae.encode(x))

    return step, reconstruct, md.version("sae-lens")


MAKERS = {
    "mechscope": mechscope_trainer,
    "sparsify": sparsify_trainer,
    "saelens": saelens_trainer,
    "sparsify-bare": sparsify_bare_trainer,
}


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
    p.add_argument("--adam", default="dense", help="mechscope: TrainConfig.adam (dense or lazy)")
    p.add_argument("--eval-chunk", type=int, default=0, help="held-out rows reconstructed at a time (0: all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_file(args.acts)
    TRAIN, held = data["train"], data["heldout"]
    step, reconstruct, version = MAKERS[args.lib](TRAIN.shape[1], args)
    times, curve = [], []
    for s in range(args.warmup + args.steps):
        x = TRAIN[s * args.batch : (s + 1) * args.batch]
        start = time.perf_counter()
        step(x, s)
        if s >= args.warmup:
            times.append(time.perf_counter() - start)
        if args.curve:
            with torch.no_grad():
                curve.append(heldout_fvu(held, reconstruct, args.eval_chunk))
    rss_train = peak_rss_mb()
    with torch.no_grad():
        quality = curve[-1] if curve else heldout_fvu(held, reconstruct, args.eval_chunk)
    result = {
        "lib": args.lib,
        "version": version,
        "step_s": times,
        "tokens_per_s": args.batch * len(times) / sum(times),
        "fvu": quality,
        "fvu_curve": curve,
        "steps": args.warmup + args.steps,
        "width": args.width,
        "batch": args.batch,
        "peak_rss_train_mb": rss_train,
        "peak_rss_mb": peak_rss_mb(),
    }
    if args.lib == "mechscope":
        result["adam"] = args.adam
        # whether the encoder GEMM ran in bfloat16 (selection only; see kernels.py)
        from mechscope.dictionary import kernels

        result["bf16_selection"] = kernels.bf16_selection()
    print(json.dumps(result), file=_OUT, flush=True)


TRAIN = None

if __name__ == "__main__":
    main()
