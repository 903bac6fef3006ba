"""Property-based fuzzing of the loaders (issue 8 item 3).

Random, structured and mutated safetensors files, sharded indexes and PyTorch pickles must give
either a loaded ingredient or a clean :class:`IngredientError` -- never another exception, never a
hang (each example has a deadline), never a big allocation (checked in a subprocess by peak RSS).
A file that passes our safetensors header validation must also open in the safetensors library.

Examples per test: ``MODELSOUP_FUZZ_EXAMPLES`` (default 150). Runs are derandomized (the same
examples every time) unless ``MODELSOUP_FUZZ_RANDOM=1``; docs/reliability.md records a long run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from safetensors import safe_open
from safetensors.torch import save_file

from modelsoup.errors import IngredientError, UnsafeCheckpointError
from modelsoup.ingredients import load_ingredient
from modelsoup.ingredients.pickle_format import load_state_dict
from modelsoup.ingredients.safetensors_format import read_header
from modelsoup.ingredients.tensor_info import DTYPE_SIZES

EXAMPLES = int(os.environ.get("MODELSOUP_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=3000,  # ms per example: a hang or a pathological slow path fails the test
    derandomize=os.environ.get("MODELSOUP_FUZZ_RANDOM") != "1",
    database=None,  # nothing written into the repository
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _small_state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(4, 3, generator=g),
        "b": torch.randn(3, generator=g).half(),
        "steps": torch.tensor(7),
        "mask": torch.tensor([True, False]),
    }


def _bytes_of(save) -> bytes:
    buf = io.BytesIO()
    save(buf)
    return buf.getvalue()


SD = _small_state_dict()
ZIP_PT = _bytes_of(lambda f: torch.save({"state_dict": SD, "epoch": 3}, f))
LEGACY_PT = _bytes_of(lambda f: torch.save(SD, f, _use_new_zipfile_serialization=False))
RAW_PICKLE = pickle.dumps({"state_dict": {"w": [1.0, 2.0]}, "epoch": 3, "tag": "x"}, protocol=2)


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save(SD, metadata={"format": "pt"})


SAFETENSORS = _safetensors_bytes()


# --- properties --------------------------------------------------------------------------


def load_fully(path: Path) -> str:
    """Load an ingredient and read every tensor: ``"read"`` or ``"refused"`` (IngredientError).

    Anything else propagates and fails the test.
    """
    try:
        ing = load_ingredient(path)
        for name in ing.tensor_infos:
            ing.get(name)
    except IngredientError as e:
        _note(f"refused: {_kind(e)}")
        return "refused"
    _note("read")
    return "read"


def _note(label: str) -> None:
    """Count an outcome in hypothesis' statistics (a no-op outside a hypothesis test)."""
    with contextlib.suppress(InvalidArgument):
        event(label)


def _kind(e: IngredientError) -> str:
    """A coarse label of the refusal, for hypothesis' statistics."""
    text = str(e).split(": ", 1)[-1].split(" (")[0]
    literals = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|/\S+|-?[\d.]+(?:e[+-]?\d+)?|True|False|None"
    return re.sub(literals, "_", text).split(" for tensor")[0].strip()[:60]


def load_pickle(path: Path) -> str:
    try:
        sd = load_state_dict(path)
    except IngredientError as e:
        _note(f"refused: {type(e).__name__}")
        return "refused"
    _note("read")
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items())
    return "read"


def library_reads(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())  # noqa: SIM118 - safe_open is not a mapping
        for name in names:
            f.get_tensor(name)
    return names


