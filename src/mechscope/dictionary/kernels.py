"""Native CPU kernels for the TopK SAE step (`kernels.c`): the top-k selection over the
encoder's pre-activations (also from a bfloat16 GEMM, exactly: `encode_topk_bf16`) and the
sparse weight gradients (G^T x with k nonzeros a row).

They are compiled once per machine with the system C compiler (`cc -O3 -march=native
-fopenmp`, see FLAGS; a second or so) into ~/.cache/mechscope/kernels (or
$MECHSCOPE_CACHE/kernels) and loaded with ctypes: no Python or torch headers, no build step
at install. Where there is no compiler, or MECHSCOPE_KERNELS=0, `load()` returns None and
the callers use their torch code, which gives the same values (slower: see
bench/README.md, `sae.py`).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from functools import lru_cache

import torch
from torch import Tensor

from . import grad_spares as spares
from .kernel_cache import FLAGS as FLAGS
from .kernel_cache import build_or_reuse as _build_or_reuse
from .kernel_cache import cpu_id

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """The compiled kernels, or None (no compiler, a failed build, an unsafe cache, or
    MECHSCOPE_KERNELS=0)."""
    if os.environ.get("MECHSCOPE_KERNELS", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        log.info("no C compiler found: the TopK SAE uses its (slower) torch kernels")
        return None
    target = _build_or_reuse(compiler)
    if target is None:
        return None
    try:
        lib = ctypes.CDLL(str(target))
    except OSError as err:
        log.warning("could not load the native TopK kernels (%s): using the slower torch kernels", err)
        return None
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.topk_rows.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ptr, ctypes.c_int]
    lib.topk_rows.restype = i64
    lib.topk_merge_rows.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, ptr, ptr, ctypes.c_int]
    lib.topk_merge_rows.restype = i64
    lib.scatter_columns.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, ctypes.c_int]
    lib.scatter_columns.restype = ctypes.c_int
    lib.decode_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_int]
    lib.decode_backward.restype = None
    lib.transpose_norms.argtypes = [ptr, ptr, ptr, i64, i64, ctypes.c_int]
    lib.transpose_norms.restype = None
    lib.bf16_candidates.argtypes = [
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        ptr,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        ptr,
        ptr,
        ptr,
        ptr,
        ctypes.c_int,
    ]
    lib.bf16_candidates.restype = i64
    f32 = ctypes.c_float
    lib.adam_rows.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, f32, f32, f32, f32, f32, ctypes.c_int]
    lib.adam_rows.restype = None
    lib.project_rows.argtypes = [ptr, ptr, ptr, i64, i64, ctypes.c_int]
    lib.project_rows.restype = None
    lib.normalise_rows.argtypes = [ptr, ptr, i64, i64, ctypes.c_int]
    lib.normalise_rows.restype = None
    lib.candidate_dots.argtypes = [ptr, ptr, i64, ptr, ptr, ptr, i64, i64, i64, ptr, ctypes.c_int]
    lib.candidate_dots.restype = None
    lib.select_candidates.argtypes = [ptr, ptr, ptr, i64, i64, i64, ptr, ptr, ctypes.c_int]
    lib.select_candidates.restype = None
    return lib


def block_count(width: int, k: int) -> int | None:
    """How many blocks the selection splits a row of `width` into: blocks of 16 entries (8,
    4, ... where 16 does not divide the width or gives fewer than k blocks); None for k
    outside 1..width."""
    if not 0 < k <= width:
        return None
    per = 16
    while per > 1 and (width % per or width // per < k):
        per //= 2
    return width // per


def _usable(*tensors: Tensor) -> bool:
    return all(t.device.type == "cpu" and t.is_contiguous() for t in tensors)


def topk_rows(pre: Tensor, k: int, blocks: int, bias: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    """The k largest entries of each row of pre [n, d] (+ bias [d]) and their columns,
    unordered (see kernels.c); `blocks` divides d and is at least k. The bias is added to
    pre in place (the caller's scratch). None, with pre untouched, when the kernels are not
    there or the input is not float32 contiguous CPU: the caller then selects with torch."""
    lib = load()
    if lib is None or pre.dtype != torch.float32 or not _usable(pre) or not 0 < k <= blocks or pre.shape[1] % blocks:
        return None
    if bias is not None and (bias.dtype != torch.float32 or not _usable(bias) or bias.shape != pre.shape[1:]):
        return None
    n, d = pre.shape
    values = pre.new_empty(n, k)
    indices = torch.empty(n, k, dtype=torch.long)
    failed = lib.topk_rows(
        pre.data_ptr(),
        None if bias is None else bias.data_ptr(),
        n,
        d,
        blocks,
        k,
        values.data_ptr(),
        indices.data_ptr(),
        torch.get_num_threads(),
    )
    # NaN in a row (torch ranks it first, so a NaN weight shows in the loss) or no memory:
    # pre holds pre + bias all the same
    return pre.topk(k, dim=-1, sorted=False) if failed else (values, indices)


def topk_merge(pre: Tensor, bias: Tensor, start: int, values: Tensor, indices: Tensor, floor: Tensor) -> bool:
    """Merge the tile pre [n, d] (+ bias [d]; columns start.. of the full width) into each
    row's running top k (values, indices [n, k], updated in place) and its smallest value
    floor [n] (see kernels.c). False, with the state void, when the kernels are not there,
    a tensor is not float32 contiguous CPU, or a row holds NaN: the caller then selects
    with torch."""
    lib = load()
    tensors = (pre, bias, values, floor)
    if lib is None or any(t.dtype != torch.float32 for t in tensors) or not _usable(*tensors, indices):
        return False
    n, d = pre.shape
    if (
        indices.dtype != torch.long
        or bias.shape != (d,)
        or values.shape != indices.shape
        or floor.shape != (n,)
        or len(values) != n
    ):
        return False
    k = values.shape[1]
    failed = lib.topk_merge_rows(
        pre.data_ptr(),
        bias.data_ptr(),
        n,
        d,
        start,
        k,
        values.data_ptr(),
        indices.data_ptr(),
        floor.data_ptr(),
        torch.get_num_threads(),
    )
    return failed == 0


def _sparse_args(indices: Tensor, weights: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    if not (weights.dtype == x.dtype == torch.float32) or indices.dtype != torch.long:
        return None
    indices, weights, x = indices.contiguous(), weights.contiguous(), x.contiguous()
    return (indices, weights, x) if _usable(indices, weights, x) else None


def scatter_columns(
    indices: Tensor, weights: Tensor, x: Tensor, rows: int, weight: Tensor | None = None
) -> Tensor | None:
    """x^T G [d, rows] for the sparse [n, rows] matrix G holding weights [n, k] at columns
    indices [n, k] (column indices[b, j] gets weights[b, j] x[b]; indices outside 0..rows-1
    are dropped): W_enc's gradient in W_enc's layout, written into the gradient handed back
    for `weight` when there is one (`grad_spares.give_back`). float32 CPU; None without the kernels or
    memory."""
    lib, args = load(), _sparse_args(indices, weights, x)
    if lib is None or args is None:
        return None
    indices, weights, x = args
    (n, k), d = indices.shape, x.shape[1]
    out = spares.output(weight, (d, rows), x)
    scratch = spares.scratch(rows * d)
    failed = lib.scatter_columns(
        out.data_ptr(),
        scratch.data_ptr(),
        rows,
        indices.data_ptr(),
        weights.data_ptr(),
        x.data_ptr(),
        n,
        k,
        d,
        torch.get_num_threads(),
    )
    return None if failed else out


def adam_rows(p: Tensor, g: Tensor, m: Tensor, v: Tensor, rows: Tensor, axis: int, hyper: tuple[float, ...]) -> bool:
    """Adam's update in place at the latents `rows` along `axis` of p (and its moments m, v),
    hyper = (beta1, beta2, eps, step size, sqrt of the second bias correction); False, with
    nothing changed, without the kernels or for tensors it does not take (the caller then
    updates with torch)."""
    lib = load()
    if lib is None or p.dim() > 2 or axis >= p.dim() or rows.dtype != torch.long:
        return False
    if not (p.dtype == g.dtype == m.dtype == v.dtype == torch.float32) or not _usable(p, g, m, v, rows):
        return False
    shape = p.shape if p.dim() == 2 else (p.shape[0], 1)
    outer, width, inner = (1, shape[0], shape[1]) if axis == 0 else (shape[0], shape[1], 1)
    lib.adam_rows(
        p.data_ptr(),
        g.data_ptr(),
        m.data_ptr(),
        v.data_ptr(),
        rows.data_ptr(),
        rows.numel(),
        outer,
        width,
        inner,
        *hyper,
        torch.get_num_threads(),
    )
    return True


def project_rows(w: Tensor, g: Tensor, rows: Tensor) -> bool:
    """g[r] -= (g[r].w[r] / w[r].w[r]) w[r] in place at the given rows of a [n, d] decoder
    and its gradient; False, with nothing changed, where the kernels do not take them."""
    lib = load()
    if lib is None or w.dim() != 2 or rows.dtype != torch.long or not (w.dtype == g.dtype == torch.float32):
        return False
    if not _usable(w, g, rows):
        return False
    lib.project_rows(w.data_ptr(), g.data_ptr(), rows.data_ptr(), rows.numel(), w.shape[1], torch.get_num_threads())
    return True


def normalise_rows(w: Tensor, rows: Tensor) -> bool:
    """w[r] /= max(|w[r]|, 1e-12) in place at the given rows; False as project_rows."""
    lib = load()
    if lib is None or w.dim() != 2 or rows.dtype != torch.long or w.dtype != torch.float32 or not _usable(w, rows):
        return False
    lib.normalise_rows(w.data_ptr(), rows.data_ptr(), rows.numel(), w.shape[1], torch.get_num_threads())
    return True


def decode_backward(
    indices: Tensor, values: Tensor, e: Tensor, w: Tensor, need_values: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None] | None:
    """The gathered decoder's backward, e the output gradient [n, d], w the decoder [rows, d]:
    (grad values [n, k] = e[b] . w[indices[b, j]], grad w [rows, d] = V^T e), each only if
    asked for, in one pass; float32 CPU; None without the kernels."""
    lib, args = load(), _sparse_args(indices, values, e)
    if lib is None or args is None or w.dtype != torch.float32 or not _usable(w):
        return None
    indices, values, e = args
    (n, k), (rows, d) = indices.shape, w.shape
    # rows of grad_v whose index lies outside w would stay unwritten: refuse those
    low, high = torch.aminmax(indices)
    if int(low) < 0 or int(high) >= rows:
        return None
    grad_v = e.new_empty(n, k) if need_values else None
    grad_w = spares.output(w, (rows, d), w) if need_w else None
    lib.decode_backward(
        None if grad_v is None else grad_v.data_ptr(),
        None if grad_w is None else grad_w.data_ptr(),
        indices.data_ptr(),
        values.data_ptr(),
        e.data_ptr(),
        w.data_ptr(),
        n,
        k,
        d,
        rows,
        torch.get_num_threads(),
    )
    return grad_v, grad_w


def _bf16_error_scale(d_in: int) -> float:
    """c with |bf16 GEMM entry - fp32 dot| <= c |x| |w| for inputs of width d_in: both
    operands rounded to bfloat16 (2u + u^2, u = 2^-9), fp32 accumulation (gamma_d =
    d 2^-24 / (1 - d 2^-24), once in the GEMM and once in the fp32 dot it is compared with),
    the output rounded to bfloat16 (u), the bias sum rounded in fp32 (2^-22); Cauchy-Schwarz
    bounds sum |x_i w_i| by |x| |w|. A quarter more for what the model leaves out."""
    u, gamma = 2.0**-9, d_in * 2.0**-24 / (1 - d_in * 2.0**-24)
    return 1.25 * ((2 * u + u * u) * (1 + 2 * gamma + u) + 2 * gamma + u + 2.0**-22)


@lru_cache(maxsize=1)
def bf16_selection() -> bool:
    """Whether TopK selects from a bfloat16 GEMM (`encode_topk_bf16`): the kernels are built,
    this CPU multiplies bfloat16 natively (AMX or AVX512-BF16: 4x the fp32 rate; elsewhere a
    bf16 GEMM is slower), MECHSCOPE_BF16_SELECT is not 0, and torch's bf16 product keeps
    the error bound the selection relies on (checked once, here, on a worst-case sum)."""
    flags = cpu_id().split()
    if (
        os.environ.get("MECHSCOPE_BF16_SELECT", "1") == "0"
        or load() is None
        or not ("amx_bf16" in flags or "avx512_bf16" in flags)
    ):
        return False
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1024, generator=gen).abs()  # all terms of one sign: no cancellation to hide in
    w = torch.randn(1024, 256, generator=gen).abs()
    err = (torch.mm(x.bfloat16(), w.bfloat16()).double() - x.double() @ w.double()).abs()
    bound = _bf16_error_scale(1024) * x.double().norm(dim=1)[:, None] * w.double().norm(dim=0)[None, :]
    ok = bool((err <= bound).all())
    if not ok:
        log.warning("this torch's bfloat16 matmul is less exact than assumed: TopK selects in float32")
    return ok


def encode_topk_bf16(
    x_c: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, chunk_rows: int
) -> tuple[Tensor, Tensor] | None:
    """The exact top k of each row of x_c W_enc + b_enc (fp32 values, as the fp32 GEMM and
    `topk_select` give them, up to the order of summation) from a bfloat16 GEMM over chunks
    of `chunk_rows` rows and fp32 dots for about 2k candidates per row (see kernels.c,
    bf16_candidates). None when `bf16_selection()` is off, the input is not float32 CPU, or
    a row holds NaN: the caller then runs the fp32 GEMM."""
    lib = load()
    if lib is None or not bf16_selection() or not (x_c.dtype == W_enc.dtype == b_enc.dtype == torch.float32):
        return None
    x_c = x_c.contiguous()
    if not _usable(x_c, W_enc, b_enc):
        return None
    (n, d), width = x_c.shape, W_enc.shape[1]
    blocks = block_count(width, k)
    if blocks is None:
        return None
    threads, cap = torch.get_num_threads(), min(width, 4 * k + 32)
    w_t, w_norm = W_enc.new_empty(width, d), W_enc.new_empty(width)
    lib.transpose_norms(W_enc.data_ptr(), w_t.data_ptr(), w_norm.data_ptr(), d, width, threads)
    cw = w_norm * _bf16_error_scale(d)
    cb = b_enc.abs() * 2.0**-21
    x_norm = torch.linalg.vector_norm(x_c, dim=1)
    x16, w16 = x_c.bfloat16(), W_enc.bfloat16()
    pre = torch.empty(min(chunk_rows, n), width, dtype=torch.bfloat16)
    values, indices = x_c.new_empty(n, k), torch.empty(n, k, dtype=torch.long)
    cand, count = torch.empty(n, cap, dtype=torch.long), torch.empty(n, dtype=torch.long)
    for s in range(0, n, chunk_rows):
        m = min(chunk_rows, n - s)
        chunk = torch.mm(x16[s : s + m], w16, out=pre[:m])
        failed = lib.bf16_candidates(
            chunk.data_ptr(),
            b_enc.data_ptr(),
            x_norm[s:].data_ptr(),
            cw.data_ptr(),
            cb.data_ptr(),
            x_c[s:].data_ptr(),
            w_t.data_ptr(),
            m,
            width,
            d,
            blocks,
            k,
            cap,
            cand[s:].data_ptr(),
            count[s:].data_ptr(),
            values[s:].data_ptr(),
            indices[s:].data_ptr(),
            threads,
        )
        if failed:
            return None
    exact = x_c.new_empty(n, cap)
    lib.candidate_dots(
        cand.data_ptr(),
        count.data_ptr(),
        cap,
        x_c.data_ptr(),
        w_t.data_ptr(),
        b_enc.data_ptr(),
        n,
        d,
        width,
        exact.data_ptr(),
        threads,
    )
    lib.select_candidates(
        exact.data_ptr(), cand.data_ptr(), count.data_ptr(), cap, n, k, values.data_ptr(), indices.data_ptr(), threads
    )
    return values, indices
