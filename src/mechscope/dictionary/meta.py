"""Meta-SAEs (Bussmann et al. 2024, "Showing SAE latents are not atomic using meta-SAEs"): a
sparse dictionary trained on another dictionary's decoder directions, so that each latent is
written as a sparse combination of meta-latents — what the latent is built from.

    meta = train_meta(sae, width=512, k=4)                 # MetaSAE
    meta.components(1234)                                  # [(meta latent, weight), ...]
    meta.latents_using(7); meta.save("runs/sae/meta"); MetaSAE.load("runs/sae/meta")

Data: the rows of the dictionary's W_dec, each scaled to unit norm (a latent's direction,
not its scale). Training is the ordinary `Trainer` (any architecture; BatchTopK with k = 4
as in the paper by default) on a `RowStream` that serves the rows in seeded epochs, so the
input scale (sqrt(d) for unit rows) is folded into the artifact as for any dictionary.

Composition: for latent i, the meta-SAE's activations on its unit direction: meta-latent j
with weight a_ij > 0, so that direction_i ≈ Σ_j a_ij meta.W_dec[j] + meta.b_dec. They are
stored per latent as the top `width` entries (indices and weights, zero weight = padding).

Storage: the meta-SAE is a dictionary folder (cfg.json + sae.safetensors, loadable with
`mechscope.dictionary.load`; its hook_name says it reads "W_dec"), plus composition.safetensors
and metrics.json beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MechscopeError
from ..io import read_json, read_tensors, write_json, write_tensors
from .base import SparseCoder
from .cache import rows_for_step
from .config import CoderConfig
from .source import Batch, rank_slice
from .trainer_config import TrainConfig

SITE = "W_dec"
SEED_OFFSET = 1_000_003
COMPOSITION = "composition.safetensors"


class RowStream:
    """The rows of a matrix as a stream of batches for `Trainer`: seeded epoch permutations,
    batch `step` a pure function of the step (so resuming is exact)."""

    def __init__(self, rows: Float[Tensor, "n d"], batch_tokens: int, *, seed: int = 0, name: str = SITE):
        if rows.dim() != 2 or len(rows) < 2:
            raise MechscopeError(f"need at least two rows [n, d] to train on, got shape {tuple(rows.shape)}")
        self.rows, self.batch_tokens, self.seed = rows.float().cpu(), batch_tokens, seed
        self.sites, self.widths = [name], {name: rows.shape[1]}

    @property
    def start(self) -> int:
        return 0

    def batches(self, position: int | None = None, *, rank: int = 0, world: int = 1) -> Iterator[tuple[Batch, int]]:
        step = position or 0
        share = rank_slice(self.batch_tokens, rank, world)
        while True:
            index = rows_for_step(len(self.rows), step, self.batch_tokens, self.seed)[share]
            step += 1
            yield {self.sites[0]: self.rows[index]}, step


def directions(coder: SparseCoder) -> Float[Tensor, "d_sae d_out"]:
    """The dictionary's decoder rows scaled to unit norm (float32; zero rows stay zero)."""
    W = coder.W_dec.detach().float().cpu()
    return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass
class MetaSAE:
    """A meta-SAE and the composition of every latent of the dictionary it was trained on."""

    meta: SparseCoder
    indices: Int[Tensor, "d_sae m"]
    """Meta-latents of each latent, strongest first."""
    weights: Float[Tensor, "d_sae m"]
    """Their activations (0 = padding)."""
    fvu: float
    """Fraction of the directions' variance the meta-SAE leaves unexplained."""
    cosine: float
    """Mean cosine between each direction and its meta reconstruction."""

    @property
    def l0(self) -> float:
        """Mean number of meta-latents per latent."""
        return float((self.weights > 0).sum(-1).float().mean())

    def components(self, latent: int) -> list[tuple[int, float]]:
        """(meta-latent, weight) pairs that build `latent`, strongest first."""
        if not 0 <= latent < len(self.indices):
            raise MechscopeError(f"latent {latent} is out of range: the dictionary has {len(self.indices)} latents")
        return [(int(i), float(w)) for i, w in zip(self.indices[latent], self.weights[latent]) if w > 0]

    def latents_using(self, meta_latent: int) -> list[tuple[int, float]]:
        """(latent, weight) pairs of the latents built with `meta_latent`, strongest first."""
        if not 0 <= meta_latent < self.meta.cfg.d_sae:
            raise MechscopeError(f"meta-latent {meta_latent} is out of range (0-{self.meta.cfg.d_sae - 1})")
        hit = (self.indices == meta_latent) & (self.weights > 0)
        rows, cols = hit.nonzero(as_tuple=True)
        w = self.weights[rows, cols]
        order = w.argsort(descending=True)
        return [(int(rows[i]), float(w[i])) for i in order]

    def to_dict(self) -> dict:
        usage = torch.bincount(self.indices[self.weights > 0].flatten(), minlength=self.meta.cfg.d_sae)
        return {
            "d_sae": len(self.indices),
            "meta_d_sae": self.meta.cfg.d_sae,
            "arch": self.meta.cfg.arch,
            "l0": self.l0,
            "fvu": self.fvu,
            "cosine": self.cosine,
            "dead_meta_fraction": float((usage == 0).float().mean()),
        }

    def plot(self):
        """Meta-latents per latent (histogram) and latents per meta-latent (sorted)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
        per_latent = (self.weights > 0).sum(-1).numpy()
        left.hist(per_latent, bins=range(int(per_latent.max()) + 2), color="#4a7ab5", align="left")
        left.set_xlabel("meta-latents per latent")
        left.set_ylabel("latents")
        usage = torch.bincount(self.indices[self.weights > 0].flatten(), minlength=self.meta.cfg.d_sae)
        right.plot(usage.sort(descending=True).values.numpy(), color="#e39c37")
        right.set_xlabel("meta-latent (sorted)")
        right.set_ylabel("latents using it")
        fig.suptitle(f"meta-SAE: {self.meta.cfg.d_sae} meta-latents, L0 {self.l0:.2f}, FVU {self.fvu:.3f}", fontsize=9)
        fig.tight_layout()
        return fig

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.meta.save(folder)
        write_tensors(
            folder / COMPOSITION, {"indices": self.indices.contiguous(), "weights": self.weights.contiguous()}
        )
        write_json(folder / "metrics.json", {"kind": "meta_sae", **self.to_dict()})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> MetaSAE:
        folder = Path(folder)
        if not (folder / COMPOSITION).is_file():
            raise MechscopeError(
                f"'{folder}' holds no meta-SAE composition ({COMPOSITION}): write one with `mechscope sae meta`"
            )
        meta = SparseCoder.load(folder)
        t = read_tensors(folder / COMPOSITION, "meta-SAE composition")
        metrics = read_json(folder / "metrics.json")
        return cls(meta, t["indices"], t["weights"], metrics["fvu"], metrics["cosine"])


@torch.no_grad()
def decompose(meta: SparseCoder, rows: Float[Tensor, "n d"]) -> MetaSAE:
    """Compose each of `rows` (unit directions) from the meta-latents of a trained `meta`."""
    meta.eval()
    rows = rows.float().to(meta.W_enc.device)
    acts = meta.encode(rows)
    recon = meta.decode(acts, x=rows).float()
    width = max(1, int((acts > 0).sum(-1).max()))
    weights, indices = acts.float().topk(width, dim=-1)
    weights = weights.clamp_min(0)
    fvu = float((rows - recon).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum().clamp_min(1e-12))
    cosine = float(torch.nn.functional.cosine_similarity(rows, recon, dim=-1).mean())
    return MetaSAE(meta, indices.cpu(), weights.cpu(), fvu, cosine)


def train_meta(
    source: SparseCoder | Float[Tensor, "n d"],
    *,
    width: int | None = None,
    k: int = 4,
    arch: str = "batchtopk",
    cfg: CoderConfig | None = None,
    train: TrainConfig | None = None,
    epochs: int = 200,
    batch: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
    device: str | torch.device | None = "cpu",
) -> MetaSAE:
    """Train a meta-SAE on the unit decoder directions of `source` (a dictionary, or the rows
    themselves) and decompose every latent. Default: `arch` with `width` = d_sae / 4 meta-latents
    and k active, `epochs` passes over the rows with Adam at `lr`; `cfg` / `train` override."""
    from .train import Trainer

    if epochs < 1 or (width is not None and width < 1):
        raise MechscopeError(
            f"epochs and width must be at least 1, got epochs={epochs}, width={width} "
            "(leave width out for a quarter of the latents)"
        )
    rows = directions(source) if isinstance(source, SparseCoder) else source.float().cpu()
    if rows.dim() != 2 or len(rows) < 2:
        raise MechscopeError(f"a meta-SAE needs at least two directions [n, d], got shape {tuple(rows.shape)}")
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n, d = rows.shape
    batch = min(batch, n)
    if cfg is None:
        width = max(k, n // 4) if width is None else width
        base = source.cfg if isinstance(source, SparseCoder) else None
        cfg = CoderConfig(
            arch,
            d,
            width,
            k=k,
            aux_k=min(256, width),
            hook_name=SITE,
            dead_after=20 * n,
            model_name=base.model_name if base else "",
        )
    if cfg.d_in != d:
        raise MechscopeError(f"the meta-SAE reads {cfg.d_in}-wide rows but the directions are {d} wide: set d_in={d}")
    # the seed is offset: a dictionary and its meta-SAE both built by `Trainer` with seed 0 would
    # otherwise start from the same random decoder rows, and an undertrained dictionary's latents
    # would each "decompose" into the meta-latent that began as its copy
    train = train or TrainConfig(
        total_tokens=max(epochs * n, batch),
        batch_tokens=batch,
        lr=lr,
        warmup_steps=10,
        seed=seed + SEED_OFFSET,
        norm_batches=1,
        checkpoint_every=10**9,
    )
    stream = RowStream(rows, train.batch_tokens, seed=train.seed)
    trainer = Trainer(stream, [cfg.replace(hook_name=cfg.hook_name or SITE)], train, device=device)
    meta = trainer.fit(progress=progress)[0]
    return decompose(meta, rows)