# --- strategies --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**66), 2**66),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutations(draw: st.DrawFn, base: bytes, header_bias: int = 0) -> bytes:
    """``base`` with 1-6 random edits (bit flips, overwrites, cuts, insertions, duplications)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        hi = len(data) - 1
        if header_bias and draw(st.booleans()):
            hi = min(hi, header_bias)
        pos = draw(st.integers(0, hi))
        kind = draw(st.sampled_from(["flip", "byte", "u64", "cut", "insert", "delete", "dup"]))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif kind == "u64":
            data[pos : pos + 8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


KNOWN_DTYPES = sorted(DTYPE_SIZES)
weird_dims = st.one_of(
    st.integers(-3, -1),
    st.integers(2**63, 2**65),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
    st.text(max_size=2),
)


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(0, one_in - 1)) == 0


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """Mostly well-formed safetensors files, with random defects drawn in now and then."""
    header: dict[str, object] = {}
    offset = 0
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.text(max_size=6))
        dtype = draw(st.sampled_from(KNOWN_DTYPES))
        if rarely(draw, 15):
            dtype = draw(st.sampled_from(["F4", "C64", "f32", ""]) | json_scalars)
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        if rarely(draw, 15):
            shape = draw(st.lists(st.integers(0, 4) | weird_dims, min_size=1, max_size=3))
        size = DTYPE_SIZES.get(dtype, 4) if isinstance(dtype, str) else 4
        try:
            nbytes = size * int(torch.tensor(shape, dtype=torch.float64).prod().item())
        except (TypeError, ValueError, RuntimeError, OverflowError):
            nbytes = -1
        if not 0 <= nbytes <= 4096:  # weird dims: keep the file itself small
            nbytes = draw(st.integers(0, 16))
        begin, end = offset, offset + nbytes
        if rarely(draw, 15):
            begin = draw(st.integers(0, offset + 8))
        if rarely(draw, 15):
            end = draw(st.integers(0, offset + 64))
        entry: dict[str, object] = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        if rarely(draw, 25):
            entry.pop(draw(st.sampled_from(sorted(entry))))
        if rarely(draw, 25):
            entry["data_offsets"] = draw(json_values)
        if rarely(draw, 25):
            entry = draw(json_values)
        if isinstance(entry, dict) and rarely(draw, 25):
            entry["extra"] = draw(json_values)  # unknown keys are allowed
        header[name] = entry
        offset = max(offset, end)
    if draw(st.booleans()):
        meta = draw(
            st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)
        )
        header["__metadata__"] = draw(json_values) if rarely(draw, 10) else meta
    raw = json.dumps(header).encode() + draw(st.sampled_from([b"", b" ", b"       "]))
    n = len(raw)
    if rarely(draw, 15):
        n = draw(st.integers(0, 2**64 - 1) | st.integers(max(n - 4, 0), n + 4))
    data = draw(st.binary(min_size=offset, max_size=offset))
    if rarely(draw, 15):
        data = data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=8))
    return struct.pack("<Q", n) + raw + data


shard_refs = st.sampled_from(
    [
        "s1.safetensors",
        "s2.safetensors",
        "missing.safetensors",
        "../outside.safetensors",
        "/etc/passwd",
        "sub/s1.safetensors",
        "..\\s1.safetensors",
        "",
        ".",
        "..",
        "s1.safetensors\x00.txt",
        "link_out.safetensors",
    ]
) | st.text(max_size=10)
VALID_MAP = {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}


@st.composite
def near_valid_indexes(draw: st.DrawFn) -> dict:
    """The valid index of the fixture's model, with 0-2 entries changed, added or removed."""
    weight_map: dict[object, object] = dict(VALID_MAP)
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(["a", "b", "c"]) | st.text(max_size=3))
        if draw(st.booleans()):
            weight_map[key] = draw(shard_refs | json_scalars)
        else:
            weight_map.pop(key, None)
    doc: dict[str, object] = {"weight_map": weight_map}
    if draw(st.booleans()):
        doc["metadata"] = draw(json_values)
    return doc


