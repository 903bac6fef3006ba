"""Crash-safe runs: SIGKILL a command at a named point, rerun it, get bitwise the same result.

Each scenario runs the real command line (``python -m modelsoup ...``) in a subprocess with
``MODELSOUP_TEST_KILL_AFTER=<event>:<n>``, so that :func:`modelsoup.journal.kill_point` SIGKILLs
it at that point. The test then checks that nothing at the output looks finished, reruns the same
command with the same cache, and compares with an uninterrupted run that had a fresh cache of its
own: the same weight bytes and digests, the same manifests (less the creation time and the fit's
wall-clock timings), the same evaluation files byte for byte, and no journal left behind.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import modelsoup
import modelsoup.journal as journal_module
from modelsoup.evaluation.evaluator import Evaluator
from modelsoup.journal import (
    KILL_ENV,
    Journal,
    kill_point,
    partial_prefix,
    remove_stale_partials,
)
from modelsoup.tasks.toy import ToyMLP, make_task

SIGKILLED = -9
GREEDY = ["cook", "greedy", "--task", "toy"]
LEARNED = ["cook", "learned", "--task", "toy", "--by-layer", "--epochs", "2"]
LEARNED += ["--fit-batch-size", "64"]  # 7 steps per epoch on the 400 held-out examples
SWEEP = ["sweep", "--task", "toy", "--trials", "3", "--lr", "1e-3,1e-2", "--epochs", "1,2"]
SWEEP += ["--max-steps", "6", "--batch-size", "64", "--probe-examples", "256"]
EVALUATE = ["evaluate", "--task", "toy"]
#: manifest fields that differ between identical runs: the time, and the fit's timings
TIMES = ("created", "seconds_per_epoch", "epoch_seconds", "wall_time_s")


# ----------------------------------------------------------------------------------- helpers


def train_ingredients(folder: Path) -> list[Path]:
    """Five short fine-tunes of a ToyMLP from one init. On the toy task's held-out split they
    score 56% to 95%, and greedy takes ft4, rejects ft3 and ft2, accepts ft1, rejects ft0."""
    task = make_task(n_train=256, n_eval=8)
    x, y = task.splits["train"].examples, task.splits["train"].labels

    def fit(model: nn.Module, lr: float, steps: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(y), (16,), generator=g)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    torch.manual_seed(0)
    init = ToyMLP()
    fit(init, 0.02, 3, 0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, lr in enumerate([0.02, 0.05, 0.1, 0.2, 0.8]):
        model = ToyMLP()
        model.load_state_dict(init.state_dict())
        fit(model, lr, 5, seed=i + 1)
        paths.append(folder / f"ft{i}.safetensors")
        save_file({n: t.contiguous() for n, t in model.state_dict().items()}, str(paths[-1]))
    return paths


def _env(cache: Path, kill: str | None) -> dict[str, str]:
    """The environment of a command run: its own cache, offline, and the kill hook if any."""
    env = {**os.environ, "MODELSOUP_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop(KILL_ENV, None)
    if kill is not None:
        env[KILL_ENV] = kill
    return env


def modelsoup_cli(
    args: list[str], cache: Path, *, kill: str | None = None, quiet: bool = True
) -> subprocess.CompletedProcess:
    """Run ``python -m modelsoup ARGS`` with its own cache; ``kill`` is ``<event>:<n>``."""
    argv = [sys.executable, "-m", "modelsoup", *(["-q"] if quiet else []), *map(str, args)]
    proc = subprocess.run(argv, env=_env(cache, kill), capture_output=True, text=True, timeout=300)
    if kill is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode == SIGKILLED, f"not killed at {kill}:\n{proc.stderr}"
    return proc


def journals(cache: Path) -> list[Path]:
    return sorted((cache / "journals").glob("*/state.pt"))


def manifest(out: Path) -> dict:
    data = json.loads((out / "soup.json").read_text())
    for key in TIMES:
        data.pop(key, None)
        data["info"].pop(key, None)
    return data


def assert_same_soup(out: Path, ref: Path, **options: object) -> None:
    """Bitwise the same weights, digest, trajectory and manifest (less the times); ``options``
    are the recipe options the run at ``out`` was given beyond the reference's."""
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    got, want = manifest(out), manifest(ref)
    want["options"].update(options)
    assert got["digest"] == want["digest"]
    assert got == want
    if (ref / "trajectory.json").exists():
        assert (out / "trajectory.json").read_bytes() == (ref / "trajectory.json").read_bytes()


