"""The golden on-chip sampler (roma_runtime.golden.sampler): its statistics and its relation to the host sampler.

All tests are deterministic (fixed seeds); the chi-square bounds are 99.9% quantiles, so a correct sampler
passes them and a biased one (wrong temperature, off-by-one in the cumulative comparison, a skewed PRNG) fails.
"""

from __future__ import annotations

import numpy as np
import pytest

from roma_runtime.generate import HostSampler, SamplingParams
from roma_runtime.golden import sampler as gs

CHI2_999 = {3: 16.27, 7: 24.32, 15: 37.70}  # chi-square 99.9% quantiles by degrees of freedom


def chi2(counts: np.ndarray, probs: np.ndarray) -> float:
    n = counts.sum()
    expected = n * probs
    return float(((counts - expected) ** 2 / expected).sum())


def draws(spec, params, logits, n, seed=1, recent=()):
    dec = gs.OnChipSampler(spec, params, seed=seed, recent=recent)
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        out[i], dec.recent = dec.sample(logits), list(recent)  # keep the ring fixed: i.i.d. draws
    return out


def test_prng_exact_integer_ops_and_zero_state():
    s, u = gs.prng_next(1)
    x = 1
    x ^= x >> 12
    x ^= (x << 25) & gs.MASK64
    x ^= x >> 27
    assert s == x and u == np.float32(((x * 0x2545F4914F6CDD1D) & gs.MASK64) >> 40) * np.float32(2.0**-24)
    assert gs.prng_next(0) == gs.prng_next(gs.SEED_ZERO_REPLACEMENT)  # 0 is a fixed point: replaced
    assert all(gs.seed_state(k) != 0 for k in range(1000))


def test_prng_uniforms_in_unit_interval_and_uniform():
    s = gs.seed_state(123)
    us = np.empty(200_000, dtype=np.float32)
    for i in range(us.size):
        s, us[i] = gs.prng_next(s)
    assert us.dtype == np.float32 and us.min() >= 0.0 and us.max() < 1.0
    assert np.all(us * np.float32(2**24) == np.floor(us * np.float32(2**24)))  # 24-bit grid, exact in fp32
    counts = np.bincount((us * 16).astype(int), minlength=16)
    assert chi2(counts, np.full(16, 1 / 16)) < CHI2_999[15]
    assert abs(us.mean() - 0.5) < 0.005 and abs(np.var(us) - 1 / 12) < 0.002
    # consecutive pairs: no first-order correlation
    assert abs(np.corrcoef(us[:-1], us[1:])[0, 1]) < 0.01


def test_same_seed_same_sequence_different_seed_different():
    spec = gs.OnChipSamplerSpec(50, 16, 8)
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal(50).astype(np.float32) * 2 for _ in range(40)]
    prm = SamplingParams(temperature=1.0, top_p=0.9, repetition_penalty=1.2)

    def run(seed):
        dec = gs.OnChipSampler(spec, prm, seed=seed)
        return [dec.sample(l) for l in logits], dec.state

    assert run(7) == run(7)
    assert run(7)[0] != run(8)[0]
    # the PRNG advances once per token in every mode: the state after n tokens is prng_next^n(seed)
    s = gs.seed_state(7)
    for _ in logits:
        s, _u = gs.prng_next(s)
    assert run(7)[1] == s
    dec = gs.OnChipSampler(spec, SamplingParams(temperature=0.0), seed=7)
    for l in logits:
        dec.sample(l)
    assert dec.state == s


def test_greedy_is_argmax_with_ties_to_lowest_id():
    rng = np.random.default_rng(1)
    spec = gs.OnChipSamplerSpec(300, 64, 64, lanes=4)
    for i in range(60):
        l = rng.standard_normal(300).astype(np.float32)
        if i % 3 == 0:
            l = np.round(l).astype(np.float32)  # many ties
        if i % 5 == 0:
            l[rng.choice(300, 250, replace=False)] = -np.inf
        tok, _ = spec.sample(l, SamplingParams(temperature=0.0), 99)
        assert tok == int(np.argmax(l))
    assert spec.sample(np.zeros(300, np.float32), gs.OnChipParams(), 5)[0] == 0


