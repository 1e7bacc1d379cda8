"""Training from an activation cache keeps its memory flat whatever the cache's size: the
shuffled reads unmap the pages they touched (they would otherwise all count in the
trainer's resident memory), and the rows read are the same either way."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mechscope.dictionary.cache import CacheReader, _shard

SITE, D_IN, ROWS, SHARDS = "blocks.0.hook_resid_post", 128, 8192, 4


def _fake_cache(folder: Path) -> np.ndarray:
    """A cache folder in the layout `write_cache` produces, filled with known rows."""
    data = np.random.default_rng(0).standard_normal((SHARDS * ROWS, D_IN)).astype(np.float32)
    (folder / SITE).mkdir(parents=True)
    for i in range(SHARDS):
        np.save(folder / SITE / _shard(i), data[i * ROWS : (i + 1) * ROWS])
    (folder / SITE / "cfg.json").write_text(json.dumps({"d_in": D_IN}))
    (folder / "cfg.json").write_text(
        json.dumps({"sites": [SITE], "n_tokens": SHARDS * ROWS, "shards": [ROWS] * SHARDS})
    )
    return data


def _mapped_kb(folder: Path) -> int:
    """Resident kB of this process's mappings of files in `folder` (from /proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line: address range, perms, ..., path
            inside = str(folder) in line
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_shuffled_reads_leave_no_cache_pages_mapped(tmp_path):
    data = _fake_cache(tmp_path)
    reader = CacheReader(tmp_path, batch_tokens=2048, seed=0)
    seen = 0
    for (batch, _), _ in zip(reader.batches(), range(12)):
        assert batch[SITE].shape == (2048, D_IN)
        seen += 2048
    assert seen > len(data) / 2  # reads reached across the whole cache ...
    assert _mapped_kb(tmp_path) < 512  # ... yet almost none of its 16 MB stays mapped
    index = torch.tensor([5, 3 * ROWS + 7, 2, ROWS])
    assert torch.equal(reader.rows(index)[SITE], torch.from_numpy(data[index.numpy()]))