def sidecar(path: Path) -> dict:
    data = json.loads(path.read_text())
    for key in TIMES:
        data.pop(key, None)
    return data


@pytest.fixture(scope="module")
def ingredients(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ingredients")
    train_ingredients(folder)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, list], Path]:
    """``reference(name, args)``: the output of an uninterrupted run (fresh cache), made once."""
    made: dict[str, Path] = {}

    def run(name: str, args: list) -> Path:
        if name not in made:
            root = tmp_path_factory.mktemp(f"reference-{name}")
            modelsoup_cli([*args, "-o", root / "out"], root / "cache")
            made[name] = root / "out"
        return made[name]

    return run


# ----------------------------------------------------------------------------- cook greedy


@pytest.mark.parametrize(
    ("kill", "resumed_after"),
    [
        # after the first candidate (ft3, rejected) was journaled
        pytest.param("greedy-step:2", 2, marks=pytest.mark.slow),
        ("greedy-step:4", 4),  # after ft1 was accepted: the running sum must be rebuilt
        # inside the forward passes of the first candidate
        pytest.param("evaluate-batch:22", 1, marks=pytest.mark.slow),
    ],
)
def test_cook_greedy_resumes_after_sigkill(
    kill: str, resumed_after: int, ingredients: Path, reference, tmp_path: Path
) -> None:
    ref = reference("greedy", [*GREEDY, ingredients])
    assert manifest(ref)["info"]["chosen"] == ["ft4", "ft1"]  # a real trajectory
    out, cache = tmp_path / "soup", tmp_path / "cache"
    args = [*GREEDY, ingredients, "-o", out]
    modelsoup_cli(args, cache, kill=kill)
    assert not out.exists() and list(tmp_path.iterdir()) == [cache]  # nothing beside OUT
    assert len(journals(cache)) == 1
    rerun = modelsoup_cli(args, cache, quiet=False)
    assert f"resuming from the journal after {resumed_after} of 5 ingredients" in rerun.stderr
    assert "held-out accuracy" not in rerun.stderr  # the individual scores were not redone
    assert_same_soup(out, ref)
    assert journals(cache) == []  # removed once the soup was written