def test_top_k_1_is_greedy():
    rng = np.random.default_rng(2)
    spec = gs.OnChipSamplerSpec(500, 64, 64)
    for t in (0.3, 1.0, 5.0):
        for seed in range(15):
            l = np.round(rng.standard_normal(500) * 3).astype(np.float32)
            assert spec.sample(l, SamplingParams(temperature=t, top_k=1), gs.seed_state(seed))[0] == int(np.argmax(l))


def test_temperature_1_matches_softmax_chi_square():
    spec = gs.OnChipSamplerSpec(8, 64, 64)  # pool = V: no truncation
    logits = np.array([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, -0.5, 0.25], dtype=np.float32)
    n = 20_000
    counts = np.bincount(draws(spec, SamplingParams(temperature=1.0), logits, n, seed=11), minlength=8)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    assert chi2(counts, p) < CHI2_999[7]
    # a wrong temperature is rejected by the same bound
    p_wrong = np.exp(1.3 * (logits.astype(np.float64) - logits.max()))
    assert chi2(counts, p_wrong / p_wrong.sum()) > CHI2_999[7]


def test_temperature_and_top_k_distribution():
    spec = gs.OnChipSamplerSpec(8, 64, 64)
    logits = np.array([1.0, 0.5, 2.0, -1.0, 0.0, 1.5, -0.5, 0.25], dtype=np.float32)
    counts = np.bincount(draws(spec, SamplingParams(temperature=0.5, top_k=4), logits, 10_000, seed=3), minlength=8)
    top = np.argsort(-logits, kind="stable")[:4]
    assert set(np.nonzero(counts)[0]) == set(top.tolist())
    q = np.exp((logits[top].astype(np.float64) - logits.max()) / 0.5)
    assert chi2(counts[top], q / q.sum()) < CHI2_999[3]


def test_top_p_restricts_support_as_specified():
    spec = gs.OnChipSamplerSpec(40, 64, 64)
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal(40) * 1.5).astype(np.float32)
    for top_p in (0.3, 0.6, 0.9):
        prm = SamplingParams(temperature=1.0, top_p=top_p)
        # the spec: the smallest prefix of the sorted candidates whose mass reaches top_p (crossing token kept)
        order = np.argsort(-logits, kind="stable")
        p = np.exp(logits[order].astype(np.float64) - logits.max())
        p /= p.sum()
        keep = int(np.searchsorted(np.cumsum(p), top_p) + 1)
        support = set(order[:keep].tolist())
        seen = set(draws(spec, prm, logits, 3000, seed=5).tolist())
        assert seen == support, (top_p, sorted(seen), sorted(support))
        assert spec.trace(logits, prm, 1).keep == keep
        # the host sampler keeps the same support
        host = HostSampler(SamplingParams(temperature=1.0, top_p=top_p, seed=0))
        assert {host.sample(logits, []) for _ in range(3000)} == support


def test_min_p_restricts_support():
    spec = gs.OnChipSamplerSpec(30, 64, 64)
    logits = np.linspace(2.0, -4.0, 30).astype(np.float32)
    prm = SamplingParams(temperature=1.0, min_p=0.1)
    support = set(np.nonzero(np.exp(logits - logits.max()) >= 0.1)[0].tolist())
    assert set(draws(spec, prm, logits, 4000, seed=6).tolist()) == support


def test_top_k_off_means_the_pool_of_k():
    """With top-k off the chip samples from its K best candidates only (the documented difference)."""
    spec = gs.OnChipSamplerSpec(200, 16, 8)
    logits = np.zeros(200, dtype=np.float32)  # flat: the host would sample all 200 ids
    seen = set(draws(spec, SamplingParams(temperature=1.0), logits, 3000, seed=8).tolist())
    assert seen == set(range(16))  # ties -> the 16 lowest ids form the pool
    assert gs.effective_top_k(0, 16, 200) == 16 and gs.effective_top_k(40, 16, 200) == 16
    assert gs.effective_top_k(5, 64, 24) == 5 and gs.effective_top_k(0, 64, 24) == 24


