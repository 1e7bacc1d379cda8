"""Where an image classifier looks, and whether the maps are about the model.

- `attribute(model, inputs, target=None, method=...) -> Attribution`: Grad-CAM (captum
  LayerGradCam at a site, upsampled), Guided Grad-CAM, Integrated Gradients (with its
  completeness gap), saliency, GradientSHAP, KernelSHAP and LIME (patch or superpixel
  features built for you), occlusion, and on ViTs Grad-CAM on the patch grid, attention
  rollout and gradient-weighted rollout; for a language model, IG over `hook_embed`.
- `sanity(model, method, inputs, ...) -> SanityReport`: cascading parameter randomisation
  and label randomisation (Spearman per stage), deletion/insertion AUC against random
  order, IG completeness; each test reported as passed or failed.
- `method_grid(results)`: a figure of several methods side by side; `Attribution.plot()`
  overlays, `SanityReport.plot()` the cascade, `.plot_curves()` deletion/insertion.
- `patch_mask`, `superpixel_mask`: the feature masks that KernelSHAP and LIME use.
"""

from .attribution import Attribution, attribute
from .figures import method_grid
from .masks import patch_mask, superpixel_mask
from .methods import METHODS
from .sanity import SanityReport, rank_correlation, sanity

__all__ = [
    "attribute",
    "Attribution",
    "sanity",
    "SanityReport",
    "rank_correlation",
    "method_grid",
    "patch_mask",
    "superpixel_mask",
    "METHODS",
]
