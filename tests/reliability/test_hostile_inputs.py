"""Hostile and broken inputs (issue 2 "Bad input", issue 8 item 1), through the real CLI.

Every case must end with exit code 1 and a short ``error:`` naming the offending file, write
nothing, and leave every input byte-for-byte as it was (see ``assert_refused`` in hostile_helpers.py). Both
``modelsoup cook`` and ``modelsoup inspect`` are run on each input case.
"""

from __future__ import annotations

import json
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from factories import toy_state_dicts
from hostile_helpers import assert_refused, run_cli
from safetensors.torch import save_file

from modelsoup.recipes.base import _REGISTRY, Decision, Recipe, register


def _good(folder: Path, k: int = 2) -> list[Path]:
    """``k`` valid ToyMLP safetensors ingredients m0..m{k-1} in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sd in enumerate(toy_state_dicts(k)):
        paths.append(folder / f"m{i}.safetensors")
        save_file(sd, paths[-1])
    return paths


def _raw_safetensors(path: Path, header: object, data: bytes = b"", n: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if n is None else n) + raw + data)
    return path


def _f32(name: str, begin: int, count: int) -> dict:
    return {name: {"dtype": "F32", "shape": [count], "data_offsets": [begin, begin + 4 * count]}}


class RunsCode:
    """Unpickling this runs ``exec``, which would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('the pickle ran code')",))


@dataclass
class Optimizer:
    """A non-tensor object, as training scripts pickle next to the weights."""

    lr: float = 0.1


# --- the cases: each builds its inputs in ``inp`` and returns (paths, words the error must name)


