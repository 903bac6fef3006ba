"""Uniform soup of k BERT-shaped safetensors ingredients, page cache warm.

``modelsoup cook uniform`` (warm and cold digest cache) against, in the same run:
(a) the read floor: reading the k files' bytes from the page cache;
(b) a plain stream: a bare loop over memory-mapped safetensors with in-place fp32 accumulation;
(c) the naive way of the paper's official code: load every checkpoint fully, average the dicts
    (with ``safetensors.load_file`` and with ``torch.load``);
(d) mergekit's ``linear`` merge, installed in its own virtualenv in the scratch directory.
Then k = 2, 4, 8, 16 for peak RSS, and a per-phase profile of modelsoup itself.

Run alone: ``python benchmarks/bench_uniform.py [--quick]``; a worker: ``... worker MODE ...``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    MB,
    MODELSOUP,
    PYTHON,
    BertSpec,
    Run,
    Stat,
    Table,
    bench_dir,
    cli,
    interleaved,
    log,
    make_checkpoints,
    ratio,
    run,
    warm,
)

MERGEKIT_TORCH = "torch==2.13.0"
MERGEKIT_DEPS = [
    "transformers", "safetensors", "accelerate", "pydantic", "click", "pyyaml", "immutables",
    "huggingface_hub", "tqdm", "typing-extensions", "sentencepiece", "protobuf", "scipy",
    "datasets", "peft",
]  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Workers: each runs in a fresh process and prints one JSON line
# ---------------------------------------------------------------------------------------------

PROSE = """
`modelsoup cook uniform` on k BERT-shaped checkpoints (Hugging Face directories, safetensors,
fp32, about 102M parameters each), the page cache warm, against: the **read floor** (reading
the k files' bytes into a reused buffer, no torch); a **plain stream** (a bare loop over
`safe_open` handles with in-place fp32 `add_`, then one `save_file`; no fsync, no digests);
the **naive** way of the paper's official code (load every checkpoint fully, `soup = soup +
sd / k`, then save) with `safetensors.load_file` and with `torch.load` of `.pt` copies; and
**mergekit**'s `linear` merge (installed by the benchmark into its own virtualenv with the
same torch). modelsoup writes atomically (temporary directory, fsync, rename), hashes the
output, and records the inputs' sha256 digests in `soup.json`: "warm digests" reads them from
its digest cache (keyed by path, size, mtime and inode), "cold digests" hashes every input.

How `cook` streams: for each tensor, each ingredient's bytes are memory-mapped copy-on-write
(no copy; the mapping and its resident pages go away with the tensor, so memory does not
grow with k) and added in place into one fp32 accumulator on one intra-op thread; a
background thread writes, hashes and syncs the output (every 64 MB) while the next tensor is
mixed; the inputs' digests are hashed by background threads meanwhile.
"""


def worker_floor(out: str, files: list[str]) -> dict:
    """Read every byte of the files from the page cache into one reused buffer (no torch)."""
    buf = bytearray(16 * 2**20)
    total = 0
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return {"bytes": total}


def worker_stream(out: str, files: list[str]) -> dict:
    """The plain stream: memory-mapped safetensors, in-place fp32 accumulation, one save."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    handles = [safe_open(p, framework="pt") for p in files]
    soup = {}
    for name in handles[0].keys():  # noqa: SIM118 - safe_open is not a mapping
        first = handles[0].get_tensor(name)
        if not first.is_floating_point():
            soup[name] = first
            continue
        acc = first.to(torch.float32, copy=True)
        for h in handles[1:]:
            acc.add_(h.get_tensor(name))
        acc.div_(len(handles))
        soup[name] = acc.to(first.dtype)
    save_file(soup, os.path.join(out, "model.safetensors"))
    return {}


def worker_stream1(out: str, files: list[str]) -> dict:
    """The plain stream on one intra-op thread, as modelsoup accumulates."""
    import torch

    torch.set_num_threads(1)
    return worker_stream(out, files)


def worker_stream_fsync(out: str, files: list[str]) -> dict:
    """The plain stream, then fsync of its output: the cost of durability, for comparison."""
    worker_stream(out, files)
    fd = os.open(os.path.join(out, "model.safetensors"), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {}


def worker_naive(out: str, files: list[str]) -> dict:
    """The official code's way: load each checkpoint fully, ``soup = soup + sd * (1/k)``."""
    import torch
    from safetensors.torch import load_file, save_file

    k = len(files)
    soup: dict[str, torch.Tensor] = {}
    for j, path in enumerate(files):
        if path.endswith(".pt"):
            sd = torch.load(path, map_location="cpu", weights_only=True)
        else:
            sd = load_file(path)
        if j == 0:
            soup = {n: v * (1.0 / k) if v.is_floating_point() else v for n, v in sd.items()}
        else:
            soup = {
                n: v * (1.0 / k) + soup[n] if v.is_floating_point() else soup[n]
                for n, v in sd.items()
            }
    save_file(soup, os.path.join(out, "model.safetensors"))
    return {}


def worker_profile(out: str, dirs: list[str]) -> dict:
    """modelsoup's phases, timed in one process: imports, headers, digests, mixing, writing
    (and within writing: hashing the output and fsync)."""
    t = {"start": (time.perf_counter(), time.process_time())}
    import torch  # noqa: F401

    t["import_torch"] = (time.perf_counter(), time.process_time())
    from modelsoup.ingredients import load_ingredients, writer
    from modelsoup.ingredients.ingredient import compute_digests
    from modelsoup.recipes import cook

    t["import_modelsoup"] = (time.perf_counter(), time.process_time())
    ings = load_ingredients(dirs)
    soup = cook("uniform", ings)
    t["headers_check"] = (time.perf_counter(), time.process_time())
    compute_digests(ings)
    t["input_digests"] = (time.perf_counter(), time.process_time())
    for _ in soup.tensors():
        pass
    t["mix_only"] = (time.perf_counter(), time.process_time())

    spent = {"hash": 0.0, "fsync": 0.0}

    class TimedHash:
        def __init__(self) -> None:
            import hashlib

            self._h = hashlib.sha256()

        def update(self, data) -> None:
            s = time.perf_counter()
            self._h.update(data)
            spent["hash"] += time.perf_counter() - s

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    def timed(real):
        def sync(fd: int) -> None:
            s = time.perf_counter()
            real(fd)
            spent["fsync"] += time.perf_counter() - s

        return sync

    writer.hashlib = type("H", (), {"sha256": TimedHash})  # type: ignore[attr-defined]
    os.fsync = timed(os.fsync)
    if hasattr(os, "fdatasync"):
        os.fdatasync = timed(os.fdatasync)
    soup.save(os.path.join(out, "soup"))
    t["save"] = (time.perf_counter(), time.process_time())
    keys = list(t)
    phases = {b: t[b][0] - t[a][0] for a, b in zip(keys, keys[1:])}
    phases.update({f"{b}_cpu": t[b][1] - t[a][1] for a, b in zip(keys, keys[1:])})
    phases["save_hash"] = spent["hash"]
    phases["save_fsync"] = spent["fsync"]
    return phases


WORKERS = {
    "floor": worker_floor,
    "stream": worker_stream,
    "stream1": worker_stream1,
    "stream_fsync": worker_stream_fsync,
    "naive": worker_naive,
    "profile": worker_profile,
}


def worker_main(argv: list[str]) -> None:
    mode, out, *paths = argv
    result = WORKERS[mode](out, paths)
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# mergekit in its own virtualenv
# ---------------------------------------------------------------------------------------------


def ensure_mergekit() -> tuple[Path | None, str]:
    """A virtualenv with torch 2.13.0 (first: it installs from local disk) and mergekit.

    Returns the ``mergekit-yaml`` path, or None and the reason it could not be installed.
    """
    venv = bench_dir() / "mergekit-venv"
    exe = venv / "bin" / "mergekit-yaml"
    if exe.is_file():
        return exe, _pip_version(venv, "mergekit")
    log("installing mergekit into its own virtualenv (torch==2.13.0 first)")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    base = shutil.which("python3") or sys.executable
    for cmd in ([base, "-m", "venv", "--clear", str(venv)], [*pip, MERGEKIT_TORCH]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"`{' '.join(cmd[-2:])}` failed: {done.stderr.strip()[-300:]}"
    # keep torch pinned: mergekit must not replace it with another (CUDA) build
    done = subprocess.run([*pip, "mergekit", MERGEKIT_TORCH], capture_output=True, text=True)
    if done.returncode != 0:
        log("mergekit's pins refuse torch 2.13.0; trying --no-deps plus its direct imports")
        nodeps = subprocess.run([*pip, "--no-deps", "mergekit"], capture_output=True, text=True)
        more = subprocess.run(
            [*pip, *MERGEKIT_DEPS, MERGEKIT_TORCH], capture_output=True, text=True
        )
        if nodeps.returncode != 0 or more.returncode != 0:
            why = (done.stderr + nodeps.stderr + more.stderr).strip()[-300:]
            return None, f"mergekit could not be installed from PyPI: {why}"
    if not exe.is_file():
        return None, "mergekit installed no mergekit-yaml script"
    return exe, _pip_version(venv, "mergekit")


def _pip_version(venv: Path, pkg: str) -> str:
    code = f"from importlib.metadata import version; print(version({pkg!r}))"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def mergekit_config(dirs: list[Path], path: Path) -> Path:
    lines = [
        "merge_method: linear",
        "dtype: float32",
        "parameters:",
        "  normalize: true",
        "models:",
    ]
    for d in dirs:
        lines += [f"  - model: {d}", "    parameters:", "      weight: 1.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------


def _out(name: str) -> Path:
    d = bench_dir() / "out" / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def bench(quick: bool = False, repeats: int = 3) -> list[Table]:
    spec = BertSpec.quick() if quick else BertSpec.full()
    ks = [2, 4, 8] if quick else [2, 4, 8, 16]
    k_main = 8
    dirs_all = make_checkpoints(spec, max(ks), pt=0 if quick else k_main)
    dirs = dirs_all[:k_main]
    files = [str(d / "model.safetensors") for d in dirs]
    pts = [str(d / "weights.pt") for d in dirs]
    size = spec.nbytes
    cache_warm = bench_dir() / "cache-warm"
    shutil.rmtree(cache_warm, ignore_errors=True)
    mk, mk_note = ensure_mergekit()
    log(f"mergekit: {mk or 'unavailable'} ({mk_note})")

    def worker(mode: str, paths: list[str]) -> Run:
        return run([PYTHON, __file__, "worker", mode, str(_out(mode)), *paths])

    def cook(name: str, dirs_: list[Path], cache: Path | None) -> Run:
        cache_dir = cache or bench_dir() / "cache-cold"
        if cache is None:
            shutil.rmtree(cache_dir, ignore_errors=True)
        out = _out(name) / "soup"
        return run(
            [MODELSOUP, "-q", "cook", "uniform", *map(str, dirs_), "-o", str(out)],
            env={"MODELSOUP_CACHE_DIR": str(cache_dir)},
        )

    # prime the warm digest cache (and the page cache) once
    cook("modelsoup_warm", dirs_all, cache_warm)

    configs = {
        "read floor": lambda: worker("floor", files),
        "plain stream": lambda: worker("stream", files),
        "plain stream, 1 thread": lambda: worker("stream1", files),
        "plain stream + fsync": lambda: worker("stream_fsync", files),
        "naive (load_file)": lambda: worker("naive", files),
        "modelsoup (warm digests)": lambda: cook("modelsoup_warm", dirs, cache_warm),
        "modelsoup (cold digests)": lambda: cook("modelsoup_cold", dirs, None),
    }
    if not quick:
        configs["naive (torch.load)"] = lambda: worker("naive", pts)
    if mk is not None:
        cfg = mergekit_config(dirs, bench_dir() / "mergekit.yml")

        def mergekit() -> Run:
            out = _out("mergekit") / "soup"
            return run([str(mk), str(cfg), str(out), "--quiet", "--no-copy-tokenizer"])

        configs["mergekit linear"] = mergekit
    configs["import torch"] = lambda: run([PYTHON, "-c", "import torch"])

    log(f"uniform soup, k={k_main} x {spec.parameters / 1e6:.0f}M fp32, {repeats} repeats")
    stats = interleaved(
        configs, repeats, before=lambda name: warm([*files, *(pts if "torch.load" in name else [])])
    )
    floor, stream = stats["read floor"], stats["plain stream"]
    mkstat = stats.get("mergekit linear")
    rows = []
    for name, st in stats.items():
        rows.append(
            [
                name,
                st.wall,
                ratio(st.wall, floor.wall) if name != "import torch" else None,
                ratio(st.wall, stream.wall),
                ratio(st.wall, mkstat.wall) if mkstat else None,
                st.cpu,
                st.rss / MB,
                st.rss / size,
            ]
        )
    ms = stats["modelsoup (warm digests)"]
    ms_cold = stats["modelsoup (cold digests)"]
    targets = [
        ("wall <= 0.5x mergekit (warm digests)", _x(ms.wall, mkstat.wall if mkstat else None),
         None if mkstat is None else ms.wall <= 0.5 * mkstat.wall),
        ("wall <= 0.5x mergekit (cold digests)", _x(ms_cold.wall, mkstat.wall if mkstat else None),
         None if mkstat is None else ms_cold.wall <= 0.5 * mkstat.wall),
        ("wall <= 1.3x plain stream (warm digests)", _x(ms.wall, stream.wall),
         ms.wall <= 1.3 * stream.wall),
        ("wall <= 1.5x read floor (issue 2)", _x(ms.wall, floor.wall), ms.wall <= 1.5 * floor.wall),
        ("peak RSS <= 1.2 GB", f"{ms.rss / MB:.0f} MB", ms.rss <= 1.2e9),
        ("peak RSS < 2.5x one ingredient (issue 2)", _x(ms.rss, size), ms.rss < 2.5 * size),
    ]  # fmt: skip
    main = Table(
        "uniform_k8",
        f"Uniform soup, k = {k_main} x {spec.parameters / 1e6:.1f}M fp32 parameters "
        f"({size / MB:.0f} MB each), page cache warm",
        ["configuration", "wall s", "x read floor", "x plain stream", "x mergekit",
         "CPU s", "peak RSS MB", "RSS / ingredient"],
        rows,
        notes=(
            f"Median of {repeats} interleaved runs, each a fresh process; CPU s is user + "
            f"system time of all the process's threads. mergekit {mk_note}"
            + ("" if mk else " (column skipped)")
            + ". `import torch` alone is listed for scale: every torch-based row pays it. "
            + _floor_note(floor.wall, stats["import torch"].wall, ms.wall)
        ),
        targets=targets,
    )  # fmt: skip

    # --- peak RSS flat in k
    log("peak RSS against k")
    k_configs = {}
    for k in ks:
        ds = dirs_all[:k]
        fs = [str(d / "model.safetensors") for d in ds]
        k_configs[f"modelsoup k={k}"] = lambda ds=ds, k=k: cook(f"ms_k{k}", ds, cache_warm)
        k_configs[f"plain stream k={k}"] = lambda fs=fs: worker("stream", fs)
        k_configs[f"read floor k={k}"] = lambda fs=fs: worker("floor", fs)
    kstats = interleaved(k_configs, repeats, before=lambda name: warm(_files_for(name, dirs_all)))
    krows = []
    for k in ks:
        m, s, f = (kstats[f"{w} k={k}"] for w in ("modelsoup", "plain stream", "read floor"))
        krows.append([k, m.wall, f.wall, ratio(m.wall, f.wall), ratio(m.wall, s.wall),
                      m.rss / MB, s.rss / MB])  # fmt: skip
    rss = [kstats[f"modelsoup k={k}"].rss for k in ks]
    flat = max(rss) / min(rss)
    ktable = Table(
        "uniform_k_sweep",
        "Uniform soup: wall time and peak RSS against the number of ingredients k",
        ["k", "modelsoup wall s", "read floor s", "x read floor", "x plain stream",
         "modelsoup peak RSS MB", "plain stream peak RSS MB"],
        krows,
        notes=f"Median of {repeats} interleaved runs, warm digest cache.",
        targets=[(f"peak RSS flat in k ({ks[0]}..{ks[-1]})",
                  f"max/min = {flat:.2f} ({min(rss) / MB:.0f}-{max(rss) / MB:.0f} MB)",
                  flat <= 1.15)],
    )  # fmt: skip

    # --- where modelsoup's time goes
    log("modelsoup phase profile")
    prof: dict[str, Stat] = {}
    for label, cache in (("warm", cache_warm), ("cold", None)):

        def profile(cache: Path | None = cache) -> Run:
            cache_dir = cache or bench_dir() / "cache-cold"
            if cache is None:
                shutil.rmtree(cache_dir, ignore_errors=True)
            return run(
                [PYTHON, __file__, "worker", "profile", str(_out("profile")), *map(str, dirs)],
                env={"MODELSOUP_CACHE_DIR": str(cache_dir)},
            )

        prof.update(interleaved({label: profile}, repeats, before=lambda _: warm(files)))
    phase_names = {
        "import_torch": "import torch",
        "import_modelsoup": "import modelsoup (recipes)",
        "headers_check": "load ingredients, read headers, check compatibility",
        "input_digests": "sha256 of the inputs (cached by path/size/mtime)",
        "mix_only": "mix: stream and accumulate every tensor (no writing)",
        "save": "save: mix again + write + hash + sync + manifest",
        "save_hash": "  sha256 of the output (writer thread, overlapped)",
        "save_fsync": "  fdatasync/fsync waits (writer thread, overlapped)",
    }
    prows = [
        [label, *(prof[c].median_of(k) for c in ("warm", "cold") for k in (key, f"{key}_cpu"))]
        for key, label in phase_names.items()
    ]
    ptable = Table(
        "uniform_phases",
        f"Where `cook uniform` spends its time (k = {k_main}, one process, instrumented)",
        ["phase", "warm cache: wall s", "CPU s", "cold cache: wall s", "CPU s"],
        prows,
        notes=(
            "Timed with `time.perf_counter` and `time.process_time` (all threads) inside one "
            f"process, medians of {repeats}; `mix` runs twice here (alone, then inside save) "
            "to separate it from writing. Here the input digests are a phase of their own; "
            "in `cook` they are hashed by background threads while the soup is mixed and "
            "written. The writer thread's hashing and syncing overlap with mixing."
        ),
    )
    shutil.rmtree(bench_dir() / "out", ignore_errors=True)
    return [main, ktable, ptable]


def _floor_note(floor: float, torch_import: float, ours: float) -> str:
    return (
        f"The read floor ({floor:.2f} s) is a bare memory copy of the inputs with no "
        f"interpreter work; starting Python and importing torch alone takes {torch_import:.2f} "
        f"s ({torch_import / floor:.1f}x the floor), so no torch-based tool can come within "
        f"1.5x of it at this size; cook's time beyond the import is {ours - torch_import:.2f} s "
        f"({(ours - torch_import) / floor:.1f}x the floor) for reading, mixing, writing, "
        "hashing and syncing."
    )


def _files_for(name: str, dirs: list[Path]) -> list[str]:
    k = int(name.rsplit("=", 1)[1])
    return [str(d / "model.safetensors") for d in dirs[:k]]


def _x(a: float | None, b: float | None) -> str:
    r = ratio(a, b)
    return "n/a" if r is None else f"{r:.2f}x"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        worker_main(argv[1:])
        return
    cli(__doc__, bench, argv)


if __name__ == "__main__":
    main()
