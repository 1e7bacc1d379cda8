"""Analyses of phenomena that the zoo's toy models reproduce from papers.

- `grokking`: progress measures for grokking modular addition (Nanda et al. 2023) on
  `zoo:modadd` and its training snapshots: Fourier basis, key frequencies, restricted and
  excluded loss, Gini sparsity, weight norm, the three phases (`grokking_curves`).
- `superposition`: measures of superposition in toy models (Elhage et al. 2022).
- `cards`: what these measures add to the zoo folders of `zoo:modadd`, `zoo:superposition`
  and `zoo:induction` (card metrics, head scores while training, the paper's figures). Importing this package registers
  them with `mechscope.zoo`, so that `zoo.train(NAME)` and `zoo.plots(NAME)` run them.

Import the submodule you need (``from mechscope.toys import grokking``); importing this
package loads none of them (they pull in matplotlib).
"""

from __future__ import annotations

from pathlib import Path

from .. import zoo

__all__ = ["grokking", "superposition", "cards"]


def _cards():
    from . import cards

    return cards


# Thin wrappers: registering costs no import of the analyses themselves.
zoo.register_analysis(
    "modadd",
    zoo.Analysis(
        after_train=lambda folder: _cards().analyse_modadd(Path(folder)),
        plots=lambda folder, out_dir: _cards().modadd_plots(folder, out_dir),
    ),
)
zoo.register_analysis(
    "induction",
    zoo.Analysis(
        monitor=lambda model, tokens: _cards().induction_head_scores(model, tokens),
        plots=lambda folder, out_dir: _cards().induction_plots(folder, out_dir),
    ),
)
zoo.register_analysis(
    "superposition",
    zoo.Analysis(
        after_train=lambda folder: _cards().analyse_superposition(Path(folder)),
        plots=lambda folder, out_dir: _cards().superposition_plots(folder, out_dir),
    ),
)
