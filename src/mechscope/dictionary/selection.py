"""The top k of each row of x W + b (the TopK encoder's selection) without the whole
[batch, width] product on the CPU: whole rows in chunks of CHUNK_ELEMENTS pre-activations,
tiles of TILE_COLUMNS latents above twice that width, or a bf16 GEMM on CPUs that multiply
bfloat16 natively (`kernels.encode_topk_bf16`); `topk_select` is the exact selection each
chunk or tile goes through (native where the kernels are built, torch otherwise)."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import kernels

CHUNK_ELEMENTS = 2**21
"""Pre-activations per CPU chunk (8 MB in fp32): below the mmap threshold, inside L3 (512
rows at width 4096 measured a little faster than 256 or 1024 on 1 and 2 threads)."""
TILE_COLUMNS = 2048
"""Wider than 2 tiles, the CPU encoder works on tiles of rows x TILE_COLUMNS latents (1024 x
2048 in one chunk) and merges each row's per-tile top k: whole rows would leave a chunk only
CHUNK_ELEMENTS / width rows tall (32 at width 65,536), a GEMM that rereads all of W_enc for
every 32 rows. Measured on 1 thread (d_in 256, batch 1024, k 32): width 65,536 1,064 ms ->
504 ms; 262,144 10.3 s -> 2.1 s."""


def topk_select(
    pre: Float[Tensor, "n d"], k: int, bias: Float[Tensor, " d"] | None = None
) -> tuple[Float[Tensor, "n k"], Int[Tensor, "n k"]]:
    """The k largest entries of each row (of pre + bias, the bias added to pre in place)
    and their columns, unordered: the same values as `pre.topk(k, sorted=False)` (the same
    columns too unless values tie), cheaper for k << d.

    On the CPU the native kernel (`kernels.topk_rows`) runs when it is built: a lower bound
    of the k-th largest entry from the maxima of blocks of 16, then about k candidates;
    4-5x faster than the torch code below, and it adds the bias in the same pass.

    The torch code has two stages. Split each row into d/b blocks of b columns (block j:
    columns j, j + d/b, ..., so that the block maxima are an elementwise max of contiguous
    slices), keep the k blocks with the largest maxima, and take the top k of their k b
    entries. Exact: if t is the k-th largest block maximum, the k kept blocks hold k
    distinct entries >= t, so the k-th largest candidate is >= t; any entry above it lies in
    a block whose maximum exceeds t, and every such block is kept. b is chosen so that k b
    is about d / 8.
    """
    n, d = pre.shape
    if pre.device.type == "cpu" and (native_blocks := kernels.block_count(d, k)) is not None:
        native = kernels.topk_rows(pre, k, native_blocks, bias)
        if native is not None:
            return native
    if bias is not None:
        pre.add_(bias)
    b = 1
    while b * 2 * 8 * k <= d and d % (b * 2) == 0:
        b *= 2
    if b < 4 or pre.device.type != "cpu":
        return pre.topk(k, dim=-1, sorted=False)
    blocks = pre.view(n, b, d // b)
    top = blocks.amax(1).topk(k, dim=-1, sorted=False).indices  # [n, k] block ids
    values, j = blocks.gather(2, top[:, None, :].expand(-1, b, -1)).view(n, b * k).topk(k, dim=-1, sorted=False)
    return values, (j // k) * (d // b) + top.gather(1, j % k)


def _chunk_rows(x: Tensor, d_sae: int) -> int:
    return max(1, CHUNK_ELEMENTS // d_sae) if x.device.type == "cpu" else max(1, x.shape[0])


def _tile_columns(x: Tensor, d_sae: int, k: int) -> int | None:
    """Latents per tile for a wide CPU encoder (see TILE_COLUMNS), None for whole rows."""
    cols = max(TILE_COLUMNS, 16 * k)  # a tile's top k stays a small share of it
    return cols if x.device.type == "cpu" and d_sae > 2 * cols else None


def encode_tiled(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, cols: int) -> tuple[Tensor, Tensor]:
    """The top k of each row of x_c W_enc + b_enc, from tiles of rows x `cols` latents.
    Never more than one tile of pre-activations exists; W_enc is read once per
    CHUNK_ELEMENTS / cols rows. With the native kernels each later tile merges into the
    rows' running top k (`kernels.topk_merge`: only entries above a row's k-th largest so
    far are looked at twice); otherwise each tile's top k are candidates and the top k of a
    row's candidates are its top k (any entry among the row's k largest is among its tile's
    k largest)."""
    n, d_sae = x_c.shape[0], W_enc.shape[1]
    rows = min(n, max(1, CHUNK_ELEMENTS // cols))
    tiles = [(c, min(c + cols, d_sae)) for c in range(0, d_sae, cols)]
    scratch = x_c.new_empty(rows * cols)  # flat: a narrower last tile is a contiguous view too
    values, indices = x_c.new_empty(n, k), torch.empty(n, k, dtype=torch.long, device=x_c.device)

    def tile(s: int, r: int, start: int, end: int) -> Tensor:
        return torch.mm(x_c[s : s + r], W_enc[:, start:end], out=scratch[: r * (end - start)].view(r, end - start))

    native = x_c.dtype == torch.float32 and kernels.load() is not None
    if native and k <= tiles[0][1] and _merged(tile, n, rows, tiles, b_enc, values, indices):
        return values, indices
    kept = [min(k, end - start) for start, end in tiles]
    cand_values = x_c.new_empty(rows, sum(kept))
    cand_indices = torch.empty(rows, sum(kept), dtype=torch.long, device=x_c.device)
    for s in range(0, n, rows):
        r, at = min(rows, n - s), 0
        for (start, end), kk in zip(tiles, kept):
            v, i = topk_select(tile(s, r, start, end), kk, b_enc[start:end])  # the bias added there
            cand_values[:r, at : at + kk], cand_indices[:r, at : at + kk] = v, i + start
            at += kk
        v, pos = topk_select(cand_values[:r], k)
        values[s : s + r], indices[s : s + r] = v, cand_indices[:r].gather(1, pos)
    return values, indices


def _merged(tile, n: int, rows: int, tiles, b_enc: Tensor, values: Tensor, indices: Tensor) -> bool:
    """encode_tiled with the native merge: the first tile's top k, then each later tile
    merged in, tile by tile (W_enc's tile stays in cache over the row chunks; chunks of 128
    rows, whose pre-activations would still be in cache when merged, measured slower: the
    GEMM loses more). False (values void) where the kernels cannot serve (absent, or NaN)."""
    k = values.shape[1]
    (start, end), *later = tiles
    floor = values.new_empty(n)
    for s in range(0, n, rows):
        r = min(rows, n - s)
        v, i = topk_select(tile(s, r, start, end), k, b_enc[start:end])
        values[s : s + r], indices[s : s + r], floor[s : s + r] = v, i, v.amin(1)
    if bool(floor.isnan().any()):  # NaN in the first tile: torch ranks it first
        return False
    for start, end in later:
        for s in range(0, n, rows):
            r = min(rows, n - s)
            pre = tile(s, r, start, end)
            if not kernels.topk_merge(
                pre, b_enc[start:end], start, values[s : s + r], indices[s : s + r], floor[s : s + r]
            ):
                return False
    return True


def encode_topk(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top k of each row of x_c W_enc + b_enc (values, columns; unordered), with no more
    than one chunk or tile of the pre-activations at once on the CPU."""
    n, rows = x_c.shape[0], _chunk_rows(x_c, W_enc.shape[1])
    if rows >= n:
        values, indices = topk_select(torch.addmm(b_enc, x_c, W_enc), k)
    elif (selected := kernels.encode_topk_bf16(x_c, W_enc, b_enc, k, rows)) is not None:
        values, indices = selected  # the same selection from a bf16 GEMM (AMX CPUs; see kernels.py)
    elif (cols := _tile_columns(x_c, W_enc.shape[1], k)) is not None and W_enc.dtype == x_c.dtype:
        values, indices = encode_tiled(x_c, W_enc, b_enc, k, cols)
    else:  # CPU: GEMM and selection per chunk of rows; never the whole [n, d_sae] at once
        pre = x_c.new_empty(rows, W_enc.shape[1])
        values = pre.new_empty(n, k)
        indices = torch.empty(n, k, dtype=torch.long, device=x_c.device)
        for s in range(0, n, rows):
            chunk = torch.mm(x_c[s : s + rows], W_enc, out=pre[: min(rows, n - s)])
            values[s : s + rows], indices[s : s + rows] = topk_select(chunk, k, b_enc)  # the bias added there
    return values, indices
