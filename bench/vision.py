"""Benchmark: mechscope.vision against captum called directly, side by side in one run.

    .venv/bin/python bench/vision.py                       # zoo:digits, 30 repeats
    .venv/bin/python bench/vision.py --repeats 10 --images 16 --json out.json

1. Wrapper overhead: per image, `vision.attribute(model, x, target, method=M)` ÷ the captum
   call it makes (same method, steps and target, on the bare module), interleaved, medians
   over repeats, for Grad-CAM (LayerGradCam + ReLU + upsampling), IG (50 steps) and
   occlusion (2x2 window, stride 1). Goal: <= 1.05 (the wrapper costs nothing).
2. Sanity cascade: `vision.sanity(..., deletion=False)` over N images with all images in one
   attribution call per stage ÷ the same with one image per call (batch_size=1). Goal: >= 3x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _machine import load_line, machine_info, machine_line
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion

import mechscope as ms
from mechscope import vision
from mechscope.zoo import digits


def _captum(net, method: str):
    """The direct captum call for `method` on one image (what the wrapper should cost)."""
    if method == "gradcam":

        def run(x, t):
            cam = LayerGradCam(net, net.conv2).attribute(x, target=t, relu_attributions=True)
            return LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear")

    elif method == "ig":

        def run(x, t):
            return IntegratedGradients(net).attribute(
                x, baselines=torch.zeros_like(x), target=t, n_steps=50, return_convergence_delta=True
            )

    else:

        def run(x, t):
            return Occlusion(net).attribute(
                x, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1), baselines=torch.zeros_like(x), target=t,
                perturbations_per_eval=16,
            )  # fmt: skip

    return run


def _median_pair(a, b, repeats: int) -> tuple[float, float]:
    """Interleaved medians (seconds) of two zero-argument callables."""
    ta, tb = [], []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(ta), statistics.median(tb)


def overhead(model, images, repeats: int) -> dict:
    rows = {}
    for method in ("gradcam", "ig", "occlusion"):
        direct = _captum(model.hf, method)
        kwargs = {"window": 2} if method == "occlusion" else {}

        def ours(i=0):
            return vision.attribute(model, images[i : i + 1], int(targets[i]), method=method, **kwargs)

        targets = model.run(images).logits.argmax(-1)
        for _ in range(3):  # warm-up
            ours(), direct(images[:1], int(targets[0]))
        t_ours, t_captum = _median_pair(ours, lambda: direct(images[:1], int(targets[0])), repeats)
        rows[method] = {"mechscope_ms": t_ours * 1e3, "captum_ms": t_captum * 1e3, "ratio": t_ours / t_captum}
        print(f"  {method:<10} mechscope {t_ours * 1e3:7.2f} ms  captum {t_captum * 1e3:7.2f} ms  "
              f"ratio {t_ours / t_captum:.3f}  (goal <= 1.05)")  # fmt: skip
    return rows


def cascade(model, images, repeats: int) -> dict:
    rows = {}
    for method in ("gradcam", "ig"):

        def batched():
            return vision.sanity(model, method, images, deletion=False)

        def single():
            return vision.sanity(model, method, images, deletion=False, batch_size=1)

        batched(), single()
        t_batched, t_single = _median_pair(batched, single, repeats)
        rows[method] = {"batched_s": t_batched, "one_per_call_s": t_single, "speedup": t_single / t_batched}
        print(f"  {method:<10} batched {t_batched:6.3f} s  one map per call {t_single:6.3f} s  "
              f"speedup {t_single / t_batched:.2f}x  (goal >= 3x)")  # fmt: skip
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="mechscope.vision wrapper overhead and batched sanity cascade")
    p.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (medians)")
    p.add_argument("--images", type=int, default=16, help="images in the sanity cascade")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = ms.load("zoo:digits")
    images = digits.data(0).x_test[: args.images]
    machine = machine_info()
    print(machine_line(machine))
    print("wrapper overhead per image (zoo:digits, one image, medians):")
    rows = {"overhead": overhead(model, images, args.repeats)}
    print(f"sanity cascade (3 stages, {len(images)} images, medians of {max(3, args.repeats // 5)}):")
    rows["cascade"] = cascade(model, images, max(3, args.repeats // 5))
    print(load_line())
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, **rows}, indent=2))


if __name__ == "__main__":
    main()
