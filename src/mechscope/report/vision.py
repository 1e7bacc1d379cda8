"""Report section of `mechscope.vision` for image classifiers: attribution maps of a few
images side by side for several methods, and the sanity checks of Grad-CAM and IG
(randomisation cascade, deletion/insertion curves, completeness), each marked passed or failed.

Add `section` to `report.sections.SECTIONS` (it returns "" for models that read text, or
that cannot read the images); `images=` (a tensor [N, C, H, W]) through functools.partial
for models other than the zoo's digit classifiers, which default to their test images.
"""

from __future__ import annotations

import html

from ..errors import MechscopeError
from .sections import _png, heading

N_IMAGES = 6
"""Images shown and checked: enough to see a pattern, few enough for a quick report."""


def _images(model, images):
    from ..module_model import ModuleModel
    from ..vision.images import digits_split
    from ..vision.inputs import check_images, class_count

    if not isinstance(model, ModuleModel):
        return None
    if images is None:
        images = digits_split()[0]
        # one image per class first, so the grid shows the classifier's range
        labels = digits_split()[1]
        images = images[[int((labels == c).nonzero()[0]) for c in range(N_IMAGES)]]
    try:
        images = check_images(model, images[:N_IMAGES])
        class_count(model, images)
    except MechscopeError:
        return None
    return images


def _methods(model) -> list[str]:
    from ..vision.vit import patch_size

    vit = patch_size(model) is not None and getattr(model.hf, "pattern_sites", None)
    return ["gradcam", "ig", "occlusion", "grad_rollout"] if vit else ["gradcam", "hirescam", "ig", "occlusion"]


def _checks(report) -> str:
    rows = "".join(
        f"<tr><td>{'✅ pass' if c['ok'] else '❌ FAIL'}</td><td>{html.escape(c['name'])}</td>"
        f"<td>{c['value']:.4g}</td><td>{html.escape(c['bound'])}</td></tr>"
        for c in report.checks
    )
    return f"<table><tr><th></th><th>check</th><th>value</th><th>passes if</th></tr>{rows}</table>"


def section(model, run=None, *, images=None) -> str:
    """Attribution grid and sanity checks of an image classifier ("" for other models)."""
    from ..vision import attribute, method_grid, sanity

    images = _images(model, images)
    if images is None:
        return ""
    results = [attribute(model, images, method=m) for m in _methods(model)]
    parts = [
        heading(
            "Where the classifier looks",
            "attribution maps of the predicted class for a few inputs (columns: methods; red supports the "
            "class, blue opposes it; Grad-CAM-type maps are nonnegative), then the sanity checks of Adebayo "
            "et al. (2018): a map that survives randomising the model's weights is not about the model.",
        ),
        _png(method_grid(results)),
    ]
    for method in ("gradcam", "ig"):
        report = sanity(model, method, images)
        verdict = "passes every check" if report.passed else f"FAILS {', '.join(report.failed)}"
        parts += [
            f"<h3>Sanity of {method}: {verdict}</h3>",
            _checks(report),
            _png(report.plot()),
            _png(report.plot_curves()),
        ]
    return "\n".join(parts)
