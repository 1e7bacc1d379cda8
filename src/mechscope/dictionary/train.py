"""Training sparse dictionaries: one or several at once, from a model or an activation cache.

    sae = train(model, "blocks.2.hook_resid_post", CoderConfig("topk", 256, 4096, k=32),
                TrainConfig(total_tokens=2_000_000), data=data.train, out="runs/sae")
    sae = train_from_cache("runs/acts", CoderConfig(...), TrainConfig(...), out="runs/sae")

`Trainer` is the fitter (step, evaluate, checkpoint); the `SparseCoder` it returns is the
artifact. Per step and dictionary: Adam on the coder's loss, the coder's `before_step`
(gradient projection) and `after_step` (decoder renormalisation), and the dead-latent count
(tokens since each latent last fired; latents past the window are passed as `dead_mask`,
which drives AuxK).

Input scale: before step 0 the first `norm_batches` batches give each dictionary its
`norm_scale` (sqrt(d_in) / mean norm) and the initial b_dec (geometric median); the saved
artifact has the scale folded into its weights (norm_scale 1). Coders with input_norm
'layer_norm' standardise each input instead and keep norm_scale 1.

Transcoders (cfg.d_out and cfg.target_hook set): the stream holds both sites, each step
feeds `target=batch[target_hook]`, b_dec starts at the target's geometric median, the one
scale comes from the input (see base.py) and FVU is measured against the target.

Checkpoints (`out/checkpoint/`, checkpoint.py): weights, Adam state, dead counts, RNG state and the data
position in one safetensors file, then `state.json` (atomic, synced, written after it; older
step files deleted last: `io.write_checkpoint`): a crash at any moment leaves a whole
checkpoint. Resuming restores all of it, and because batches are a pure function of the data
position, continues bit for bit. `state.json` records the run's identity: settings, sites
and the model and data (`fingerprint.py`); a resume with other data or another model is
refused. While it trains, the job holds `out`'s lock (`io.folder_lock`): a second job
writing into the same folder is refused.

Distributed: under `torchrun` (DDP; gloo on CPU, NCCL on GPU) every rank reads a disjoint
slice of each global batch, gradients are averaged, and the dead counts are combined, so
N processes with B/N tokens each take the same steps as one process with B. Only rank 0
writes.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
from jaxtyping import Int
from torch import Tensor, nn

from ..distributed import distributed
from ..errors import MechscopeError
from ..io import folder_lock, write_json
from ..models.loading import resolve_device
from . import grad_spares
from .base import SparseCoder, build
from .checkpoint import load_checkpoint, save_checkpoint
from .config import CoderConfig
from .lazy_adam import LazyAdam, optimiser, touched_latents
from .memory import check_training_memory
from .numerics import check_finite, fvu
from .source import ActivationSource, Batch, SourceConfig, estimate_norm_scale, first_batches, resolve_sites
from .trainer_config import TrainConfig


class Trainer:
    """Fits dictionaries on a stream (`ActivationSource` or `CacheReader`) of batches."""

    def __init__(
        self,
        stream,
        cfgs: Sequence[CoderConfig],
        cfg: TrainConfig = TrainConfig(),
        *,
        device: str | torch.device | None = None,
    ):
        self.stream, self.cfg = stream, cfg
        self.rank, self.world = distributed()
        chosen = resolve_device(device) or resolve_device("auto")  # given, else $MECHSCOPE_DEVICE, else auto
        assert chosen is not None  # "auto" always resolves to a device
        self.device = chosen
        if stream.batch_tokens != cfg.batch_tokens:
            raise MechscopeError(
                f"the data gives batches of {stream.batch_tokens} tokens but batch_tokens is "
                f"{cfg.batch_tokens}: make them equal"
            )
        self.cfgs = [self._checked(c) for c in cfgs]
        check_training_memory(self.cfgs, self.device)  # now, not at the first optimiser step
        self.coders: list[SparseCoder] = []
        self.step_count, self.position = 0, stream.start
        self.history: list[list[dict]] = []
        self.dead = [torch.zeros(c.d_sae, dtype=torch.long, device=self.device) for c in self.cfgs]
        self._batches = None
        self._data: dict | None = None

    def _checked(self, c: CoderConfig) -> CoderConfig:
        if not c.hook_name:
            if len(self.stream.sites) != 1:
                raise MechscopeError(
                    f"set hook_name on every CoderConfig: the data has several sites ({', '.join(self.stream.sites)})"
                )
            c = c.replace(hook_name=self.stream.sites[0])
        if c.hook_name not in self.stream.widths:
            raise MechscopeError(
                f"a dictionary reads '{c.hook_name}' but the data holds {', '.join(self.stream.sites)}"
            )
        width = self.stream.widths[c.hook_name]
        if c.d_in != width:
            raise MechscopeError(f"dictionary d_in={c.d_in} but '{c.hook_name}' is {width} wide: set d_in={width}")
        if c.transcoder:
            if c.target_hook not in self.stream.widths:
                raise MechscopeError(
                    f"a transcoder predicts '{c.target_hook}' but the data holds "
                    f"{', '.join(self.stream.sites)}: record the target site too"
                )
            if c.d_out != self.stream.widths[c.target_hook]:
                raise MechscopeError(
                    f"transcoder d_out={c.d_out} but '{c.target_hook}' is "
                    f"{self.stream.widths[c.target_hook]} wide: set d_out to that"
                )
        return c

    # Set-up: scale, initial weights, optimisers

    def setup(self) -> None:
        """Estimate each input scale, build and initialise the dictionaries (same on every rank)."""
        sample = first_batches(self.stream, self.cfg.norm_batches) if self.cfg.norm_batches else None
        cfgs = []
        for c in self.cfgs:
            if sample is not None:
                check_finite(sample[c.hook_name], "the activations", 0)
                if c.input_norm == "none":  # layer_norm standardises each input: no global scale
                    c = c.replace(norm_scale=estimate_norm_scale(sample[c.hook_name]))
            cfgs.append(c)
        self._build(cfgs)
        if sample is not None:
            for coder in self.coders:
                target = _target(coder, sample)
                coder.init_from_data(
                    sample[coder.cfg.hook_name].to(self.device), None if target is None else target.to(self.device)
                )

    def _build(self, cfgs: list[CoderConfig]) -> None:
        self.cfgs, self.coders = cfgs, []
        for i, c in enumerate(cfgs):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.seed * 1_000 + i)
                self.coders.append(build(c).to(self.device))
        self.modules = [nn.parallel.DistributedDataParallel(m) if self.world > 1 else m for m in self.coders]
        self.opts = [
            optimiser(m, self.cfg.adam, self.cfg.peak_lr(m.cfg.d_sae), self.cfg.betas, self.device) for m in self.coders
        ]

    # One step

    def step(self, batch: Batch) -> dict[str, float]:
        """One optimiser step of every dictionary on this rank's slice of a global batch."""
        out: dict[str, float] = {}
        for i, (coder, module, opt) in enumerate(zip(self.coders, self.modules, self.opts)):
            x = batch[coder.cfg.hook_name].to(self.device)
            check_finite(x, "the activations", self.step_count, self.world)
            t = _target(coder, batch)
            t = None if t is None else t.to(self.device)
            for group in opt.param_groups:
                group["lr"] = self.cfg.lr_at(self.step_count, coder.cfg.d_sae)
            window = self.cfg.dead_window or coder.cfg.dead_after
            dead_mask = self.dead[i] >= window
            autocast = (
                torch.autocast("cuda", dtype=torch.bfloat16)
                if (self.cfg.autocast and self.device.type == "cuda")
                else nullcontext()
            )
            # topk-family coders hand back sparse latents here: only which ones fired is needed
            with autocast, getattr(coder, "sparse_acts", nullcontext)():
                result = module(x, dead_mask=dead_mask) if t is None else module(x, dead_mask=dead_mask, target=t)
            check_finite(result.loss.detach(), "the loss", self.step_count, self.world)
            result.loss.backward()
            fired = self._fired(result.acts.detach())
            rows = touched_latents(fired, dead_mask) if isinstance(opt, LazyAdam) else None
            coder.before_step(rows)
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(coder.parameters(), self.cfg.grad_clip)
            opt.step(rows) if isinstance(opt, LazyAdam) else opt.step()
            coder.recycle_grads()
            opt.zero_grad(set_to_none=True)
            coder.after_step(rows)
            self.dead[i] = torch.where(fired.bool(), 0, self.dead[i] + self.cfg.batch_tokens)
            tag = "" if len(self.coders) == 1 else f"{i}."
            out |= {
                f"{tag}loss": float(result.loss.detach()),
                f"{tag}l0": float(result.parts["l0"]),
                f"{tag}fvu": fvu(x if t is None else t, result.x_hat.detach()),
            }
        self.step_count += 1
        return out

    def _fired(self, acts: Tensor) -> Tensor:
        """Which latents fired in the global batch (all ranks), as int32 0/1."""
        if acts.is_sparse:  # COO (topk family): the columns of the nonzero entries fired
            fired = torch.zeros(acts.shape[1], dtype=torch.int32, device=acts.device).scatter_reduce_(
                0, acts._indices()[1], (acts._values() != 0).to(torch.int32), "amax"
            )
        else:
            fired = (acts != 0).any(0).to(torch.int32)
        if self.world > 1:
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        return fired

    # Evaluation on held-out activations

    @torch.no_grad()
    def evaluate(self, heldout: Batch) -> list[dict[str, float]]:
        """Per dictionary: FVU, L0, MSE on held-out activations, and the dead fraction."""
        rows = []
        for i, coder in enumerate(self.coders):
            x = heldout[coder.cfg.hook_name].to(self.device)
            acts = coder.encode(x)
            x_hat = coder.decode(acts, x=x)
            if coder.cfg.transcoder:  # compare the whole output (skip included) with the target
                x, x_hat = heldout[coder.cfg.target_hook].to(self.device), coder.predict(x)
            window = self.cfg.dead_window or coder.cfg.dead_after
            rows.append(
                {
                    "step": self.step_count,
                    "fvu": fvu(x, x_hat),
                    "l0": float((acts != 0).sum(-1).float().mean()),
                    "mse": float((x - x_hat).pow(2).sum(-1).mean()),
                    "dead_fraction": float((self.dead[i] >= window).float().mean()),
                }
            )
        self.history.append(rows)
        return rows

    # Checkpoints (checkpoint.py)

    def checkpoint(self, folder: str | Path) -> None:
        """Write the whole training state to `folder` (rank 0; atomic, previous one removed after)."""
        save_checkpoint(self, folder)

    def load_checkpoint(self, folder: str | Path) -> bool:
        """Resume from `folder` if it holds a checkpoint of this very run; False if none."""
        return load_checkpoint(self, folder)

    # The loop

    def fit(
        self,
        *,
        checkpoint_dir: str | Path | None = None,
        heldout: Batch | None = None,
        progress: bool = True,
        stop_after: int | None = None,
    ) -> list[SparseCoder]:
        """Train to `cfg.steps` (resuming from `checkpoint_dir` when it has a checkpoint);
        `stop_after` ends early after that many steps (for tests and interrupted jobs)."""
        from tqdm.auto import tqdm

        if checkpoint_dir is None or not self.load_checkpoint(checkpoint_dir):
            self.setup()
        batches = self.stream.batches(self.position, rank=self.rank, world=self.world)
        tokens = self.cfg.batch_tokens  # the bar counts tokens: tokens/s and tokens left are what one plans by
        bar = tqdm(
            total=self.cfg.steps * tokens,
            initial=self.step_count * tokens,
            desc="dictionary",
            unit="tok",
            unit_scale=True,
            disable=not progress or self.rank != 0,
        )
        target = self.cfg.steps if stop_after is None else min(self.cfg.steps, stop_after)
        try:
            while self.step_count < target:
                batch, position = next(batches)
                metrics = self.step(batch)
                self.position = position
                bar.update(tokens)
                bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()})
                last = self.step_count == self.cfg.steps
                if heldout is not None and (
                    (self.cfg.eval_every and self.step_count % self.cfg.eval_every == 0) or last
                ):
                    self.evaluate(heldout)
                if checkpoint_dir is not None and (self.step_count % self.cfg.checkpoint_every == 0 or last):
                    self.checkpoint(checkpoint_dir)
        finally:
            grad_spares.drop_spares()  # the gradients kept for reuse between steps
        bar.close()
        return [coder.fold_norm_scale() for coder in self.coders]


