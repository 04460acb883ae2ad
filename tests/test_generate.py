"""Sampling and stop strings (roma_runtime.generate): pure functions of logits and text, no model needed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HOST = Path(__file__).resolve().parent.parent / "host"
if str(HOST) not in sys.path:
    sys.path.insert(0, str(HOST))

from roma_runtime.errors import RomaError  # noqa: E402
from roma_runtime.generate import HostSampler, SamplingParams, StopMatcher  # noqa: E402


def logits_of(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)


def sampler(**kw) -> HostSampler:
    return HostSampler(SamplingParams(**kw))


def draws(s: HostSampler, logits, n: int, history=()) -> np.ndarray:
    return np.array([s.sample(logits, list(history)) for _ in range(n)])


RNG = np.random.default_rng(1234)
RANDOM_LOGITS = [RNG.standard_normal(500).astype(np.float32) * 3 for _ in range(5)]


# --- greedy and the filters that reduce to it --------------------------------------------------------------


@pytest.mark.parametrize("logits", RANDOM_LOGITS)
def test_greedy_is_argmax(logits):
    assert sampler(temperature=0).sample(logits, []) == int(np.argmax(logits))


@pytest.mark.parametrize("logits", RANDOM_LOGITS)
def test_top_k_1_is_greedy(logits):
    s = sampler(temperature=1.5, top_k=1, seed=0)
    assert set(draws(s, logits, 50)) == {int(np.argmax(logits))}


@pytest.mark.parametrize("logits", RANDOM_LOGITS)
def test_tiny_top_p_is_greedy(logits):
    s = sampler(temperature=1.0, top_p=1e-6, seed=0)
    assert set(draws(s, logits, 50)) == {int(np.argmax(logits))}


def test_top_k_keeps_only_the_k_likeliest():
    logits = logits_of([0.05, 0.3, 0.1, 0.25, 0.3])  # the two 0.3s and the 0.25 are the top 3
    got = set(draws(sampler(temperature=1.0, top_k=3, seed=3), logits, 400))
    assert got == {1, 3, 4}


def test_top_p_keeps_the_prefix_that_reaches_p():
    logits = logits_of([0.5, 0.3, 0.15, 0.05])
    # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: tokens 0 and 1 stay, the token that crosses p is kept.
    got = set(draws(sampler(temperature=1.0, top_p=0.7, seed=4), logits, 400))
    assert got == {0, 1}


def test_min_p_drops_tokens_below_the_fraction_of_the_top():
    probs = [0.4, 0.3, 0.15, 0.1, 0.05]
    logits = logits_of(probs)
    # min_p 0.3: threshold 0.3 * 0.4 = 0.12, so 0.4, 0.3 and 0.15 stay.
    got = draws(sampler(temperature=1.0, min_p=0.3, seed=5), logits, 2000)
    assert set(got) == {0, 1, 2}
    # The survivors keep their relative odds (renormalised): 0.4/0.85, 0.3/0.85, 0.15/0.85.
    freq = np.bincount(got, minlength=3)[:3] / len(got)
    assert np.allclose(freq, np.array([0.4, 0.3, 0.15]) / 0.85, atol=0.04)


def test_min_p_near_one_is_greedy():
    logits = RANDOM_LOGITS[0]
    got = set(draws(sampler(temperature=1.0, min_p=0.999, seed=6), logits, 50))
    assert got == {int(np.argmax(logits))}


# --- the distribution ------------------------------------------------------------------------------------


def chi_square(counts: np.ndarray, expected_probs: np.ndarray) -> float:
    expected = expected_probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_temperature_sampling_matches_the_softmax(temperature):
    base = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], dtype=np.float32)
    z = base.astype(np.float64) / temperature
    expected = np.exp(z - z.max())
    expected /= expected.sum()
    n = 20000
    got = draws(sampler(temperature=temperature, seed=2024), base, n)
    counts = np.bincount(got, minlength=len(base)).astype(np.float64)
    # 7 degrees of freedom: the 99.9th percentile of chi-square(7) is 24.3. Seeded, so deterministic.
    assert chi_square(counts, expected) < 24.3, counts / n
    # And a temperature sharpens/flattens as it should: the top token's share moves with it.
    assert abs(counts[0] / n - expected[0]) < 0.02


def test_top_k_and_temperature_renormalise_over_the_kept_tokens():
    base = np.array([1.0, 0.8, 0.6, 0.4, 0.2, 0.0], dtype=np.float32)
    kept = np.exp(base[:3].astype(np.float64))
    kept /= kept.sum()
    got = draws(sampler(temperature=1.0, top_k=3, seed=77), base, 15000)
    counts = np.bincount(got, minlength=6).astype(np.float64)
    assert counts[3:].sum() == 0
    assert chi_square(counts[:3], kept) < 13.8  # chi-square(2) at 99.9%


# --- seeds -----------------------------------------------------------------------------------------------


def test_the_same_seed_reproduces_a_run():
    logits = RANDOM_LOGITS[1] / 3  # flat enough that draws vary
    a = draws(sampler(temperature=1.0, top_p=0.95, seed=42), logits, 200)
    b = draws(sampler(temperature=1.0, top_p=0.95, seed=42), logits, 200)
    c = draws(sampler(temperature=1.0, top_p=0.95, seed=43), logits, 200)
    assert (a == b).all()
    assert not (a == c).all()
    assert len(set(a)) > 10


# --- repetition penalty ----------------------------------------------------------------------------------


def test_repetition_penalty_lowers_seen_tokens():
    logits = np.array([3.0, 2.9, -1.0, -1.2, 0.5], dtype=np.float32)
    # Greedy picks 0; with 0 seen and a penalty, 1 wins.
    assert sampler().sample(logits, [0]) == 0
    assert sampler(repetition_penalty=1.3).sample(logits, [0]) == 1
    # A negative logit grows more negative: seen token 2 (-1.0) falls below unseen token 3 (-1.2).
    only_negative = np.array([-5.0, -5.0, -1.0, -1.2, -5.0], dtype=np.float32)
    assert sampler().sample(only_negative, [2]) == 2
    assert sampler(repetition_penalty=1.5).sample(only_negative, [2]) == 3


def test_repetition_penalty_lowers_the_sampled_share():
    logits = np.zeros(4, dtype=np.float32) + np.float32(1.0)  # uniform, all positive
    plain = draws(sampler(temperature=1.0, seed=9), logits, 4000, history=[0])
    penalised = draws(sampler(temperature=1.0, seed=9, repetition_penalty=2.0), logits, 4000, history=[0])
    assert (penalised == 0).mean() < (plain == 0).mean() - 0.08


def test_repetition_penalty_looks_only_at_the_last_n_tokens():
    logits = np.array([3.0, 2.9, 0.0], dtype=np.float32)
    history = [0] + [2] * 10  # token 0 was seen 11 tokens ago
    assert sampler(repetition_penalty=2.0, repeat_last_n=5).sample(logits, history) == 0
    assert sampler(repetition_penalty=2.0, repeat_last_n=64).sample(logits, history) == 1
    assert sampler(repetition_penalty=2.0, repeat_last_n=0).sample(logits, history) == 0


def test_sampling_does_not_modify_the_callers_logits():
    logits = np.array([3.0, 2.9, -1.0], dtype=np.float32)
    before = logits.copy()
    sampler(repetition_penalty=2.0).sample(logits, [0, 2])
    assert (logits == before).all()


# --- stop strings ----------------------------------------------------------------------------------------


def feed_all(m: StopMatcher, pieces) -> list[str]:
    return [m.feed(p) for p in pieces]


def test_stop_matcher_passes_text_without_stops():
    m = StopMatcher([])
    assert feed_all(m, ["Hello", ", ", "world"]) == ["Hello", ", ", "world"]
    assert m.flush() == "" and not m.stopped


def test_stop_matcher_holds_back_a_partial_stop_across_pieces():
    m = StopMatcher(["\nUser:"])
    out = feed_all(m, ["The answer", " is 4.\n", "Us"])
    assert out == ["The answer", " is 4.", ""]  # "\n" and then "\nUs" could still become the stop
    assert not m.stopped
    assert m.feed("er:") == "" and m.stopped
    assert "".join(out) == "The answer is 4."


def test_stop_matcher_releases_a_false_alarm():
    m = StopMatcher(["\nUser:"])
    assert m.feed("a\nU") == "a"
    assert m.feed("seful") == "\nUseful"
    assert not m.stopped
    m2 = StopMatcher(["STOP"])
    assert m2.feed("ST") == ""
    assert m2.flush() == "ST"  # the end of the stream releases what was held


def test_stop_matcher_cuts_at_the_earliest_stop():
    m = StopMatcher(["world", "lo"])
    assert m.feed("Hello world") == "Hel"
    assert m.stopped


def test_stop_matcher_stop_inside_one_piece():
    m = StopMatcher(["###"])
    assert m.feed("abc###def") == "abc"
    assert m.stopped


def test_stop_matcher_longest_possible_hold():
    m = StopMatcher(["abcabd"])
    # "abcab" is a prefix of the stop: all of it is held.
    assert m.feed("xxabcab") == "xx"
    assert m.feed("c") == "abc"  # "abcabc": now only "abc" can still start the stop
    assert m.feed("abd") == "" and m.stopped


# --- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"max_tokens": 0},
    {"temperature": -0.1},
    {"top_k": -1},
    {"top_p": 0.0},
    {"top_p": 1.5},
    {"min_p": -0.1},
    {"min_p": 1.0},
    {"repetition_penalty": 0.0},
    {"repeat_last_n": -1},
    {"temperature": float("nan")},
    {"top_p": float("inf")},
    {"stop": [""]},
])
def test_invalid_params_raise_roma_error(bad):
    with pytest.raises(RomaError):
        SamplingParams(**bad).validate()
    with pytest.raises(RomaError):
        HostSampler(SamplingParams(**bad))


def test_valid_defaults():
    p = SamplingParams()
    assert p.validate() is p
    assert p.temperature == 0  # greedy unless asked otherwise
