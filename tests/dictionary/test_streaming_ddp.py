"""`sae cache` split across two gloo ranks (each records its share of the shards, rank 0
writes the manifests) gives the same folder, byte for byte, as one process. Run by pytest;
the same file is the worker that `torch.distributed.run` starts."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SITES = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def write(folder: str) -> None:
    from mechscope.dictionary.cache import write_cache
    from tests.dictionary.test_train import contexts
    from tests.models.tiny import tiny_model

    write_cache(tiny_model("gpt2"), SITES, contexts(n=17), folder, shard_contexts=3, dtype="bfloat16")


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # two fresh interpreters importing torch and transformers: ~30 s on a busy 2-core machine
def test_a_two_rank_cache_equals_a_one_rank_cache_byte_for_byte(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    done = subprocess.run(
        [*cmd, str(tmp_path / "two")], check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    write(str(tmp_path / "one"))
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert sorted(one) == sorted(two) and len([n for n in one if "shard-" in n]) == 2 * 6
    assert all(one[name] == two[name] for name in one)
    assert not (tmp_path / "two" / "progress.json").exists()


def main(folder: str) -> None:
    import torch
    import torch.distributed as dist

    from mechscope.distributed import init_distributed

    torch.set_num_threads(1)
    rank, world = init_distributed()
    assert world == 2, world
    try:
        write(folder)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