def _target(coder: SparseCoder, batch: Batch) -> Tensor | None:
    """The transcoder's target activations in `batch`; None for an autoencoder."""
    return batch[coder.cfg.target_hook] if coder.cfg.transcoder else None


def _save(coders: list[SparseCoder], out: Path, trainer: Trainer) -> None:
    for i, coder in enumerate(coders):
        folder = out if len(coders) == 1 else out / f"{i}-{coder.cfg.hook_name}"
        coder.save(folder)
        history = [rows[i] for rows in trainer.history]
        write_json(folder / "metrics.json", {"steps": trainer.step_count, "history": history})


def fit_and_save(
    trainer: Trainer,
    out: str | Path | None,
    *,
    heldout: Batch | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> list[SparseCoder]:
    """Run `trainer` with checkpoints in out/checkpoint and, when it finishes, save the
    dictionaries to `out` (or out/{i}-{site} for several); rank 0 writes, holding `out`'s lock."""
    if out is None:
        coders = trainer.fit(heldout=heldout, progress=progress, stop_after=stop_after)
    else:  # an unwritable or busy out fails before training
        with folder_lock(out, rank=trainer.rank, world=trainer.world):
            coders = trainer.fit(
                checkpoint_dir=Path(out) / "checkpoint", heldout=heldout, progress=progress, stop_after=stop_after
            )
            if trainer.rank == 0 and trainer.step_count == trainer.cfg.steps:
                _save(coders, Path(out), trainer)
    if trainer.world > 1:
        dist.barrier()
    return coders


def train(
    model,
    site: str | Sequence[str],
    coder_cfg: CoderConfig | Sequence[CoderConfig],
    cfg: TrainConfig = TrainConfig(),
    *,
    data: Int[Tensor, "n ctx"],
    source: SourceConfig = SourceConfig(),
    heldout: Int[Tensor, "m ctx"] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> SparseCoder | list[SparseCoder]:
    """Train dictionaries on `site`(s) of `model` over token contexts `data` (one forward
    feeds them all). One config gives one coder back; a list gives a list."""
    single = isinstance(coder_cfg, CoderConfig)
    cfgs = [coder_cfg] if isinstance(coder_cfg, CoderConfig) else list(coder_cfg)
    sites = [site] if isinstance(site, str) else list(site)
    src_cfg = SourceConfig(**{**asdict(source), "batch_tokens": cfg.batch_tokens, "seed": cfg.seed})
    names = resolve_sites(model, sites)
    if len(names) == 1:
        cfgs = [c if c.hook_name else c.replace(hook_name=names[0]) for c in cfgs]
    targets = [c.target_hook for c in cfgs if c.transcoder and c.target_hook not in names]
    stream = ActivationSource(model, names + sorted(set(targets)), data, src_cfg)
    cfgs = [c if c.model_name else c.replace(model_name=model.name) for c in cfgs]
    held = None
    if heldout is not None and len(heldout):
        from .source import record

        held = record(model, stream.sites, heldout, src_cfg)
    coders = fit_and_save(
        Trainer(stream, cfgs, cfg, device=model.device), out, heldout=held, progress=progress, stop_after=stop_after
    )
    return coders[0] if single else coders


def train_from_cache(
    cache_dir: str | Path,
    coder_cfg: CoderConfig | Sequence[CoderConfig],
    cfg: TrainConfig = TrainConfig(),
    *,
    out: str | Path | None = None,
    progress: bool = True,
    heldout_tokens: int = 0,
    stop_after: int | None = None,
    max_shards: int | None = None,
    window_shards: int = 1,
) -> SparseCoder | list[SparseCoder]:
    """Train dictionaries on an activation cache (`write_cache`); `heldout_tokens` > 0
    evaluates on that many rows read in cache order from its end (they are not excluded
    from training: hold out contexts when writing the cache for a clean split).

    max_shards=None shuffles the whole cache at once (`CacheReader`, memory-mapped); a
    number streams it (`streaming.ShardStream`): windows of `window_shards` shards shuffled
    together, read ahead by a thread, at most `max_shards` shards in memory (another order)."""
    from .cache import CacheReader
    from .streaming import ShardStream

    single = isinstance(coder_cfg, CoderConfig)
    cfgs = [coder_cfg] if isinstance(coder_cfg, CoderConfig) else list(coder_cfg)
    sites = sorted({c.hook_name for c in cfgs if c.hook_name} | {c.target_hook for c in cfgs if c.transcoder}) or None
    reader = (
        CacheReader(cache_dir, batch_tokens=cfg.batch_tokens, seed=cfg.seed, sites=sites)
        if max_shards is None
        else ShardStream(
            cache_dir,
            batch_tokens=cfg.batch_tokens,
            seed=cfg.seed,
            sites=sites,
            window_shards=window_shards,
            max_shards=max_shards,
        )
    )
    cfgs = [c if c.model_name else c.replace(model_name=reader.meta["model"]) for c in cfgs]
    held = None
    if heldout_tokens > 0:
        n = min(heldout_tokens, reader.n_tokens)
        held = reader.rows(torch.arange(reader.n_tokens - n, reader.n_tokens))
    coders = fit_and_save(Trainer(reader, cfgs, cfg), out, heldout=held, progress=progress, stop_after=stop_after)
    return coders[0] if single else coders