def truncated_in_data(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    bad = inp / "cut.safetensors"
    bad.write_bytes(good[0].read_bytes()[:-100])
    return [good[0], bad], ["cut.safetensors", "truncated"]


def truncated_in_header(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    bad = inp / "cut.safetensors"
    bad.write_bytes(good[0].read_bytes()[:40])
    return [good[0], bad], ["cut.safetensors", "header"]


def shorter_than_length_prefix(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "tiny.safetensors").write_bytes(b"\x01\x02\x03")
    return [good[0], inp / "tiny.safetensors"], ["tiny.safetensors", "too short"]


def offsets_past_end(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    _raw_safetensors(inp / "past.safetensors", _f32("x", 0, 100), b"\0" * 16)
    return [good[0], inp / "past.safetensors"], ["past.safetensors", "past the end"]


def overlapping_offsets(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    header = {**_f32("a", 0, 4), **_f32("b", 8, 4)}
    _raw_safetensors(inp / "overlap.safetensors", header, b"\0" * 24)
    return [good[0], inp / "overlap.safetensors"], ["overlap.safetensors", "overlap"]


def gap_between_tensors(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    header = {**_f32("a", 0, 4), **_f32("b", 24, 4)}
    _raw_safetensors(inp / "gap.safetensors", header, b"\0" * 40)
    return [good[0], inp / "gap.safetensors"], ["gap.safetensors", "gap"]


def offsets_disagree_with_shape(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    header = {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}
    _raw_safetensors(inp / "shape.safetensors", header, b"\0" * 12)
    return [good[0], inp / "shape.safetensors"], ["shape.safetensors", "do not match"]


def absurd_header_length(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    _raw_safetensors(inp / "huge.safetensors", {}, b"\0" * 64, n=2**64 - 1)
    return [good[0], inp / "huge.safetensors"], ["huge.safetensors", str(2**64 - 1)]


def header_not_json(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    _raw_safetensors(inp / "junk.safetensors", b"\xff\xfe not json at all", b"")
    return [good[0], inp / "junk.safetensors"], ["junk.safetensors", "not JSON"]


def unknown_dtype(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    header = {"x": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}
    _raw_safetensors(inp / "dtype.safetensors", header, b"\0")
    return [good[0], inp / "dtype.safetensors"], ["dtype.safetensors", "unknown dtype"]


def pickle_reduce_runs_code_zip(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    marker = inp.parent / "PWNED"
    sd = {"state_dict": toy_state_dicts(1)[0], "hook": RunsCode(marker)}
    torch.save(sd, inp / "evil.pt")
    return [good[0], inp / "evil.pt"], ["evil.pt", "refused", "exec"]


def pickle_reduce_runs_code_legacy(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    marker = inp.parent / "PWNED"
    sd = {**toy_state_dicts(1)[0], "hook": RunsCode(marker)}
    torch.save(sd, inp / "evil.pth", _use_new_zipfile_serialization=False)
    return [good[0], inp / "evil.pth"], ["evil.pth", "refused"]


def pickle_reduce_runs_code_raw(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    marker = inp.parent / "PWNED"
    (inp / "evil.bin").write_bytes(pickle.dumps({"w": RunsCode(marker)}, protocol=2))
    return [good[0], inp / "evil.bin"], ["evil.bin", "refused"]


def pickle_reduce_in_hf_directory(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    hf = inp / "hfmodel"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    torch.save({"w": RunsCode(inp.parent / "PWNED")}, hf / "pytorch_model.bin")
    return [good[0], hf], ["pytorch_model.bin", "refused"]


def pickle_non_tensor_object(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    torch.save({"state_dict": toy_state_dicts(1)[0], "opt": Optimizer()}, inp / "ckpt.pt")
    return [good[0], inp / "ckpt.pt"], ["ckpt.pt", "refused", "Optimizer"]


def pickle_plain_non_tensor_entry(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    torch.save({**toy_state_dicts(1)[0], "note": "hello"}, inp / "ckpt.pt")
    return [good[0], inp / "ckpt.pt"], ["ckpt.pt", "'note'", "not a tensor"]


def pickle_sparse_tensor(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    torch.save({"w": torch.eye(3).to_sparse()}, inp / "sparse.pt")
    return [good[0], inp / "sparse.pt"], ["sparse.pt", "not a dense tensor"]


def pickle_complex_tensor(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    torch.save({"w": torch.ones(3, dtype=torch.complex64)}, inp / "complex.pt")
    return [good[0], inp / "complex.pt"], ["complex.pt", "complex64"]


def pickle_prefix_collision(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    torch.save({"module.w": torch.ones(2), "w": torch.zeros(2)}, inp / "dup.pt")
    return [good[0], inp / "dup.pt"], ["dup.pt", "'w'"]


def pickle_garbage(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "noise.pt").write_bytes(bytes(range(256)) * 8)
    return [good[0], inp / "noise.pt"], ["noise.pt"]


def pickle_truncated_zip(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    torch.save(toy_state_dicts(1)[0], inp / "whole.pt")
    (inp / "cut.pt").write_bytes((inp / "whole.pt").read_bytes()[:3000])
    (inp / "whole.pt").unlink()
    return [good[0], inp / "cut.pt"], ["cut.pt", "not a readable PyTorch checkpoint"]


def index_shard_outside_dotdot(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    save_file({"x": torch.ones(2)}, inp.parent / "outside.safetensors")
    index = inp / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "../outside.safetensors"}}))
    return [good[0], index], ["m.safetensors.index.json", "../outside.safetensors"]


def index_shard_absolute(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    index = inp / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": str(good[1].resolve())}}))
    return [good[0], index], ["m.safetensors.index.json", "not a file name"]


def index_shard_symlink_outside(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    save_file({"x": torch.ones(2)}, inp.parent / "outside.safetensors")
    (inp / "link.safetensors").symlink_to(inp.parent / "outside.safetensors")
    index = inp / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "link.safetensors"}}))
    return [good[0], index], ["m.safetensors.index.json", "outside"]


def index_missing_shard(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    index = inp / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": "m-00001-of-00002.safetensors"}}))
    return [good[0], index], ["m.safetensors.index.json", "m-00001-of-00002.safetensors", "missing"]


def index_not_json(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "m.safetensors.index.json").write_text("{weight_map: oops")
    return [good[0], inp / "m.safetensors.index.json"], ["m.safetensors.index.json"]


def tensor_in_two_shards(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    save_file({"a": torch.ones(2), "b": torch.ones(2)}, inp / "s1.safetensors")
    save_file({"b": torch.zeros(2), "c": torch.ones(2)}, inp / "s2.safetensors")
    index = inp / "two.safetensors.index.json"
    index.write_text(
        json.dumps(
            {"weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}
        )
    )
    return [good[0], index], ["s2.safetensors", "'b'", "another shard"]


def index_names_absent_tensor(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    save_file({"a": torch.ones(2)}, inp / "s1.safetensors")
    index = inp / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.safetensors", "ghost": "s1.safetensors"}}))
    return [good[0], index], ["m.safetensors.index.json", "ghost"]


def mismatched_names_shapes_dtypes(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    sd = toy_state_dicts(3)[2]
    del sd["head.bias"]
    sd["extra.weight"] = torch.zeros(3)
    sd["block.weight"] = torch.zeros(5, 5)
    sd["norm.num_batches_tracked"] = sd["norm.num_batches_tracked"].to(torch.int32)
    save_file(sd, inp / "odd.safetensors")
    return [*good, inp / "odd.safetensors"], [
        "4 differences",
        "odd.safetensors: tensor 'head.bias' is missing",
        "odd.safetensors: tensor 'extra.weight' is unexpected",
        "odd.safetensors: tensor 'block.weight' has shape [5, 5]",
        "odd.safetensors: tensor 'norm.num_batches_tracked' has dtype I32",
    ]


def nan_in_ingredient(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    sd = toy_state_dicts(3)[2]
    sd["block.weight"][3, 4] = float("nan")
    save_file(sd, inp / "nan.safetensors")
    return [*good, inp / "nan.safetensors"], [
        "nan.safetensors",
        "'block.weight'",
        "--allow-nonfinite",
    ]


def inf_in_ingredient(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    sd = toy_state_dicts(3)[2]
    sd["head.bias"][0] = float("-inf")
    save_file(sd, inp / "inf.safetensors")
    return [*good, inp / "inf.safetensors"], ["inf.safetensors", "'head.bias'", "NaN or Inf"]


def zero_byte_safetensors(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "zero.safetensors").touch()
    return [good[0], inp / "zero.safetensors"], ["zero.safetensors", "0 bytes"]


def zero_byte_pickle(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "zero.pt").touch()
    return [good[0], inp / "zero.pt"], ["zero.pt", "0 bytes"]


def zero_byte_index(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "zero.safetensors.index.json").touch()
    return [good[0], inp / "zero.safetensors.index.json"], ["zero.safetensors.index.json"]


def zero_byte_in_hf_directory(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    hf = inp / "hfmodel"
    hf.mkdir()
    (hf / "model.safetensors").touch()
    return [good[0], hf], ["model.safetensors", "0 bytes"]


def zero_byte_in_folder(inp: Path) -> tuple[list[Path], list[str]]:
    _good(inp)
    (inp / "zz.safetensors").touch()
    return [inp], ["zz.safetensors", "0 bytes"]


def symlink_loop_in_folder(inp: Path) -> tuple[list[Path], list[str]]:
    _good(inp)
    (inp / "loop_a.safetensors").symlink_to(inp / "loop_b.safetensors")
    (inp / "loop_b.safetensors").symlink_to(inp / "loop_a.safetensors")
    return [inp], ["loop_a.safetensors", "symlink loop"]


def symlink_loop_given(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "self.safetensors").symlink_to(inp / "self.safetensors")
    return [good[0], inp / "self.safetensors"], ["self.safetensors", "symlink loop"]


def broken_symlink(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "gone.safetensors").symlink_to(inp / "deleted.safetensors")
    return [good[0], inp / "gone.safetensors"], ["gone.safetensors", "broken symlink"]


def empty_directory(inp: Path) -> tuple[list[Path], list[str]]:
    (inp / "empty").mkdir(parents=True)
    return [inp / "empty"], ["empty", "no .safetensors"]


def directory_without_weights(inp: Path) -> tuple[list[Path], list[str]]:
    (inp / "notes").mkdir(parents=True)
    (inp / "notes" / "readme.txt").write_text("no weights here")
    (inp / "notes" / "config.json").write_text("{}")
    return [inp / "notes"], ["notes", "empty"]


def unknown_format(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "weights.npz").write_bytes(b"PK\x03\x04")
    return [good[0], inp / "weights.npz"], ["weights.npz", "unknown checkpoint format"]


def missing_path(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    return [good[0], inp / "nope.safetensors"], ["nope.safetensors", "no such file"]


def glob_matches_nothing(inp: Path) -> tuple[list[Path], list[str]]:
    _good(inp)
    return [inp / "*.ckpt"], ["*.ckpt", "matches no files"]


def corrupt_sidecar(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    (inp / "m1.json").write_text('{"lr": 0.1,')
    return good, ["m1.json", "not valid JSON"]


def same_ingredient_twice(inp: Path) -> tuple[list[Path], list[str]]:
    good = _good(inp)
    return [good[0], good[0]], ["m0", "twice"]


CASES: dict[str, Callable[[Path], tuple[list[Path], list[str]]]] = {
    f.__name__: f
    for f in [
        truncated_in_data,
        truncated_in_header,
        shorter_than_length_prefix,
        offsets_past_end,
        overlapping_offsets,
        gap_between_tensors,
        offsets_disagree_with_shape,
        absurd_header_length,
        header_not_json,
        unknown_dtype,
        pickle_reduce_runs_code_zip,
        pickle_reduce_runs_code_legacy,
        pickle_reduce_runs_code_raw,
        pickle_reduce_in_hf_directory,
        pickle_non_tensor_object,
        pickle_plain_non_tensor_entry,
        pickle_sparse_tensor,
        pickle_complex_tensor,
        pickle_prefix_collision,
        pickle_garbage,
        pickle_truncated_zip,
        index_shard_outside_dotdot,
        index_shard_absolute,
        index_shard_symlink_outside,
        index_missing_shard,
        index_not_json,
        tensor_in_two_shards,
        index_names_absent_tensor,
        mismatched_names_shapes_dtypes,
        nan_in_ingredient,
        inf_in_ingredient,
        zero_byte_safetensors,
        zero_byte_pickle,
        zero_byte_index,
        zero_byte_in_hf_directory,
        zero_byte_in_folder,
        symlink_loop_in_folder,
        symlink_loop_given,
        broken_symlink,
        empty_directory,
        directory_without_weights,
        unknown_format,
        missing_path,
        glob_matches_nothing,
        corrupt_sidecar,
        same_ingredient_twice,
    ]
}

#: Cases whose problem only shows when tensor values are read (inspect reads headers only).
VALUE_CASES = {"nan_in_ingredient", "inf_in_ingredient"}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cook_refuses(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    paths, mentions = CASES[case](inp)
    (tmp_path / "out").mkdir()
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", *paths, "-o", tmp_path / "out" / "soup"],
        mentions=mentions,
    )
    assert not (tmp_path / "PWNED").exists(), "the pickle's code ran"


@pytest.mark.parametrize("case", sorted(set(CASES) - VALUE_CASES))
def test_inspect_refuses(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    paths, mentions = CASES[case](inp)
    assert_refused(capsys, tmp_path, ["inspect", *paths], mentions=mentions)
    assert not (tmp_path / "PWNED").exists(), "the pickle's code ran"


def test_the_pickle_would_have_run_code(tmp_path: Path) -> None:
    """Control for the RunsCode cases: unpickling without weights_only does create the marker."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(RunsCode(marker), protocol=2))
    assert marker.read_text() == "the pickle ran code"


@pytest.mark.parametrize("case", ["nan_in_ingredient", "inf_in_ingredient"])
def test_allow_nonfinite_mixes_anyway(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    paths, _ = CASES[case](inp)
    run = run_cli(capsys, "cook", "uniform", *paths, "-o", tmp_path / "soup", "--allow-nonfinite")
    assert run.code == 0, run.err
    from safetensors.torch import load_file

    soup = load_file(tmp_path / "soup" / "model.safetensors")
    name = "block.weight" if case == "nan_in_ingredient" else "head.bias"
    assert not torch.isfinite(soup[name]).all()
    assert torch.isfinite(soup["embed.weight"]).all()


def test_unused_ingredient_with_nan_is_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zero weight means the ingredient's tensors are never read, so its NaN cannot matter."""
    inp = tmp_path / "in"
    inp.mkdir()
    paths, _ = nan_in_ingredient(inp)
    run = run_cli(capsys, "cook", "weighted", *paths, "--weights", "1,1,0", "-o", tmp_path / "soup")
    assert run.code == 0, run.err


@pytest.fixture
def needs_three() -> type[Recipe]:
    """A throwaway recipe that needs three ingredients (registered for one test only)."""

    @register
    class NeedsThree(Recipe):
        name = "needs-three-test"
        title = "Needs three"
        summary = "test recipe"
        min_ingredients = 3

        def decide(self, ingredients, context) -> Decision:
            raise AssertionError("decide must not run with too few ingredients")

    yield NeedsThree
    del _REGISTRY["needs-three-test"]


def test_fewer_ingredients_than_the_recipe_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], needs_three: type[Recipe]
) -> None:
    good = _good(tmp_path / "in")
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "needs-three-test", *good, "-o", tmp_path / "soup"],
        mentions=["needs-three-test", "at least 3 ingredients, got 2"],
    )


def test_weighted_with_a_weight_count_that_does_not_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _good(tmp_path / "in")
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "weighted", *good, "--weights", "1,2,3", "-o", tmp_path / "soup"],
        mentions=["3 weights for 2 ingredients"],
    )


@pytest.mark.parametrize(
    ("weights", "mentions"),
    [("1,-1", ["sum to zero"]), ("1,nan", ["finite"]), ("1,x", ["--weights"])],
)
def test_weighted_with_bad_weights(
    weights: str, mentions: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _good(tmp_path / "in")
    run = run_cli(capsys, "cook", "weighted", *good, "--weights", weights, "-o", tmp_path / "soup")
    assert run.code != 0
    assert all(m in run.err for m in mentions), run.err
    assert not (tmp_path / "soup").exists()


def test_unknown_recipe_lists_the_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _good(tmp_path / "in")
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "gready", *good, "-o", tmp_path / "soup"],
        mentions=["unknown recipe 'gready'", "uniform", "weighted"],
    )


# --- a task file that raises ----------------------------------------------------------------

TASK_FILES = {
    "raises_on_import": "raise RuntimeError('the task module is broken')\n",
    "factory_raises": "def make_task():\n    raise ValueError('no data here')\n",
    "factory_returns_junk": "def make_task():\n    return 42\n",
    "no_such_factory": "def other():\n    pass\n",
}


@pytest.mark.parametrize("kind", sorted(TASK_FILES))
def test_task_file_that_raises(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("modelsoup.evaluation.evaluator", reason="the evaluator has not landed")
    good = _good(tmp_path / "in")
    task = tmp_path / "bad_task.py"
    task.write_text(TASK_FILES[kind])
    assert_refused(
        capsys,
        tmp_path,
        ["cook", "uniform", *good, "--task", f"{task}:make_task", "-o", tmp_path / "soup"],
        mentions=["bad_task.py"],
    )


def test_task_file_that_raises_via_load_task(tmp_path: Path) -> None:
    """The same refusals at the API level (runs even before the evaluator exists)."""
    from modelsoup.errors import TaskError
    from modelsoup.evaluation.task import load_task

    for kind, text in TASK_FILES.items():
        task = tmp_path / f"{kind}.py"
        task.write_text(text)
        with pytest.raises(TaskError, match=kind):
            load_task(f"{task}:make_task")
