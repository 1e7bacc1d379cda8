"""One torch thread in tests: tiny tensors gain nothing from two, and on a busy
2-core machine thread contention makes small SVDs and matmuls many times slower."""

import torch

torch.set_num_threads(1)
