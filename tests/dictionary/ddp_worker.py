"""Run by test_train.py under `python -m torch.distributed.run --nproc_per_node 2`: trains the
same tiny dictionary from a stream and from a cache on two gloo ranks; each rank saves its copy."""

import sys

import torch

from mechscope.dictionary.source import SourceConfig
from mechscope.dictionary.train import train, train_from_cache
from mechscope.distributed import init_distributed
from tests.dictionary.test_train import CODER, SITE, contexts, small
from tests.models.tiny import tiny_model


def main(folder: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world = init_distributed()
    assert world == 2, world
    try:
        src = SourceConfig(model_batch=5, buffer_contexts=6)
        stream = train(
            tiny_model("llama"), SITE, CODER, small(dead_window=10**9), data=contexts(), source=src, progress=False
        )
        stream.save(f"{folder}/stream-rank{rank}")
        cache = train_from_cache(f"{folder}/acts", CODER, small(dead_window=10**9), progress=False)
        cache.save(f"{folder}/cache-rank{rank}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