index_docs = st.one_of(
    near_valid_indexes(),
    st.fixed_dictionaries(
        {
            "weight_map": st.dictionaries(
                st.sampled_from(["a", "b", "c"]) | st.text(max_size=4),
                shard_refs | json_scalars,
                max_size=5,
            )
        },
        optional={"metadata": json_values},
    ),
    json_values,
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    shard_dir = root / "model"
    shard_dir.mkdir()
    save_file({"a": torch.ones(2), "b": torch.zeros(3)}, shard_dir / "s1.safetensors")
    save_file({"c": torch.arange(4)}, shard_dir / "s2.safetensors")
    save_file({"x": torch.ones(1)}, root / "outside.safetensors")
    (shard_dir / "link_out.safetensors").symlink_to(root / "outside.safetensors")
    return root


# --- safetensors -------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_as_safetensors(data: bytes, workdir: Path) -> None:
    path = workdir / "random.safetensors"
    path.write_bytes(data)
    assert load_fully(path) in ("read", "refused")


@FUZZ
@given(data=safetensors_files())
def test_structured_safetensors_headers(data: bytes, workdir: Path) -> None:
    """Clean error or success; and whatever passes our validation, the library reads too."""
    path = workdir / "structured.safetensors"
    path.write_bytes(data)
    outcome = load_fully(path)
    try:
        infos, _, _ = read_header(path)
    except IngredientError:
        assert outcome == "refused"
        return
    assert sorted(library_reads(path)) == sorted(infos)


@FUZZ
@given(data=mutations(SAFETENSORS, header_bias=int.from_bytes(SAFETENSORS[:8], "little") + 8))
def test_mutated_safetensors(data: bytes, workdir: Path) -> None:
    path = workdir / "mutated.safetensors"
    path.write_bytes(data)
    outcome = load_fully(path)
    try:
        infos, _, _ = read_header(path)
    except IngredientError:
        assert outcome == "refused"
        return
    assert sorted(library_reads(path)) == sorted(infos)


# --- sharded indexes ---------------------------------------------------------------------


@FUZZ
@given(doc=index_docs)
def test_structured_indexes(doc: object, workdir: Path) -> None:
    path = workdir / "model" / "fuzz.safetensors.index.json"
    path.write_text(json.dumps(doc))
    outcome = load_fully(path)
    if outcome == "read":  # then every shard it names is a real file in the model directory
        ing = load_ingredient(path)
        assert all(f.resolve().parent == (workdir / "model").resolve() for f in ing.files)
        assert all(f.name in ("s1.safetensors", "s2.safetensors") for f in ing.files)


@FUZZ
@given(
    data=st.binary(max_size=256)
    | mutations(json.dumps({"weight_map": {"a": "s1.safetensors", "c": "s2.safetensors"}}).encode())
)
def test_random_and_mutated_index_bytes(data: bytes, workdir: Path) -> None:
    path = workdir / "model" / "bytes.safetensors.index.json"
    path.write_bytes(data)
    assert load_fully(path) in ("read", "refused")


# --- pickles -----------------------------------------------------------------------------


@FUZZ
@given(data=mutations(ZIP_PT))
def test_mutated_zip_checkpoints(data: bytes, workdir: Path) -> None:
    path = workdir / "mutated.pt"
    path.write_bytes(data)
    assert load_pickle(path) in ("read", "refused")


@FUZZ
@given(data=mutations(LEGACY_PT))
def test_mutated_legacy_checkpoints(data: bytes, workdir: Path) -> None:
    path = workdir / "mutated_legacy.pt"
    path.write_bytes(data)
    assert load_pickle(path) in ("read", "refused")


@FUZZ
@given(data=st.binary(max_size=512) | mutations(RAW_PICKLE))
def test_random_and_mutated_raw_pickles(data: bytes, workdir: Path) -> None:
    path = workdir / "raw.pkl.bin"
    path.write_bytes(data)
    assert load_pickle(path) in ("read", "refused")


@FUZZ
@given(obj=json_values)
def test_plain_containers_without_tensors_are_refused(obj: object, workdir: Path) -> None:
    path = workdir / "plain.pt"
    torch.save(obj, path)
    assert load_pickle(path) == "refused"


CALLABLES = [
    ("builtins", "exec", "open({m!r}, 'w').close()"),
    ("builtins", "eval", "open({m!r}, 'w')"),
    ("builtins", "open", "{m}"),
    ("io", "open", "{m}"),
    ("os", "mkdir", "{m}"),
    ("posix", "mkdir", "{m}"),
    ("os", "system", "touch {m}"),
    ("subprocess", "getoutput", "touch {m}"),
    ("pathlib", "Path", "{m}"),
    ("torch", "load", "{m}"),
    ("numpy", "load", "{m}"),
]


def _reduce_pickle(module: str, name: str, arg: str) -> bytes:
    """A protocol-2 pickle that calls ``module.name(arg)`` when loaded by a plain unpickler."""
    encoded = arg.encode()
    return (
        b"\x80\x02c"
        + f"{module}\n{name}\n".encode()
        + b"X"
        + struct.pack("<I", len(encoded))
        + encoded  # BINUNICODE
        + b"\x85R."  # TUPLE1, REDUCE, STOP
    )


@FUZZ
@given(
    call=st.sampled_from(CALLABLES),
    where=st.sampled_from(["top", "state_dict", "list"]),
    container=st.sampled_from(["raw", "legacy", "zip"]),
)
def test_code_in_pickles_never_runs(
    call: tuple[str, str, str], where: str, container: str, workdir: Path
) -> None:
    module, name, template = call
    marker = workdir / f"RAN_{module}_{name}"
    payload = _reduce_pickle(module, name, template.format(m=str(marker)))

    class Injected:
        def __reduce__(self):
            return (pickle.loads, (payload,))

    obj = {
        "top": Injected(),
        "state_dict": {"state_dict": {"w": torch.ones(1), "x": Injected()}},
        "list": {"w": [torch.ones(1), Injected()]},
    }[where]
    path = workdir / "injected.pt"
    if container == "raw":
        path.write_bytes(payload)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=container == "zip")
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_state_dict(path)
    assert not marker.exists(), f"{module}.{name} ran"


