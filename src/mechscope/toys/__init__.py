"""Analyses of phenomena that the zoo's toy models reproduce from papers.

- `grokking`: progress measures for grokking modular addition (Nanda et al. 2023) on
  `zoo:modadd` and its training snapshots: Fourier basis, key frequencies, restricted and
  excluded loss, Gini sparsity, weight norm, the three phases (`grokking_curves`).
- `superposition`: measures of superposition in toy models (Elhage et al. 2022).

Import the submodule you need (``from mechscope.toys import grokking``); importing this
package loads neither (they pull in matplotlib).
"""

__all__ = ["grokking", "superposition"]
