"""One writer per output folder: a second job into a folder that a running job holds is
refused in one line naming the holder; a kill -9 frees the folder at once (no stale lock);
taking the lock removes the temporary files that killed writers left, and nothing else."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import mechscope as ms
from mechscope.cli import main
from mechscope.io import LOCK_FILE, folder_lock

ROOT = Path(__file__).resolve().parents[2]
SITE = "blocks.1.hook_resid_post"
HOLD = (
    "import sys, time\nfrom mechscope.io import folder_lock\nwith folder_lock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n    time.sleep(600)\n"
)


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT, text=True
    )


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/out (killed with -9 at the end)."""
    proc = _start(["-c", HOLD, str(tmp_path / "out")])
    assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.lens.helpers import save_worded

    tmp = tmp_path_factory.mktemp("lock_inputs")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text(
        "\n".join(json.dumps({"text": f"line {i}: the quick brown fox jumps over the lazy dog"}) for i in range(60))
    )
    return str(save_worded(tmp / "model")), str(corpus)


def _refused(argv, capsys, folder: Path, pid: int) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"mechscope: error: {folder} is being written by process {pid} on ")
    assert " since 20" in line and line.endswith("; wait for it or choose another --out")


def test_a_second_writer_is_refused_and_a_kill_9_frees_the_folder(tmp_path, holder):
    out = tmp_path / "out"
    with (
        pytest.raises(ms.MechscopeError, match=f"is being written by process {holder.pid} on .* since ") as err,
        folder_lock(out),
    ):
        pass
    assert "\n" not in str(err.value)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with folder_lock(out):  # no stale lock: the kernel dropped it with the process
        assert (out / LOCK_FILE).read_text().startswith(f"process {os.getpid()} on ")
    assert (out / LOCK_FILE).read_text() == ""  # released: names nobody
    with folder_lock(out):  # and it can be taken again
        pass


def test_taking_the_lock_removes_only_io_temp_files(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "other").mkdir()
    (out / "other" / LOCK_FILE).touch()  # a folder with a lock of its own is that job's business
    orphans = [
        Path(tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")[1])  # as io names its temp files
        for d, name in ((out, "state.json"), (out / "checkpoint", "step-0000004.safetensors"))
    ]
    keep = [
        out / "notes.tmp",
        out / ".keep.tmp",
        out / ".cfg.json.ABCDEFGH.tmp",
        out / "cfg.json",
        out / "other" / ".state.json.abcd1234.tmp",
    ]
    for path in keep:
        path.write_text("x")
    with folder_lock(out):
        assert not any(p.exists() for p in orphans)
        assert all(p.exists() for p in keep)


def test_every_long_job_refuses_a_folder_that_another_job_writes(tmp_path, holder, inputs, capsys):
    model, corpus = inputs
    out = tmp_path / "out"
    data = ["--data", corpus, "--ctx", "16", "--no-progress"]
    small = ["--total-tokens", "64", "--batch-tokens", "32"]
    jobs = [
        ["sae", "cache", model, "--site", SITE, "--out", str(out), *data],
        ["sae", "train", model, "--site", SITE, "--out", str(out), "--width", "16", "--k", "2", *small, *data],
        ["lens", "train", model, "--out", str(out), "--steps", "2", "--batch", "4", *data],
        ["transcoder", "train", model, "--layer", "1", "--out", str(out), "--width", "16", "--k", "2", *small, *data],
        [
            "crosscoder",
            "train",
            model,
            "--site",
            "blocks.0.hook_resid_post",
            "--site",
            SITE,
            "--out",
            str(out),
            "--width",
            "16",
            *small,
            *data,
        ],
        ["zoo", "train", "superposition", "--out", str(out)],
    ]
    for argv in jobs:
        _refused(argv, capsys, out, holder.pid)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # none of them wrote anything


@pytest.mark.slow  # a second interpreter training until it is killed: ~30 s on a busy 2-core machine
def test_two_sae_trainings_into_one_out(tmp_path, inputs, capsys):
    """A running `sae train` holds --out: a second one (another width) is refused; after a
    kill -9 of the first, the folder is free and its checkpoint names its own run."""
    model, corpus = inputs
    out = tmp_path / "sae"
    common = [
        "sae",
        "train",
        model,
        "--site",
        SITE,
        "--out",
        str(out),
        "--k",
        "2",
        "--batch-tokens",
        "32",
        "--checkpoint-every",
        "1",
        "--data",
        corpus,
        "--ctx",
        "16",
        "--no-progress",
        "--eval-contexts",
        "0",
    ]
    first = _start(["-m", "mechscope", *common, "--width", "16", "--total-tokens", str(32 * 100_000)])
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint" / "state.json").exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.2)
        _refused([*common, "--width", "32", "--total-tokens", "64"], capsys, out, first.pid)
    finally:
        first.kill()
        first.wait()
    # the folder is free at once (the lock went with the process); its checkpoint is the other run's
    assert main([*common, "--width", "32", "--total-tokens", "64"]) == 2
    err = capsys.readouterr().err
    assert "belongs to another run (" in err and "coders[0].d_sae was 16, now 32" in err


def _ddp_lock_worker(rank: int, store: str, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        outcome = []
        for name in ("busy", "free"):
            try:
                with folder_lock(f"{folder}/{name}", rank=rank, world=2):
                    outcome.append("locked")
            except ms.MechscopeError as err:
                outcome.append(str(err))
        Path(folder, f"rank{rank}.json").write_text(json.dumps(outcome))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two fresh interpreters importing torch: ~30 s on a busy 2-core machine
def test_under_ddp_every_rank_learns_that_rank_0_was_refused(tmp_path):
    import torch.multiprocessing

    proc = _start(["-c", HOLD, str(tmp_path / "busy")])
    try:
        assert proc.stdout.readline().strip() == "locked", proc.stderr.read()
        torch.multiprocessing.spawn(_ddp_lock_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    finally:
        proc.kill()
        proc.wait()
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero[0].startswith(f"{tmp_path / 'busy'} is being written by process {proc.pid} on ")
    assert one[0].startswith(f"{tmp_path / 'busy'} is being written by another job (rank 0 could not lock it)")
    assert zero[1] == one[1] == "locked"
