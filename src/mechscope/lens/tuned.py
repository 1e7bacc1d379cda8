"""The tuned lens (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers
with the Tuned Lens"): one learned affine map per layer, so that the model's own final
norm + unembedding read each residual stream the way they read the last one.

    lens = train(model, load_tokens(DataConfig("corpus/*.txt", ctx_len=128), model.tokenizer).train)
    lens.save("runs/lens")                          # cfg.json + translators.safetensors
    lens = TunedLens.load("runs/lens", model)       # refuses a lens trained for another model
    ms.lens.logit_lens(model, prompt, translator=lens).plot()
    evaluate(model, lens, data.heldout).plot()      # held-out KL per layer, tuned vs logit lens

Indices follow `mechscope.lens._common.Translator` (and Hugging Face's `hidden_states`):
`lens(resid, i)` maps the stream that has passed through i blocks: i = 0 is
`blocks.0.hook_resid_pre` (the embeddings), i = l + 1 is `blocks.{l}.hook_resid_post`.
There is a translator for i = 0 .. n_layers - 1; i = n_layers, the last block's output,
is read as it is (identity), as in the paper. Each translator is residual,
h -> h + A h + b with A and b initialised to zero (so weight decay pulls toward the
identity), and is trained to minimise KL(final || lens) to the model's own output
distribution at every position, summed over layers.

Optimiser (as the `tuned-lens` package): SGD with Nesterov momentum 0.9, learning rate
1 - momentum (its "unit" rate), weight decay 1e-3, global gradient norm clipped to 1, a
linear warm-up then linear decay to zero; or Adam (AMSGrad, lr 1e-3). Training runs in
one process or under `torchrun` (DDP, gloo on CPU): each rank reads a disjoint slice of
every global batch and gradients are all-reduced; only rank 0 writes. Checkpoints are
atomic and resuming from one gives the same weights bit for bit: the batch of step s is
a pure function of (seed, s).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from jaxtyping import Float, Int
from torch import Tensor, nn

from ..distributed import distributed
from ..errors import MechscopeError
from ..finite import first_nonfinite
from ..io import folder_lock, read_json, read_tensors, write_checkpoint, write_json, write_tensors
from ..plots import figure
from ..results import Saveable, pandas
from ..tokens import require_lm_head

log = logging.getLogger(__name__)
KIND = "tuned_lens"


def model_fingerprint(model) -> str:
    """SHA-256 of what a lens depends on: the unembedding (W_U, b_U) and the final norm."""
    h = hashlib.sha256()
    parts = [("W_U", model.W_U), ("b_U", model.b_U)]
    if model.adapter.final_norm:
        parts += sorted(model.module(model.adapter.final_norm).state_dict().items())
    for name, t in parts:
        h.update(f"{name}:{tuple(t.shape)};{_sha256(t.detach().to(torch.float32))}".encode())
    return h.hexdigest()


def _sha256(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class TunedLens:
    """A trained (frozen) tuned lens: `lens(resid, index) -> translated resid`."""

    def __init__(
        self, weight: Float[Tensor, "layer d_model d_model"], bias: Float[Tensor, "layer d_model"], meta: dict
    ):
        self.weight, self.bias, self.meta = weight.detach(), bias.detach(), dict(meta)
        self.n_layers = int(meta["n_layers"])
        if self.weight.shape != (self.n_layers, meta["d_model"], meta["d_model"]):
            raise MechscopeError(
                f"tuned lens weights have shape {tuple(self.weight.shape)}, expected "
                f"({self.n_layers}, {meta['d_model']}, {meta['d_model']})"
            )

    def __repr__(self) -> str:
        return f"TunedLens(model={self.meta.get('model')!r}, n_layers={self.n_layers}, d_model={self.meta['d_model']})"

    def __call__(self, resid: Float[Tensor, "... d_model"], index: int) -> Float[Tensor, "... d_model"]:
        """Translate a stream that has passed through `index` blocks (0 = embeddings)."""
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= (n := self.n_layers):
            raise MechscopeError(
                f"tuned lens index {index!r} is out of range: 0 (embeddings) to {n} (blocks.{n - 1}.hook_resid_post)"
            )
        if index == self.n_layers:
            return resid
        w, b = (t[index].to(resid.device, resid.dtype) for t in (self.weight, self.bias))
        return resid + torch.nn.functional.linear(resid, w, b)  # h + A h + b

    def save(self, path: str | Path) -> Path:
        """cfg.json + translators.safetensors, each written atomically (cfg.json last)."""
        path = Path(path)
        write_tensors(path / "translators.safetensors", {"weight": self.weight, "bias": self.bias})
        return write_json(path / "cfg.json", {"kind": KIND, **self.meta}).parent

    @classmethod
    def load(cls, path: str | Path, model) -> "TunedLens":
        """Read a saved lens, refusing one that was trained for another model."""
        path = Path(path)
        if not (path / "cfg.json").is_file() or not (path / "translators.safetensors").is_file():
            raise MechscopeError(
                f"no tuned lens at '{path}': expected cfg.json and translators.safetensors "
                "(train one with `mechscope lens train`)"
            )
        meta = read_json(path / "cfg.json")
        if meta.pop("kind", None) != KIND:
            raise MechscopeError(f"'{path}' does not hold a tuned lens")
        d, dims = meta.get("d_model"), model.dims
        if (d, meta.get("n_layers")) != (dims.d_model, dims.n_layers) or meta.get(
            "unembed_sha256"
        ) != model_fingerprint(model):
            raise MechscopeError(
                f"the tuned lens at '{path}' was trained for model '{meta.get('model')}' (d_model {d}, "
                f"{meta.get('n_layers')} layers), whose unembedding and final norm differ from {model.name!r} "
                f"(d_model {dims.d_model}, {dims.n_layers} layers): train a lens for this model"
            )
        return cls(**read_tensors(path / "translators.safetensors", "tuned lens"), meta=meta)


# Training


@dataclass(frozen=True)
class TunedLensConfig:
    """How a tuned lens is trained (the data come separately, as token contexts)."""

    steps: int = 250
    """Optimiser steps."""
    batch_size: int = 8
    """Contexts per optimiser step, over all ranks together (must divide by the number of ranks)."""
    optimizer: str = "sgd"
    """'sgd' (Nesterov momentum, as the paper) or 'adam' (AMSGrad)."""
    lr: float | None = None
    """Peak learning rate as the optimiser takes it; None: 1 - momentum for SGD (tuned-lens'
    unit rate), 1e-3 for Adam."""
    momentum: float = 0.9
    """SGD momentum, or Adam's beta1."""
    weight_decay: float = 1e-3
    """Weight decay; the maps are residual, so this pulls them toward the identity."""
    warmup_steps: int | None = None
    """Steps of linear learning-rate warm-up (then linear decay to 0); None: steps // 10."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    checkpoint_every: int = 50
    """Write a checkpoint every this many steps (when a checkpoint folder is given)."""
    seed: int = 0
    """Seeds the order in which contexts are visited."""
    autocast: str = "off"
    """'bf16': the lens readings (translators, final norm, unembedding; forward and backward) run under bfloat16
    autocast, as the tuned-lens package trains; 'auto': bf16 where the device multiplies bfloat16 natively (a CPU
    with AVX512-BF16 or AMX, a CUDA GPU with bf16), float32 elsewhere (there bf16 is slower); 'off': float32,
    the same numbers on every machine. The model's forward and the target distribution stay in the model's dtype."""

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adam"):
            raise MechscopeError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.autocast not in AUTOCAST:
            raise MechscopeError(f"autocast must be one of {', '.join(AUTOCAST)}, got {self.autocast!r}")
        if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise MechscopeError("steps, batch_size and checkpoint_every must be at least 1")
        if (self.lr is not None and not self.lr > 0) or (self.warmup_steps or 0) < 0:
            raise MechscopeError(
                f"lr must be positive and warmup_steps 0 or more, got lr={self.lr}, warmup_steps={self.warmup_steps}"
            )

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else 1.0 - self.momentum if self.optimizer == "sgd" else 1e-3

    def lr_at(self, step: int) -> float:
        """Linear warm-up to `peak_lr`, then linear decay to 0 at `steps`."""
        warm = self.steps // 10 if self.warmup_steps is None else self.warmup_steps
        if step < warm:
            return self.peak_lr * (step + 1) / warm
        return self.peak_lr * max(0.0, (self.steps - step) / max(1, self.steps - warm))


AUTOCAST = ("off", "bf16", "auto")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 natively (CPU: AVX512-BF16 or AMX tiles, as torch reports them)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    return False


def _lens_autocast(cfg: TunedLensConfig, device: torch.device) -> bool:
    """Whether the lens readings run under bfloat16 autocast (`TunedLensConfig.autocast`)."""
    return cfg.autocast == "bf16" or (cfg.autocast == "auto" and native_bf16(device))


class _Translators(nn.Module):
    """All translators as two stacked parameters (what DDP wraps)."""

    def __init__(self, n: int, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(n, d, d))
        self.bias = nn.Parameter(torch.zeros(n, d))

    def forward(self, hs: Float[Tensor, "layer batch pos d_model"]) -> Float[Tensor, "layer batch pos d_model"]:
        flat = hs.flatten(1, 2)  # [layer, batch*pos, d]: one batched matmul for every layer
        out = torch.baddbmm(self.bias[:, None, :], flat, self.weight.transpose(1, 2)) + flat
        return out.view(hs.shape)


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def rows_for_step(n: int, step: int, cfg: TunedLensConfig, rank: int = 0, world: int = 1) -> Tensor:
    """Indices of the contexts this rank reads at `step`: its slice of the global batch,
    which visits every context once per epoch in a seeded order."""
    span = range(step * cfg.batch_size, (step + 1) * cfg.batch_size)
    rows = torch.stack([_epoch_order(n, cfg.seed, i // n)[i % n] for i in span])
    return rows[rank::world]


class TunedLensTrainer:
    """Fits a tuned lens (the fitter; `lens()` gives the frozen artifact).

    Freezes the model's parameters (`requires_grad_(False)`): only the lens trains."""

    def __init__(self, model, cfg: TunedLensConfig = TunedLensConfig()):
        require_lm_head(model, "the tuned lens")
        self.model, self.cfg = model, cfg
        self.rank, self.world = distributed()
        if cfg.batch_size % self.world:
            raise MechscopeError(f"batch_size {cfg.batch_size} does not divide among {self.world} ranks")
        model.hf.requires_grad_(False)
        d, n = model.dims.d_model, model.dims.n_layers
        self.sites = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n - 1)]
        self.translators = _Translators(n, d).to(model.device)
        self.module = nn.parallel.DistributedDataParallel(self.translators) if self.world > 1 else self.translators
        params, beta = list(self.translators.parameters()), cfg.momentum
        self.opt = (
            torch.optim.SGD(params, lr=cfg.peak_lr, momentum=beta, nesterov=True, weight_decay=cfg.weight_decay)
            if cfg.optimizer == "sgd"
            else torch.optim.Adam(
                params, lr=cfg.peak_lr, betas=(beta, 0.999), amsgrad=True, weight_decay=cfg.weight_decay
            )
        )
        self.step_count = 0
        self.fingerprint = model_fingerprint(model)
        self.bf16 = _lens_autocast(cfg, model.device)
        log.info("tuned-lens training: lens readings in %s", "bfloat16 autocast" if self.bf16 else "float32")

    def _autocast(self):
        """bfloat16 autocast around the lens readings when configured, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.model.device.type, dtype=torch.bfloat16)

    def losses(self, ids: Int[Tensor, "batch pos"]) -> Tensor:
        """KL(final || lens) per translator on `ids` (mean over tokens), with its gradient
        accumulated into the translators (one layer at a time, to bound memory)."""
        model = self.model
        with torch.no_grad():
            run = model.run(ids, record=self.sites, logits=True)
            target = run.logits.float().log_softmax(-1).flatten(0, 1)  # [tokens, vocab]
            p = target.exp()
            neg_entropy = torch.dot(p.flatten(), target.flatten()) / len(p)
        hs = torch.stack([run.cache[s] for s in self.sites]).float()
        with self._autocast():
            translated = self.module(hs)
        leaf = translated.detach().requires_grad_()
        out = []
        for i in range(len(self.sites)):
            with self._autocast():
                logits = model.to_logits(leaf[i].to(run.logits.dtype))
            with torch.no_grad():
                logq = logits.float().flatten(0, 1).log_softmax(-1)
                out.append(neg_entropy - torch.dot(p.flatten(), logq.flatten()) / len(p))
                grad = logq.exp_().sub_(p)  # d KL / d logits = q - p (per token; / tokens below)
            logits.backward(grad.view(logits.shape).to(logits.dtype))
        translated.backward(leaf.grad / len(p))
        return torch.stack(out)

    def step(self, data: Int[Tensor, "n ctx"]) -> Tensor:
        """One optimiser step on this rank's rows of the next global batch; returns the
        per-layer KL averaged over ranks."""
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr_at(self.step_count)
        ids = data[rows_for_step(len(data), self.step_count, self.cfg, self.rank, self.world)]
        kl = self.losses(ids.to(self.model.device))
        if self.world > 1:  # averaged before the update, so that every rank stops together on a non-finite loss
            dist.all_reduce(kl)
            kl /= self.world
        if not bool(torch.isfinite(kl).all()):
            raise self._nonfinite(kl, ids)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.translators.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_count += 1
        return kl

    def _nonfinite(self, kl: Tensor, ids: Tensor) -> MechscopeError:
        """A NaN or inf loss: which layer, and whether the model (this batch run again) or the lens is at fault."""
        layer = self.sites[int((~torch.isfinite(kl)).nonzero()[0])]
        run = self.model.run(ids.to(self.model.device), record=self.sites, logits=True)
        where = first_nonfinite({**run.cache, "the output logits": run.logits})
        why = (
            f"the model's activations are NaN or inf from {where} on: restore its weights"
            if where
            else f"the translator at {layer} diverged: lower --lr or lengthen --warmup"
        )
        return MechscopeError(
            f"tuned-lens training stopped at step {self.step_count + 1} of {self.cfg.steps} on a "
            f"NaN or inf loss ({why}); that step was not applied and the checkpoints already "
            "written are intact"
        )

    def meta(self) -> dict:
        """What cfg.json records: the model (name, sizes, head fingerprint) and the training."""
        return {
            "model": self.model.name,
            "d_model": self.model.dims.d_model,
            "n_layers": self.model.dims.n_layers,
            "unembed_sha256": self.fingerprint,
            "steps": self.step_count,
            "train": asdict(self.cfg),
        }

    def lens(self) -> TunedLens:
        """The current translators as a frozen artifact (copies)."""
        return TunedLens(
            self.translators.weight.detach().clone().cpu(), self.translators.bias.detach().clone().cpu(), self.meta()
        )

    # Checkpoints: translators + optimiser state in one safetensors file, state.json last

    def save_checkpoint(self, folder: str | Path, data: Tensor) -> None:
        if self.rank != 0:
            return
        folder = Path(folder)
        sd = self.opt.state_dict()
        tensors = {"weight": self.translators.weight, "bias": self.translators.bias}
        tensors |= {f"opt.{p}.{k}": v for p, s in sd["state"].items() for k, v in s.items()}
        name = f"step-{self.step_count:07d}.safetensors"
        write_checkpoint(
            folder,
            name,
            tensors,
            {**self.meta(), "file": name, "data_sha256": _sha256(data), "param_groups": sd["param_groups"]},
        )

    def load_checkpoint(self, folder: str | Path, data: Tensor) -> bool:
        """Resume from `folder` if it holds a checkpoint of this very run; False if none."""
        if not (Path(folder) / "state.json").is_file():
            return False
        state = read_json(Path(folder) / "state.json")
        expected = {"unembed_sha256": self.fingerprint, "train": asdict(self.cfg), "data_sha256": _sha256(data)}
        for key, value in expected.items():
            if state.get(key) != value:
                raise MechscopeError(
                    f"the checkpoint in '{folder}' belongs to another run (its {key} differs): "
                    "delete it, or resume with the same model, data and settings"
                )
        tensors = read_tensors(Path(folder) / state["file"], "tuned-lens checkpoint")
        self.translators.load_state_dict({"weight": tensors.pop("weight"), "bias": tensors.pop("bias")})
        opt_state: dict = {}
        for key, value in tensors.items():  # opt.{param}.{name}
            _, p, k = key.split(".", 2)
            opt_state.setdefault(int(p), {})[k] = value.to(self.model.device)
        self.opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.step_count = int(state["steps"])
        log.info("resumed tuned-lens training from step %d (%s)", self.step_count, folder)
        return True

    def fit(
        self, data: Int[Tensor, "n ctx"], *, checkpoint_dir: str | Path | None = None, progress: bool = True
    ) -> TunedLens:
        """Train to `cfg.steps` (resuming from `checkpoint_dir` if it has a checkpoint)."""
        from tqdm.auto import tqdm

        if checkpoint_dir is not None:
            self.load_checkpoint(checkpoint_dir, data)
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step_count,
            desc="tuned lens",
            unit="step",
            disable=not progress or self.rank != 0,
        )
        while self.step_count < self.cfg.steps:
            kl = self.step(data)
            bar.update()
            bar.set_postfix(kl=f"{kl.mean().item():.4f}")
            if checkpoint_dir is not None and (
                self.step_count % self.cfg.checkpoint_every == 0 or self.step_count == self.cfg.steps
            ):
                self.save_checkpoint(checkpoint_dir, data)
        bar.close()
        return self.lens()


def train(
    model,
    data: Int[Tensor, "n ctx"],
    cfg: TunedLensConfig = TunedLensConfig(),
    *,
    out: str | Path | None = None,
    progress: bool = True,
) -> TunedLens:
    """Train a tuned lens on token contexts; with `out`, checkpoint into out/checkpoint
    (resuming from it) and save the lens to `out` (rank 0 only), holding `out`'s lock."""
    trainer = TunedLensTrainer(model, cfg)
    if out is None:
        return trainer.fit(data, progress=progress)
    with folder_lock(out, rank=trainer.rank, world=trainer.world):  # one job per folder
        lens = trainer.fit(data, checkpoint_dir=Path(out) / "checkpoint", progress=progress)
        if trainer.rank == 0:
            lens.save(out)
    if trainer.world > 1:
        dist.barrier()
    return lens