def test_the_injected_payloads_would_run(tmp_path: Path) -> None:
    """Control: the payloads above do run under a plain unpickler."""
    marker = tmp_path / "RAN"
    pickle.loads(_reduce_pickle("builtins", "exec", f"open({str(marker)!r}, 'w').close()"))
    assert marker.exists()


def test_the_base_files_load(tmp_path: Path) -> None:
    """Control: the unmutated bases are valid, so mutations start from real files."""
    for name, data in [("a.pt", ZIP_PT), ("b.pt", LEGACY_PT)]:
        (tmp_path / name).write_bytes(data)
        assert load_pickle(tmp_path / name) == "read"
    (tmp_path / "c.safetensors").write_bytes(SAFETENSORS)
    assert load_fully(tmp_path / "c.safetensors") == "read"


# --- memory ------------------------------------------------------------------------------

MEMORY_CHILD = textwrap.dedent(
    """
    import io, json, random, resource, struct, sys, tempfile, warnings
    from pathlib import Path
    import torch
    from safetensors.torch import save
    from modelsoup.errors import IngredientError
    from modelsoup.ingredients import load_ingredient
    from modelsoup.ingredients.pickle_format import load_state_dict

    warnings.simplefilter("ignore")
    rng = random.Random(0)
    sd = {"w": torch.randn(64, 64), "b": torch.randn(64).half(), "n": torch.tensor(3)}
    buf = io.BytesIO(); torch.save(sd, buf); zip_pt = buf.getvalue()
    buf = io.BytesIO(); torch.save(sd, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    st = save(sd)

    def mutate(b):
        b = bytearray(b)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(b)) if rng.random() < 0.5 else rng.randrange(min(len(b), 400))
            if rng.random() < 0.5:
                b[pos:pos + 8] = struct.pack("<Q", rng.choice([2**31, 2**40, 2**63, rng.getrandbits(64)]))
            else:
                b[pos] = rng.randrange(256)
        return bytes(b)

    def run(path, loader):
        try:
            loader(path)
        except IngredientError:
            pass

    def full(path):
        ing = load_ingredient(path)
        for name in ing.tensor_infos:
            ing.get(name)

    tmp = Path(tempfile.mkdtemp())
    for base, name, loader in [(st, "a.safetensors", full), (zip_pt, "a.pt", load_state_dict),
                               (legacy, "b.pt", load_state_dict)]:
        (tmp / name).write_bytes(base)
        run(tmp / name, loader)  # warm up every code path once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = int(sys.argv[1])
    for i in range(n):
        for base, name, loader in [(st, "a.safetensors", full), (zip_pt, "a.pt", load_state_dict),
                                   (legacy, "b.pt", load_state_dict)]:
            (tmp / name).write_bytes(mutate(base))
            run(tmp / name, loader)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"files": 3 * n, "growth_kib": after - before}))
    """
)


def test_hostile_files_never_allocate_much(tmp_path: Path) -> None:
    """Mutated files declaring sizes up to 2**64 leave peak RSS flat (files are ~20 kB)."""
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, "200"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MODELSOUP_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["files"] == 600
    assert report["growth_kib"] < 64 * 1024, report  # under 64 MB of growth over 600 files
