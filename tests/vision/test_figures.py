"""Issue 23 §4: overlays, a grid of methods, the randomisation cascade, deletion/insertion
curves, and the report section for image models (which draws them and marks each check)."""

from __future__ import annotations

from matplotlib.figure import Figure

from mechscope import vision
from mechscope.io import write_figure
from mechscope.report.vision import section


def _axes_with_images(fig: Figure) -> int:
    return sum(bool(ax.images) for ax in fig.axes)


def test_overlay_and_method_grid(digits_model, images, tmp_path):
    results = [vision.attribute(digits_model, images[:3], method=m) for m in ("gradcam", "ig", "occlusion")]
    overlay = results[1].plot()
    assert _axes_with_images(overlay) == 3 and overlay.axes[0].images[1].get_cmap().name == "RdBu_r"
    assert results[0].plot(index=2).axes[0].get_title() == f"#2 class {int(results[0].target[2])}"
    grid = vision.method_grid(results)
    assert _axes_with_images(grid) == 3 * 4 and [ax.get_title() for ax in grid.axes[1:4]] == [
        "gradcam",
        "ig",
        "occlusion",
    ]
    assert write_figure(tmp_path / "grid.png", grid).read_bytes()[:4] == b"\x89PNG"


def test_cascade_and_curves(digits_model, images):
    report = vision.sanity(digits_model, "gradcam", images[:3], n_random=2)
    cascade = report.plot()
    assert _axes_with_images(cascade) == 3 * 4  # original + 3 stages, 3 inputs
    curves = report.plot_curves()
    titles = [ax.get_title() for ax in curves.axes]
    assert titles == ["deletion (PASS)", "insertion (PASS)"]


def test_report_section_for_image_models(digits_model):
    html = section(digits_model, None)
    assert "Where the classifier looks" in html and html.count("<img") == 1 + 2 * 2
    assert "Sanity of gradcam" in html and "Sanity of ig" in html and "completeness" in html


def test_report_section_skips_models_that_cannot_read_the_images():
    from torch import nn

    from mechscope.module_model import ModuleModel

    assert section(ModuleModel(nn.Sequential(nn.Flatten(), nn.Linear(12, 3))), None) == ""