# Evaluation


@dataclass
class LensEvaluation(Saveable):
    """Held-out KL(final || lens) per stream, in nats per token: tuned lens vs logit lens."""

    KIND = "tuned_lens_evaluation"

    model_name: str
    layers: list[str]
    """'embed', 'L0', ... 'L{n-1}' (blocks.{l}.hook_resid_post), as in `LogitLens.layers`."""
    tuned_kl: Float[Tensor, " layer"]
    logit_kl: Float[Tensor, " layer"]
    n_tokens: int

    def rows(self) -> list[dict]:
        return [
            {"layer": n, "tuned_kl": float(t), "logit_kl": float(g)}
            for n, t, g in zip(self.layers, self.tuned_kl, self.logit_kl)
        ]

    def to_frame(self):
        return pandas().DataFrame(self.rows())

    def plot(self, ax=None):
        fig, ax = figure(5.5, 3.2) if ax is None else (ax.figure, ax)
        x = range(len(self.layers))
        ax.plot(x, self.logit_kl.numpy(), "o-", label="logit lens")
        ax.plot(x, self.tuned_kl.numpy(), "o-", label="tuned lens")
        ax.set_xticks(list(x), self.layers)
        ax.set_ylabel("KL(final || lens), nats")
        ax.set_title(f"held-out KL per layer: {self.model_name} ({self.n_tokens} tokens)", fontsize=9)
        ax.legend()
        return fig


def evaluate(model, lens: TunedLens, heldout: Int[Tensor, "n ctx"], *, batch_size: int = 8) -> LensEvaluation:
    """Mean KL of the model's output distribution to each layer's tuned-lens and logit-lens
    readings over every position of `heldout`."""
    if len(heldout) == 0:
        raise MechscopeError("no held-out contexts to evaluate on: hold some out (DataConfig.heldout_fraction > 0)")
    n = model.dims.n_layers
    sites = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    tuned, logit = torch.zeros(n + 1, dtype=torch.float64), torch.zeros(n + 1, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(heldout), batch_size):
            run = model.run(heldout[start : start + batch_size].to(model.device), record=sites, logits=True)
            target = run.logits.float().log_softmax(-1)
            p = target.exp()
            for i, site in enumerate(sites):
                resid = run.cache[site]
                for total, h in ((logit, resid), (tuned, lens(resid, i))):
                    logq = model.to_logits(h).float().log_softmax(-1)
                    total[i] += (p * (target - logq)).sum().double().cpu()
    count = heldout.numel()
    return LensEvaluation(
        model.name, ["embed"] + [f"L{i}" for i in range(n)], (tuned / count).float(), (logit / count).float(), count
    )
