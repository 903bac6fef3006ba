"""Devices, precision and the single-process behaviour of the torchrun helpers (no launch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts

from modelsoup import distributed
from modelsoup.cli.main import main
from modelsoup.errors import ModelSoupError
from modelsoup.evaluation.evaluator import Evaluator
from modelsoup.tasks.toy import make_task

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


@pytest.mark.parametrize("block", [1, 2, 3, 32])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_range_covers_every_index_once_in_whole_blocks(world: int, block: int) -> None:
    for n in [0, 1, 2, 3, 5, 7, 31, 32, 33, 64, 65, 100, 301]:
        shards = [distributed.shard_range(n, r, world, block=block) for r in range(world)]
        assert [i for s in shards for i in s] == list(range(n))  # in order, no gaps, no repeats
        for s in shards:
            if len(s):
                assert s.start % block == 0  # a rank's batches are batches of a 1-process pass
        sizes = [-(-len(s) // block) for s in shards]  # blocks per rank differ by at most one
        assert max(sizes) - min(sizes) <= 1


def test_shard_range_default_is_the_even_split_by_example() -> None:
    assert [list(distributed.shard_range(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [len(distributed.shard_range(301, r, 2, block=32)) for r in range(2)] == [160, 141]


def test_helpers_are_the_identity_outside_torchrun() -> None:
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    rows = torch.arange(6.0).view(3, 2)
    assert distributed.gather_rows(rows, 3, block=2) is rows
    assert torch.equal(distributed.all_reduce_sum(torch.ones(2)), torch.ones(2))
    assert distributed.all_reduce_max(7) == 7
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.init("cpu") == torch.device("cpu")


@no_cuda
def test_cuda_without_a_gpu_is_refused_and_auto_falls_back_to_cpu() -> None:
    with pytest.raises(ModelSoupError, match="no CUDA device"):
        distributed.resolve_device("cuda")
    assert distributed.resolve_device("auto") == torch.device("cpu")
    assert Evaluator(make_task(), device="auto", progress=False).device == torch.device("cpu")


def test_bf16_is_gpu_only_with_a_clear_error() -> None:
    with pytest.raises(ModelSoupError, match="bf16 is for GPU evaluation"):
        Evaluator(make_task(), device="cpu", precision="bf16")
    with pytest.raises(ModelSoupError, match="unknown precision 'fp8'"):
        Evaluator(make_task(), device="cpu", precision="fp8")


def test_cli_refuses_bf16_on_cpu(
    write_checkpoints, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    paths = write_checkpoints(toy_state_dicts(2))
    argv = ["evaluate", *map(str, paths), "--task", "toy", "-o", str(tmp_path / "run")]
    assert main([*argv, "--device", "cpu", "--precision", "bf16"]) == 1
    assert "bf16 is for GPU evaluation" in capsys.readouterr().err
    assert not (tmp_path / "run" / "evaluation.json").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate"],
        ["compare"],
        ["cook", "greedy"],
        ["cook", "learned"],
        ["cook", "uniform"],
        ["sweep"],
        ["demo"],
        ["analyze"],
    ],
)
def test_every_command_that_runs_models_takes_device(
    command: list[str], capsys: pytest.CaptureFixture
) -> None:
    assert main([*command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "--device [auto|cpu|cuda]" in text
    evaluates = command[0] in ("evaluate", "compare") or command[:2] == ["cook", "greedy"]
    if evaluates:
        assert "--precision [fp32|bf16]" in text


def test_rank_zero_only_commands_return_at_once_on_other_ranks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    missing = str(tmp_path / "no-such-run")
    assert main(["analyze", missing]) == 0  # rank 1 does nothing, so no error either
    assert "runs on rank 0 only" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["modelsoup", "modelsoup.cli.main"])
def test_python_dash_m_runs_the_cli(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "recipes"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "greedy" in done.stdout and "learned" in done.stdout


@needs_cuda
def test_bf16_on_gpu_is_cached_apart_and_predicts_like_fp32(tmp_path: Path) -> None:
    from modelsoup.tasks.toy import ToyMLP

    task = make_task()
    torch.manual_seed(0)
    sd = ToyMLP().state_dict()
    fp32 = Evaluator(task, cache_dir=tmp_path, device="cuda", progress=False)
    bf16 = Evaluator(task, cache_dir=tmp_path, device="cuda", progress=False, precision="bf16")
    assert fp32.fingerprint("test") != bf16.fingerprint("test")
    a, b = fp32.logits(("m", sd), "test"), bf16.logits(("m", sd), "test")
    assert bf16.stats.forward_examples == len(task.split("test"))  # not read from fp32's rows
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.95
    assert not torch.equal(a, b)
