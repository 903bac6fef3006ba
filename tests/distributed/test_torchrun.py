"""``torchrun --nproc_per_node 2`` (gloo, CPU) against a single process, on the toy task.

One sweep is made in this process (the ingredients, plus a deliberately bad one so that greedy
early rejection stops a candidate). Two launches follow, each overlapped with its in-process
reference: ``worker.py`` on 2 ranks (evaluation, greedy, learned, count_correct, a resumed sweep,
CLI commands through ``main``), and the real entry point ``-m modelsoup.cli.main compare``.
Split sizes (301, 157, 3, 129, 65; batch 32) divide neither by 2 nor by the batch size.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.distributed


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"dist_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load("worker")
odd_task = _load("odd_task")


@contextmanager
def one_thread() -> Iterator[None]:
    """The reference runs with one thread, as every torchrun rank does (OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def launch(args: list[str], env_cache: Path, nproc: int = 2) -> subprocess.Popen:
    """``torchrun --standalone`` (a free port) with ``nproc`` CPU ranks."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MODELSOUP_CACHE_DIR": str(env_cache),
        "HF_HUB_OFFLINE": "1",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={nproc}", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"torchrun timed out\n{err[-4000:]}")
    assert proc.returncode == 0, (
        f"torchrun failed ({proc.returncode})\n{out[-2000:]}\n{err[-6000:]}"
    )
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from modelsoup.demo.sweep import SweepOptions, run_sweep

    root = tmp_path_factory.mktemp("torchrun")
    with pytest.MonkeyPatch.context() as mp, one_thread():
        mp.setenv("MODELSOUP_CACHE_DIR", str(root / "ref-env-cache"))
        sweep = run_sweep(
            odd_task.make_task(), root / "sweep", SweepOptions(**worker.SWEEP), progress=False
        )
        ckpts = root / "ckpts"
        ckpts.mkdir()
        for p in sweep.trials:
            shutil.copy(p, ckpts / p.name)
        bad = load_file(sweep.trials[2])
        bad["head.weight"] = -bad["head.weight"]  # worse than chance: rejected early
        save_file(bad, ckpts / "zbad.safetensors")

        # the distributed sweep resumes a copy holding the init and trial 0, then makes a fresh
        # sweep of 3 trials
        resumed = root / "dist-sweep" / "resumed"
        (resumed / "trials").mkdir(parents=True)
        for name in ["sweep.json", "init.safetensors", "init.json"]:
            shutil.copy(root / "sweep" / name, resumed / name)
        for name in ["trial_000.safetensors", "trial_000.json"]:
            shutil.copy(root / "sweep" / "trials" / name, resumed / "trials" / name)

        dist_out, single_out = root / "dist", root / "single"
        dist_out.mkdir()
        single_out.mkdir()
        proc = launch(
            [str(HERE / "worker.py"), str(ckpts), str(dist_out), str(dist_out / "cache")]
            + ["--sweep-dir", str(resumed.parent), "--cli"],
            root / "dist-env-cache",
        )
        single = worker.run(str(ckpts), str(single_out), str(single_out / "cache"))
        finish(proc)

        compare_args = [str(ckpts), "--task", worker.TASK_REF, "--device", "cpu"]
        compare_args += ["--methods", "greedy_soup,learned_soup,ensemble,greedy_ensemble"]
        proc = launch(
            ["-m", "modelsoup.cli.main", "compare", *compare_args, "-o", str(root / "cmp-dist")],
            root / "cmp-dist-cache",
        )
        from modelsoup.cli.main import main

        mp.setenv("MODELSOUP_CACHE_DIR", str(root / "cmp-single-cache"))
        assert main(["-q", "compare", *compare_args, "-o", str(root / "cmp-single")]) == 0
        compare_stdout = finish(proc)

    ranks = [json.loads((dist_out / f"rank{r}.json").read_text()) for r in range(2)]
    return {
        "root": root,
        "ckpts": ckpts,
        "single": single,
        "ranks": ranks,
        "sweep": root / "sweep",
        "resumed": resumed,
        "compare_stdout": compare_stdout,
    }


def test_both_ranks_ran_in_one_group(runs: dict[str, Any]) -> None:
    assert [r["rank"] for r in runs["ranks"]] == [0, 1]
    assert all(r["world"] == 2 for r in runs["ranks"])
    assert runs["single"]["world"] == 1


def test_distributed_evaluation_equals_single_process_exactly(runs: dict[str, Any]) -> None:
    single = runs["single"]
    for rank in runs["ranks"]:
        assert rank["evaluation"] == single["evaluation"]  # every metric, bit for bit
        assert rank["logits"] == single["logits"]  # sha256 of every logits tensor
        assert rank["predictions"] == single["predictions"]
    table = single["evaluation"]["ingredients"]
    assert [row["name"] for row in table][-1] == "zbad"
    assert {row["metrics"]["heldout"]["n"] for row in table} == {301}
    assert {row["metrics"]["noisy"]["n"] for row in table} == {3}  # smaller than one batch


def test_only_rank_zero_writes_the_cache_and_it_equals_the_single_process_cache(
    runs: dict[str, Any],
) -> None:
    r0, r1 = runs["ranks"]
    assert r1["cache_saves"] == 0 and r0["cache_saves"] > 0
    single_root = runs["root"] / "single" / "cache"
    dist_root = runs["root"] / "dist" / "cache"
    single_files = {p.relative_to(single_root) for p in single_root.rglob("*.safetensors")}
    dist_files = {p.relative_to(dist_root) for p in dist_root.rglob("*.safetensors")}
    assert single_files == dist_files and len(single_files) > 30
    complete = 0
    for rel in single_files:
        a, b = load_file(single_root / rel), load_file(dist_root / rel)
        both = a["have"] & b["have"]
        assert torch.equal(a["logits"][both], b["logits"][both]), rel
        if bool(a["have"].all()):
            complete += 1
            assert torch.equal(a["have"], b["have"]) and torch.equal(a["logits"], b["logits"])
    assert complete > 25  # ingredients on every split, soups scored in full


def test_distributed_greedy_soup_selects_the_same_ingredients(runs: dict[str, Any]) -> None:
    single = runs["single"]
    for rank in runs["ranks"]:
        for name in ("greedy", "greedy_full", "greedy_strict"):
            assert rank[name]["chosen"] == single[name]["chosen"], name
            assert rank[name]["accepted"] == single[name]["accepted"], name
            assert rank[name]["heldout_score"] == single[name]["heldout_score"], name
            scored = [s for s in single[name]["scores"] if s is not None]
            assert [s for s in rank[name]["scores"] if s is not None] == scored, name
        assert rank["greedy_soup_test"] == single["greedy_soup_test"]
    # early rejection stopped the bad candidate on both sides, and the soups differ from "take
    # everything" and "take one"
    greedy = runs["ranks"][0]["greedy"]
    assert greedy["accepted"][-1] is False and greedy["evaluated"][-1] < 301
    assert single["greedy"]["evaluated"][-1] < 301
    assert greedy["chosen"] == ["trial_004", "trial_001"]  # neither all six nor one
    assert all(n == 301 for n in runs["ranks"][0]["greedy_full"]["evaluated"][1:])


def test_distributed_count_correct_agrees_and_completes_partial_entries(
    runs: dict[str, Any],
) -> None:
    single = runs["single"]["count_correct"]
    for rank in runs["ranks"]:
        got = rank["count_correct"]
        assert [g[0] for g in got] == [s[0] for s in single]  # reached or not: exact
        for g, s in zip(got, single):
            if s[0]:
                assert g[1:] == s[1:]  # reached: the full count over all 301 examples
            else:
                assert g[2] < 301  # stopped early
        assert rank["probe_logits"] == runs["single"]["probe_logits"]
    assert single[0][0] is False and single[-1][0] is True


def test_distributed_learned_soup_gives_the_same_alpha(runs: dict[str, Any]) -> None:
    single = runs["single"]
    for name in ("learned", "learned_streaming_by_layer"):
        ref = single[name]
        for rank in runs["ranks"]:
            got = rank[name]
            assert torch.allclose(
                torch.tensor(got["alpha"]), torch.tensor(ref["alpha"]), atol=1e-6, rtol=0
            ), name
            assert got["beta"] == pytest.approx(ref["beta"], abs=1e-6)
            assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5)
            assert got["heldout_loss"] == pytest.approx(ref["heldout_loss"], abs=1e-6)
        assert runs["ranks"][0][name] == runs["ranks"][1][name]  # identical on every rank
        assert max(ref["alpha"]) > 1.5 * min(ref["alpha"])  # the fit moved off uniform
    by_layer = single["learned_streaming_by_layer"]["alpha_by_group"]
    for group, alphas in by_layer.items():
        assert runs["ranks"][0]["learned_streaming_by_layer"]["alpha_by_group"][
            group
        ] == pytest.approx(alphas, abs=1e-6)


def _same_trials(single_dir: Path, dist_dir: Path, count: int) -> None:
    names = sorted(p.name for p in dist_dir.iterdir())  # no leftover temporary files
    assert names == sorted(
        f"trial_{i:03d}.{ext}" for i in range(count) for ext in ("json", "safetensors")
    )
    for i in range(count):
        a = json.loads((single_dir / f"trial_{i:03d}.json").read_text())
        b = json.loads((dist_dir / f"trial_{i:03d}.json").read_text())
        for key in ("hparams", "steps", "sha256", "bytes", "init_sha256", "sweep_key", "curve"):
            assert a[key] == b[key], (i, key)  # sha256: bitwise the same weights


def test_distributed_sweep_resumes_and_makes_the_same_trials(runs: dict[str, Any]) -> None:
    r0, r1 = (r["sweep"]["resumed"] for r in runs["ranks"])
    assert r0["trained"] == r1["trained"] == [1, 2, 3, 4]  # trial 0 was already there
    assert r0["trials"] == [f"trial_{i:03d}.safetensors" for i in range(5)]
    # the unfinished trials are dealt round-robin; each rank writes the trials it trained
    assert r0["written_here"] == ["trial_001.safetensors", "trial_003.safetensors"]
    assert r1["written_here"] == ["trial_002.safetensors", "trial_004.safetensors"]
    _same_trials(runs["sweep"] / "trials", runs["resumed"] / "trials", 5)


def test_fresh_distributed_sweep_rank_zero_writes_the_init(runs: dict[str, Any]) -> None:
    r0, r1 = (r["sweep"]["fresh"] for r in runs["ranks"])
    assert r0["trained"] == r1["trained"] == [0, 1, 2]
    assert r0["written_here"] == [
        "init.safetensors",
        "trial_000.safetensors",
        "trial_002.safetensors",
    ]
    assert r1["written_here"] == ["trial_001.safetensors"]
    fresh = runs["resumed"].parent / "fresh"
    single_init = json.loads((runs["sweep"] / "init.json").read_text())
    assert json.loads((fresh / "init.json").read_text())["sha256"] == single_init["sha256"]
    _same_trials(runs["sweep"] / "trials", fresh / "trials", 3)


def test_cli_under_torchrun_prints_and_writes_on_rank_zero_only(runs: dict[str, Any]) -> None:
    r0, r1 = (r["cli"] for r in runs["ranks"])
    assert {c["code"] for c in (*r0.values(), *r1.values())} == {0}
    assert r1["evaluate"]["stdout"] == "" and r1["greedy"]["stdout"] == ""
    assert r0["evaluate"]["stdout"].count("trial_003") == 1
    assert "greedy soup of" in r0["greedy"]["stdout"]
    written = json.loads((runs["root"] / "dist" / "cli-eval" / "evaluation.json").read_text())
    assert written == runs["single"]["evaluation"]
    soup = json.loads((runs["root"] / "dist" / "cli-greedy" / "soup.json").read_text())
    used = [i["name"] for i in soup["ingredients"] if i["weight"] > 0]
    assert sorted(used) == sorted(runs["single"]["greedy"]["chosen"])


def test_compare_via_python_m_under_torchrun_equals_single_process(runs: dict[str, Any]) -> None:
    out = runs["compare_stdout"]
    table_rows = [line for line in out.splitlines() if line.startswith("greedy_soup ")]
    assert len(table_rows) == 1 and "wrote" in out  # one table: rank 0's
    assert (runs["root"] / "cmp-dist" / "soups" / "greedy_soup" / "model.safetensors").is_file()
    dist = json.loads((runs["root"] / "cmp-dist" / "results.json").read_text())
    single = json.loads((runs["root"] / "cmp-single" / "results.json").read_text())
    assert dist["metadata"]["world_size"] == 2 and single["metadata"]["world_size"] == 1
    assert dist["methods"].keys() == single["methods"].keys()
    for name, row in single["methods"].items():
        got = dist["methods"][name]
        assert got["ingredients"] == row["ingredients"], name
        for column, metrics in row["metrics"].items():
            if name == "learned_soup":  # fitted to float tolerance, not bit for bit
                assert got["metrics"][column]["accuracy"] == metrics["accuracy"], column
                assert got["metrics"][column]["nll"] == pytest.approx(metrics["nll"], abs=1e-5)
            else:
                assert got["metrics"][column] == metrics, (name, column)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs (NCCL)")
def test_two_gpus_with_nccl_select_like_one_gpu(tmp_path: Path, runs: dict[str, Any]) -> None:
    out = tmp_path / "gpu"
    out.mkdir()
    proc = launch(
        [str(HERE / "worker.py"), str(runs["ckpts"]), str(out), str(out / "cache")]
        + ["--device", "cuda"],
        tmp_path / "env-cache",
    )
    finish(proc)
    single = worker.run(str(runs["ckpts"]), str(tmp_path), str(tmp_path / "c1"), device="cuda")
    for r in range(2):
        got = json.loads((out / f"rank{r}.json").read_text())
        assert got["predictions"] == single["predictions"]
        assert got["greedy"]["chosen"] == single["greedy"]["chosen"]
        assert got["learned"]["alpha"] == pytest.approx(single["learned"]["alpha"], abs=1e-5)


def test_the_process_group_is_destroyed_at_exit(tmp_path: Path) -> None:
    """gloo threads outliving the interpreter abort the process at exit (SIGABRT): init()
    registers destroy_process_group with atexit."""
    script = tmp_path / "exit_check.py"
    script.write_text(
        "import atexit, sys\n"
        "import torch\n"
        "import torch.distributed as dist\n"
        "from modelsoup import distributed\n"
        "distributed.init('cpu')\n"
        "t = torch.ones(1)\n"
        "distributed.all_reduce_sum(t)\n"
        "rank = distributed.rank()\n"
        "atexit._run_exitfuncs()\n"
        "with open(f'{sys.argv[1]}/rank{rank}.txt', 'w') as f:\n"
        "    f.write(f'sum {int(t)} initialized {dist.is_initialized()}')\n"
    )
    finish(launch([str(script), str(tmp_path)], tmp_path / "cache"), timeout=120)
    for rank in (0, 1):  # one file per rank: the ranks' stdout lines can interleave
        assert (tmp_path / f"rank{rank}.txt").read_text() == "sum 2 initialized False"
