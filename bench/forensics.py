"""Benchmark: weight forensics of one 7B-shape matrix pair, side by side in one run.

    .venv/bin/python bench/forensics.py                        # 4096 x 11008, rank-one update
    .venv/bin/python bench/forensics.py --shape 1024 2752      # a quick run

A random base W (Gaussian, σ_1 like a trained matrix's scale) and W + σ u vᵀ, float32.
mechscope: `structure.forensics.compare_matrix` on the pair, i.e. the whole per-matrix
forensics (ΔW, norms, σ_1(W) for the noise floor, the checked randomised SVD with its
residual check, spectrum statistics, top directions). Baseline: the full SVD of ΔW
(`torch.linalg.svd(ΔW, full_matrices=False)`, what `weight_diff` does per matrix), timed
on the same ΔW. Printed: both times (wall and process CPU, the steadier one under load),
their ratios (goal >= 10x), and that both find rank 1 with the same σ_1 and directions.
`--rank R` plants a rank-R update instead (the solver's guess starts at 4, so R > 12
shows the doubling); `--full-rank` adds full-rank
noise to show the fallback to the full SVD.

Every output starts with the machine line (CPU model, threads, load); the load is printed
again at the end: on a shared machine both columns are measured under the same load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _machine import machine_line  # noqa: E402

from mechscope.structure.forensics import compare_matrix  # noqa: E402
from mechscope.structure.spectra import Matrix  # noqa: E402


def _pair(m: int, n: int, rank: int, full_rank: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g) * 0.02
    u, v = torch.randn(m, rank, generator=g), torch.randn(rank, n, generator=g)
    update = (u / u.norm(dim=0)) @ (v / v.norm(dim=1, keepdim=True)) * float(torch.linalg.matrix_norm(w[:512], 2))
    if full_rank:
        update = update + 1e-3 * torch.randn(m, n, generator=g)
    return w, w + update


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", type=int, nargs=2, default=(4096, 11008), metavar=("M", "N"))
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--full-rank", action="store_true", help="add full-rank noise (the solver must fall back)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    (m, n), rank = args.shape, args.rank
    w, tuned = _pair(m, n, rank, args.full_rank)
    print(f"pair {m} x {n} float32, planted rank {rank}{' + full-rank noise' if args.full_rank else ''}")

    start, cpu = time.perf_counter(), time.process_time()
    row, tensors = compare_matrix(
        Matrix("W", "W_out", 0, None, (w,)), Matrix("W", "W_out", 0, None, (tuned,)), k=8, rtol=1e-5, guess=4
    )
    ours, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"mechscope forensics (per matrix): {ours:.2f} s wall, {ours_cpu:.2f} s CPU  "
        f"solver={row['solver']} rank={row['rank']}"
    )

    start, cpu = time.perf_counter(), time.process_time()
    delta = tuned - w
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    full, full_cpu = time.perf_counter() - start, time.process_time() - cpu
    tol = row["noise_floor"]
    print(
        f"full SVD of ΔW:                   {full:.2f} s wall, {full_cpu:.2f} s CPU  "
        f"rank={int((s > tol).sum())} (same floor)"
    )

    r = min(row["rank"], 8)
    same_sigma = torch.allclose(tensors["W.S"][:r].float(), s[:r], rtol=1e-4)
    cos = (tensors["W.U"][:, :r].T @ u[:, :r]).abs().diagonal().min() if r else torch.tensor(1.0)
    print(f"agree: top-{r} σ within 1e-4: {same_sigma}; min |cos| of directions: {float(cos):.6f}")
    print(f"speed-up full SVD / mechscope: {full / ours:.1f}x wall, {full_cpu / ours_cpu:.1f}x CPU (goal >= 10x)")
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