def torchrun_cli(
    args: list[str], cache: Path, *, kill: str | None = None
) -> subprocess.CompletedProcess:
    """``python -m modelsoup ARGS`` on two CPU ranks under ``torchrun --standalone``; ``kill``
    (``<event>:<n>``) reaches both ranks, which die together at that point."""
    env = {**_env(cache, kill), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    argv += ["-m", "modelsoup", *map(str, args)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.distributed
def test_cook_greedy_under_torchrun_resumes_after_sigkill(
    ingredients: Path, reference, tmp_path: Path
) -> None:
    ref = reference("greedy", [*GREEDY, ingredients])
    out, cache = tmp_path / "soup", tmp_path / "cache"
    args = [*GREEDY, ingredients, "-o", out]
    killed = torchrun_cli(args, cache, kill="greedy-step:4")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not out.exists() and list(tmp_path.iterdir()) == [cache]
    assert len(journals(cache)) == 1  # written by rank 0 alone
    rerun = torchrun_cli(args, cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # torchrun may stop rank 0 (which keeps the journal) one step before its own kill point
    assert re.search(r"resuming from the journal after [34] of 5 ingredients", rerun.stderr)
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert manifest(out)["info"]["chosen"] == manifest(ref)["info"]["chosen"] == ["ft4", "ft1"]
    assert journals(cache) == []


def test_cook_killed_while_writing_leaves_no_soup(
    ingredients: Path, reference, tmp_path: Path
) -> None:
    ref = reference("greedy", [*GREEDY, ingredients])
    out, cache = tmp_path / "soup", tmp_path / "cache"
    args = [*GREEDY, ingredients, "-o", out]
    modelsoup_cli(args, cache, kill="write-weights:1")
    assert not out.exists()
    (partial,) = [p for p in tmp_path.iterdir() if p != cache]
    assert re.fullmatch(r"\.soup\.\d+@[\w-]+\.\w+\.partial", partial.name), partial.name
    assert (partial / "model.safetensors").is_file()
    assert not (partial / "soup.json").exists()  # the manifest comes last
    assert len(journals(cache)) == 1  # the decision is kept: the rerun only writes
    rerun = modelsoup_cli(args, cache, quiet=False)
    assert "resuming from the journal after 5 of 5 ingredients" in rerun.stderr
    assert_same_soup(out, ref)
    assert sorted(tmp_path.iterdir()) == [cache, out]  # the killed write's leftovers removed
    assert journals(cache) == []


# ---------------------------------------------------------------------------- cook learned


@pytest.mark.parametrize(
    ("kill", "flags", "message"),
    [
        # saved every 3 steps: killed after step 5, resumed from step 3, steps 4-5 redone
        (
            "learned-step:5",
            ["--journal-every", "3"],
            "resuming from the journal at step 4 (epoch 1, batch 4)",
        ),
        pytest.param(
            "learned-step:5",
            [],
            "resuming from the journal at step 6 (epoch 1, batch 6)",
            marks=pytest.mark.slow,
        ),
        pytest.param(  # at the end of the first epoch
            "learned-step:7",
            [],
            "resuming from the journal at step 8 (epoch 2, batch 1)",
            marks=pytest.mark.slow,
        ),
        pytest.param(  # the fit is done, the soup not yet written
            "learned-fit:1",
            [],
            "the fit had finished; its result comes from the journal",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_cook_learned_resumes_after_sigkill(
    kill: str, flags: list[str], message: str, ingredients: Path, reference, tmp_path: Path
) -> None:
    ref = reference("learned", [*LEARNED, ingredients])
    assert len(manifest(ref)["info"]["loss_curve"]) == 14
    out, cache = tmp_path / "soup", tmp_path / "cache"
    args = [*LEARNED, *flags, ingredients, "-o", out]
    modelsoup_cli(args, cache, kill=kill)
    assert not out.exists() and list(tmp_path.iterdir()) == [cache]
    assert len(journals(cache)) == 1
    rerun = modelsoup_cli(args, cache, quiet=False)
    assert message in rerun.stderr
    # --journal-every is recorded with the options but is not part of the journal's key
    assert_same_soup(out, ref, **({"journal_every": 3} if flags else {}))
    assert journals(cache) == []


@pytest.mark.distributed
def test_cook_learned_under_torchrun_resumes_after_sigkill(
    ingredients: Path, tmp_path: Path
) -> None:
    """Both ranks killed after step 5 (journal every 3 steps): the rerun resumes at step 4 and
    ends bitwise where an uninterrupted 2-rank run ends."""
    ref = tmp_path / "ref"
    done = torchrun_cli([*LEARNED, ingredients, "-o", ref / "soup"], ref / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    out, cache = tmp_path / "run" / "soup", tmp_path / "run" / "cache"
    args = [*LEARNED, "--journal-every", "3", ingredients, "-o", out]
    killed = torchrun_cli(args, cache, kill="learned-step:5")
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not out.exists() and len(journals(cache)) == 1
    rerun = torchrun_cli(args, cache)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from the journal at step 4" in rerun.stderr
    assert_same_soup(out, ref / "soup", journal_every=3)
    assert journals(cache) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", ["greedy", "learned"])
def test_cook_survives_repeated_kills_at_random_times(
    name: str, ingredients: Path, reference, tmp_path: Path
) -> None:
    """SIGKILL after a random delay, again and again (during start-up, the fit, the forward
    passes or the write), until a run finishes: the soup is still bitwise the reference."""
    args = {"greedy": GREEDY, "learned": LEARNED}[name]
    ref = reference(name, [*args, ingredients])
    out, cache = tmp_path / "soup", tmp_path / "cache"
    env = _env(cache, None)
    argv = [sys.executable, "-m", "modelsoup", "-q", *map(str, [*args, ingredients, "-o", out])]
    rng = random.Random(name)
    kills = 0
    for attempt in range(40):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=rng.uniform(1.0, 2.0 + 0.25 * attempt))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            kills += 1
            if not out.exists():
                continue  # the soup is not there yet: run again
            # Killed after the soup was renamed into place (while removing the journal or
            # exiting): it is complete, and a rerun would refuse the existing output.
            assert (out / "soup.json").is_file()
        else:
            assert proc.returncode == 0, err
            assert journals(cache) == []
        break
    assert kills >= 1
    assert_same_soup(out, ref)


# ------------------------------------------------------------------------------------ sweep


@pytest.mark.parametrize(
    ("kill", "done", "sidecars"),
    [
        ("sweep-step:9", [0], [0]),  # in the middle of trial 1 (trial 0 has 6 steps)
        # trial 1's sidecar written, its weights not yet
        pytest.param("sweep-sidecar:3", [0], [0, 1], marks=pytest.mark.slow),
        # the init's sidecar written, its weights not yet
        pytest.param("sweep-sidecar:1", [], [], marks=pytest.mark.slow),
    ],
)
def test_sweep_resumes_after_sigkill(
    kill: str, done: list[int], sidecars: list[int], reference, tmp_path: Path
) -> None:
    ref = reference("sweep", SWEEP)
    run, cache = tmp_path / "run", tmp_path / "cache"
    modelsoup_cli([*SWEEP, "-o", run], cache, kill=kill)
    weights = sorted(p.name for p in (run / "trials").glob("*.safetensors"))
    assert weights == [f"trial_{i:03d}.safetensors" for i in done]  # only finished trials
    assert sorted(p.name for p in (run / "trials").glob("*.json")) == [
        f"trial_{i:03d}.json" for i in sidecars
    ]
    assert (run / "init.safetensors").exists() == (kill != "sweep-sidecar:1")
    # A temporary file of a writer that was killed (its process is gone) is removed on rerun.
    stale = run / "trials" / f"{partial_prefix('trial_002.safetensors')}deadbeef.partial"
    stale = stale.with_name(stale.name.replace(f".{os.getpid()}@", f".{_dead_pid()}@"))
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"half a trial")
    modelsoup_cli([*SWEEP, "-o", run], cache)
    assert not stale.exists()
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*") if p.is_file())
    for name in files:
        if name.endswith(".safetensors"):
            assert (run / name).read_bytes() == (ref / name).read_bytes(), name
        else:
            assert sidecar(run / name) == sidecar(ref / name), name


def test_sweep_killed_while_claiming_its_run_dir_resumes(tmp_path: Path) -> None:
    """Killed between creating RUN_DIR and renaming sweep.json into place: RUN_DIR holds only a
    temporary file; the rerun must not refuse it as a non-empty foreign directory."""
    from modelsoup.demo.sweep import SweepOptions, run_sweep

    run = tmp_path / "run"
    run.mkdir()
    stale = run / f".sweep.json.{_dead_pid()}@{journal_module._host()}.abcd1234.partial"
    stale.write_text('{"key": "half')
    options = SweepOptions(trials=1, max_steps=2, batch_size=64, linear_probe=False)
    result = run_sweep(make_task(n_train=128, n_eval=64), run, options, progress=False)
    assert result.trained == [0] and not stale.exists()
    assert (run / "sweep.json").is_file()


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize(
    ("kill", "cached"),
    [
        # 5 ingredients x 5 splits x 4 batches: killed in the 13th (ingredient, split)
        ("evaluate-batch:50", 12),
        # every split done, evaluation.csv written, the JSON not
        pytest.param("evaluation-csv:1", 25, marks=pytest.mark.slow),
    ],
)
def test_evaluate_resumes_after_sigkill(
    kill: str, cached: int, ingredients: Path, reference, tmp_path: Path
) -> None:
    ref = reference("evaluate", [*EVALUATE, ingredients])
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = [*EVALUATE, ingredients, "-o", run]
    modelsoup_cli(args, cache, kill=kill)
    assert not (run / "evaluation.json").exists()
    assert (run / "evaluation.csv").exists() == (kill == "evaluation-csv:1")
    entries = sorted((cache / "predictions").glob("*/*.safetensors"))
    assert len(entries) == cached
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries}
    modelsoup_cli(args, cache)  # no --overwrite needed: a CSV without the JSON is a leftover
    for name in ("evaluation.json", "evaluation.csv"):
        assert (run / name).read_bytes() == (ref / name).read_bytes(), name
    # The finished (ingredient, split) entries were read, not recomputed and rewritten.
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in entries} == stamps
    assert len(list((cache / "predictions").glob("*/*.safetensors"))) == 25


# ------------------------------------------------------------------------ the API and journal


def test_learned_api_resumes_an_interrupted_fit(
    ingredients: Path, monkeypatch, tmp_path: Path
) -> None:
    """In process: an exception at step 5 stands in for the crash; the second call resumes."""
    import modelsoup.recipes.learned as learned

    ings = modelsoup.load_ingredients([ingredients])
    task = make_task()

    def cook(**kw) -> modelsoup.Soup:
        ev = Evaluator(task, progress=False)
        return modelsoup.cook("learned", ings, evaluator=ev, epochs=2, fit_batch_size=64, **kw)

    clean = cook()
    steps = {"n": 0}

    def crash(event: str) -> None:
        if event == "learned-step":
            steps["n"] += 1
            if steps["n"] == 5:
                raise KeyboardInterrupt

    monkeypatch.setattr(learned, "kill_point", crash)
    with pytest.raises(KeyboardInterrupt):
        cook(journal=True, journal_every=2)
    log: list[str] = []
    soup = modelsoup.cook(
        "learned",
        ings,
        evaluator=Evaluator(task, progress=False),
        epochs=2,
        fit_batch_size=64,
        journal=True,
        journal_every=2,
        log=log.append,
    )
    assert "learned soup: resuming from the journal at step 5 (epoch 1, batch 5)" in log
    assert soup.mixture == clean.mixture  # bitwise the same weights, per group and tensor
    assert soup.info["loss_curve"] == clean.info["loss_curve"]
    assert soup.info["beta"] == clean.info["beta"]
    assert soup.journal is not None and soup.journal.path.is_file()
    soup.save(tmp_path / "soup")
    assert not soup.journal.dir.exists()  # removed once the soup is written
    assert cook().journal is None  # no journal unless asked for


def test_journal_roundtrip_and_refusals(tmp_path: Path, caplog) -> None:
    journal = Journal({"recipe": "x", "n": 1}, root=tmp_path)
    assert journal.load() is None
    state = {"step": 3, "alpha": torch.tensor([0.25, 0.75], dtype=torch.float64), "x": [1.5]}
    journal.save(state)
    got = journal.load()
    assert got is not None and got["step"] == 3 and got["x"] == [1.5]
    assert torch.equal(got["alpha"], state["alpha"])
    assert [p.name for p in journal.dir.iterdir()] == ["state.pt"]  # no temporary files left
    # Another run's journal under the same key (a collision or an edit) is ignored.
    other = Journal({"recipe": "x", "n": 2}, root=tmp_path)
    shutil.copytree(journal.dir, other.dir)
    assert other.load() is None and "written for another run" in caplog.text
    # A torn file is ignored: the run starts over.
    journal.path.write_bytes(journal.path.read_bytes()[:50])
    assert journal.load() is None and "unreadable journal" in caplog.text
    journal.remove()
    assert not journal.dir.exists()
    journal.remove()  # idempotent


def test_unwritable_journal_costs_only_a_warning(tmp_path: Path, caplog) -> None:
    (tmp_path / "file").write_text("not a directory")
    journal = Journal({"a": 1}, root=tmp_path / "file")
    journal.save({"step": 1})
    journal.save({"step": 2})
    assert journal.load() is None
    assert caplog.text.count("could not write the journal") == 1


def test_stale_partials_of_dead_writers_are_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    mine = tmp_path / f"{partial_prefix('soup')}abcd1234.partial"
    gone = tmp_path / mine.name.replace(f".{os.getpid()}@", f".{dead}@")
    elsewhere = tmp_path / f".soup.{dead}@other-host.abcd1234.partial"
    other_output = tmp_path / gone.name.replace(".soup.", ".soup2.")
    unnamed = tmp_path / ".soup.x.partial"  # not ours: no process named
    for p in (mine, gone, elsewhere, other_output):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"half")
    unnamed.write_bytes(b"?")
    assert remove_stale_partials(tmp_path, "soup") == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, elsewhere, other_output, unnamed)
    )
    assert remove_stale_partials(tmp_path) == [other_output]  # any output


def test_kill_point_is_inert_unless_named(monkeypatch) -> None:
    monkeypatch.setattr(journal_module, "_seen", {})
    monkeypatch.delenv(KILL_ENV, raising=False)
    kill_point("greedy-step")
    for spec in ("greedy-step:x", "learned-step:1", "greedy-step", ":1", "greedy-step:2"):
        monkeypatch.setenv(KILL_ENV, spec)
        kill_point("greedy-step")  # this process survives: wrong event, bad count, or n=2