def test_probabilities_match_the_host_sampler():
    """Same distribution as generate.HostSampler (fp32 with exp_f32 vs float64) within the top-k pool."""
    rng = np.random.default_rng(9)
    spec = gs.OnChipSamplerSpec(1000, 64, 64)
    for t in (0.5, 1.0, 2.0):
        l = (rng.standard_normal(1000) * 3).astype(np.float32)
        tr = spec.trace(l, SamplingParams(temperature=t, top_k=50), 3)
        order = np.argsort(-l, kind="stable")[:50]
        assert np.array_equal(tr.pool_ids[:50], order)
        z = l[order].astype(np.float64) / t
        ref = np.exp(z - z[0])
        np.testing.assert_allclose(tr.probs / tr.cum[-1], ref / ref.sum(), rtol=2e-6, atol=1e-12)


def test_repetition_penalty_on_chip():
    rng = np.random.default_rng(10)
    spec = gs.OnChipSamplerSpec(100, 64, 8)
    agree = changed = 0
    for i in range(100):
        l = (rng.standard_normal(100) * 2).astype(np.float32)
        recent = [int(x) for x in np.argsort(-l)[:3]] + [int(rng.integers(0, 100))]
        sp = SamplingParams(temperature=0.0, repetition_penalty=1.8, repeat_last_n=64)
        tok = spec.sample(l, sp, 1, recent)[0]
        agree += tok == HostSampler(sp).sample(l, recent)
        changed += tok != int(np.argmax(l))
    assert changed > 20  # the argmax was penalised often enough to lose
    assert agree == 100  # greedy with the penalty: the host's choice (it divides, the chip multiplies by 1/p)
    # the window: only the last min(repeat_last_n, N) ids count
    l = np.zeros(100, dtype=np.float32)
    l[:3] = 5.0
    prm = gs.OnChipParams(greedy=1, penalty=np.float32(2.0), inv_penalty=np.float32(0.5), repeat_last_n=2)
    assert spec.sample(l, prm, 1, [0, 1])[0] == 2
    assert spec.sample(l, prm, 1, [1, 2, 0, 50])[0] == 1  # window = [0, 50]: 1 and 2 tie, 1 is lower
    ring_only = [0] + [60] * 8  # 9 ids, the ring holds 8: id 0 has left it
    assert spec.sample(l, gs.OnChipParams(greedy=1, penalty=np.float32(2), inv_penalty=np.float32(.5)), 1,
                       ring_only)[0] == 0


def test_exp_f32_accuracy_and_shape():
    z = -np.concatenate([np.linspace(0, 86, 400_001), np.geomspace(1e-9, 1, 10_000)]).astype(np.float32)
    e = gs.exp_f32(z)
    ref = np.exp(z.astype(np.float64))
    assert e.dtype == np.float32 and np.max(np.abs(e - ref) / ref) < 2e-7
    assert gs.exp_f32(np.array([0.0, -0.0], np.float32)).tolist() == [1.0, 1.0]
    assert gs.exp_f32(np.array([-86.00001, -1e4, -np.inf], np.float32)).tolist() == [0.0, 0.0, 0.0]
    assert np.all(e[e > 0] >= np.float32(2.0**-125))  # never subnormal


def test_params_from_sampling_and_preconditions():
    p = gs.OnChipParams.from_sampling(SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05,
                                                     repetition_penalty=1.3, repeat_last_n=32))
    assert (p.greedy, p.top_k, p.repeat_last_n) == (0, 40, 32)
    assert p.inv_temperature == np.float32(1 / 0.7) and p.inv_penalty == np.float32(1) / np.float32(1.3)
    assert gs.OnChipParams.from_sampling(SamplingParams(temperature=1e-45)).inv_temperature == np.float32(
        np.finfo(np.float32).max)
    spec = gs.OnChipSamplerSpec(4, 4, 4)
    for bad in ([0, np.nan, 0, 0], [0, np.inf, 0, 0], [-np.inf] * 4):
        with pytest.raises(ValueError):
            spec.sample(np.array(bad, np.float32), gs.OnChipParams(), 1)
    assert gs.sample_on_chip(np.array([0, 3, 1, 3], np.float32), SamplingParams(), 1)[0] == 1
