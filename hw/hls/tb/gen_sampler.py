"""Golden data for tb_sampler.cpp, written by the golden on-chip sampler (roma_runtime.golden.sampler).

    PYTHONPATH=host python hw/hls/tb/gen_sampler.py OUT_DIR

OUT_DIR/cases.txt lists one case per line (floats as the hex of their fp32 bits, the state as 16 hex digits):
    name V K LANES N steps greedy top_k repeat_last_n inv_temperature top_p min_p penalty inv_penalty
    state n_recent
A case is `steps` tokens of autonomous decode from `state` with the ring seeded by the n_recent ids (oldest
first): every token is pushed into the ring and the PRNG state is carried (steps = 1: a single call).
Per case (raw little-endian arrays, numpy tofile):
    name.logits.f32  [steps, V]   name.recent.u32 [n_recent]
    name.tokens.u32  [steps]      name.states.u64 [steps]   the golden token and PRNG state after each step
Unit checks of the building blocks:
    exp.f32   pairs (z, exp_f32(z)) [n, 2]        prng.u64  [seeds, 1 + steps] states, prng.f32 [seeds, steps]
The tb instantiates one kernel per (V, K, LANES, N) in SHAPES.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from roma_runtime.golden import sampler as gs

# (V, K, LANES, N) instances in tb_sampler.cpp: SmolLM2's vocabulary with 4 lanes; a mid vocabulary with a
# small pool and ring; a vocabulary smaller than the pool; an odd vocabulary on one lane.
SHAPES = {
    "v49152": (49152, 64, 4, 64),
    "v1000": (1000, 16, 1, 8),
    "v24": (24, 64, 2, 4),
    "v257": (257, 64, 1, 64),
}
CASES_PER_SHAPE = {"v49152": 40, "v1000": 150, "v24": 120, "v257": 120}
SEQUENCES = {"v49152": 48, "v1000": 200, "v24": 100, "v257": 100}  # autonomous decode lengths


def hex32(x) -> str:
    return f"{int(np.float32(x).view(np.uint32)):08x}"


def random_logits(rng: np.random.Generator, v: int, kind: str) -> np.ndarray:
    if kind == "normal":
        l = rng.standard_normal(v) * rng.choice([0.5, 2.0, 6.0])
    elif kind == "peaked":  # Zipf-like, as an LM's next-token distribution
        ranks = rng.permutation(v) + 1
        l = -1.2 * np.log(ranks) + rng.standard_normal(v) * 0.3 + rng.uniform(-5, 15)
    elif kind == "ties":  # coarse grid: many equal values, ties -> lowest id
        l = np.round(rng.standard_normal(v) * 2) / 2
    elif kind == "flat":
        l = np.zeros(v)
    elif kind == "signed_zero":  # +0 and -0 at the top compare equal
        l = -np.abs(rng.standard_normal(v)) - 0.5
        top = rng.choice(v, size=min(v, 6), replace=False)
        l[top] = 0.0
        l = l.astype(np.float32)
        l[top[::2]] = np.float32(-0.0)
        return l
    elif kind == "masked":  # mostly -inf, fewer finite values than the pool
        l = np.full(v, -np.inf)
        live = rng.choice(v, size=min(v, int(rng.integers(1, 10))), replace=False)
        l[live] = rng.standard_normal(live.size)
    elif kind == "wide":  # large magnitudes: most candidates underflow to p = 0
        l = rng.standard_normal(v) * 3000.0
    else:
        raise ValueError(kind)
    return l.astype(np.float32)


KINDS = ["normal", "peaked", "peaked", "ties", "flat", "signed_zero", "masked", "wide"]


def random_params(rng: np.random.Generator, k_max: int) -> gs.OnChipParams:
    greedy = int(rng.random() < 0.15)
    t = float(rng.choice([0.05, 0.25, 0.7, 1.0, 1.0, 1.5, 4.0]))
    top_k = int(rng.choice([0, 0, 1, 2, 5, 40, k_max, k_max + 10]))
    top_p = float(rng.choice([1.0, 1.0, 0.95, 0.9, 0.5, 0.1]))
    min_p = float(rng.choice([0.0, 0.0, 0.05, 0.3]))
    pen = float(rng.choice([1.0, 1.0, 1.3, 0.7, 2.0]))
    return gs.OnChipParams(greedy=greedy, inv_temperature=np.float32(1.0 / t), top_k=top_k,
                           top_p=np.float32(top_p), min_p=np.float32(min_p), penalty=np.float32(pen),
                           inv_penalty=np.float32(np.float32(1.0) / np.float32(pen)),
                           repeat_last_n=int(rng.choice([64, 64, 5, 1, 0])))


def random_state(rng: np.random.Generator) -> int:
    r = rng.random()
    if r < 0.03:
        return 0  # the replaced fixed point
    if r < 0.06:
        return 1
    return int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))


def random_recent(rng: np.random.Generator, logits: np.ndarray, n: int) -> list[int]:
    v = logits.size
    top = np.argsort(-logits, kind="stable")[:8]
    m = int(rng.integers(0, n + 6))  # sometimes longer than the ring: only the last N count
    ids = [int(rng.choice(top)) if rng.random() < 0.6 else int(rng.integers(0, v)) for _ in range(m)]
    return ids


def write_case(out: Path, name: str, shape, prm: gs.OnChipParams, state: int, recent: list[int],
               logits: np.ndarray) -> str:
    v, k, lanes, n = shape
    spec = gs.OnChipSamplerSpec(v, k, n, lanes)
    dec = gs.OnChipSampler(spec, prm, state=state, recent=recent)
    tokens, states = [], []
    for step in logits:
        tokens.append(dec.sample(step))
        states.append(dec.state)
    logits.astype("<f4").tofile(out / f"{name}.logits.f32")
    np.asarray(recent, dtype="<u4").tofile(out / f"{name}.recent.u32")
    np.asarray(tokens, dtype="<u4").tofile(out / f"{name}.tokens.u32")
    np.asarray(states, dtype="<u8").tofile(out / f"{name}.states.u64")
    return (f"{name} {v} {k} {lanes} {n} {logits.shape[0]} {prm.greedy} {prm.top_k} {prm.repeat_last_n} "
            f"{hex32(prm.inv_temperature)} {hex32(prm.top_p)} {hex32(prm.min_p)} {hex32(prm.penalty)} "
            f"{hex32(prm.inv_penalty)} {state:016x} {len(recent)}")


def sequence_logits(rng: np.random.Generator, v: int, steps: int) -> np.ndarray:
    """Logits for an autonomous decode: a peaked distribution per step (the penalty then matters)."""
    return np.stack([random_logits(rng, v, "peaked") for _ in range(steps)])


def write_cases(out: Path, shapes=None, scale: float = 1.0) -> list[str]:
    """Write every case into `out`; returns the lines of cases.txt. `scale` multiplies the case counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20250312)
    lines = []
    for sname in shapes or SHAPES:
        shape = SHAPES[sname]
        v, k, lanes, n = shape
        for c in range(max(1, int(CASES_PER_SHAPE[sname] * scale))):
            kind = KINDS[c % len(KINDS)]
            logits = random_logits(rng, v, kind)
            prm = random_params(rng, k)
            lines.append(write_case(out, f"{sname}_{c:03d}_{kind}", shape, prm, random_state(rng),
                                    random_recent(rng, logits, n), logits[None]))
        # autonomous decode: one seed, state and ring carried across the tokens, a few settings
        steps = max(2, int(SEQUENCES[sname] * scale))
        for j, prm in enumerate([
                gs.OnChipParams.from_sampling(_sp(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.3,
                                                  repeat_last_n=16)),
                gs.OnChipParams.from_sampling(_sp(temperature=1.0)),
                gs.OnChipParams.from_sampling(_sp(temperature=0.0, repetition_penalty=1.5))]):
            logits = sequence_logits(rng, v, steps)
            prompt = [int(i) for i in rng.integers(0, v, 5)]
            lines.append(write_case(out, f"{sname}_seq{j}", shape, prm, gs.seed_state(1000 + j), prompt, logits))
    if shapes is None or "v24" in shapes:
        lines += write_boundary_cases(out)
    write_units(out)
    (out / "cases.txt").write_text("\n".join(lines) + "\n")
    return lines


def state_for_uniform(top24: int) -> int:
    """A PRNG state whose next draw is u = top24 * 2^-24 exactly (inverts the multiply and the xorshift)."""
    x = (((top24 << 40) | 0x12345) * pow(gs.XS_MULTIPLIER, -1, 1 << 64)) & gs.MASK64  # the state after the step
    y = x  # undo x ^= x >> 27, then x ^= x << 25, then x ^= x >> 12
    for shift, left in ((gs.XS_SHIFT_C, False), (gs.XS_SHIFT_B, True), (gs.XS_SHIFT_A, False)):
        z = y
        for k in range(1, 64 // shift + 1):
            z ^= ((y << (k * shift)) & gs.MASK64) if left else (y >> (k * shift))
        y = z
    assert gs.prng_next(y) == (x, np.float32(top24 * 2.0**-24)), "state inversion failed"
    return y


def write_boundary_cases(out: Path) -> list[str]:
    """Exact-equality boundaries that random data almost never hits (shape v24):
    r == cum[j] in PICK (flat logits, u = 0, 1/4, 1/2, 3/4, 1 - 2^-24, so r = u * kk lands on integers),
    cum[j] == top_p * total in KEEP, p[j] == min_p * p[0], and a penalised logit that ties another logit
    exactly only when the penalty is a multiply by inv_penalty (l / penalty rounds differently there)."""
    shape = SHAPES["v24"]
    v = shape[0]
    lines = []
    flat = np.zeros((1, v), dtype=np.float32)
    for kk in (2, 4, 8):
        for top24 in (0, 1 << 22, 1 << 23, 3 << 22, (1 << 24) - 1):
            for top_p in (1.0, 0.5, 0.25):
                prm = gs.OnChipParams(greedy=0, inv_temperature=np.float32(1.0), top_k=kk, top_p=np.float32(top_p))
                name = f"bound_flat_k{kk}_u{top24:06x}_p{int(top_p * 100)}"
                lines.append(write_case(out, name, shape, prm, state_for_uniform(top24), [], flat))
    # min-p: p[1] == min_p exactly; u just below 1 picks the last kept candidate
    z1 = np.float32(-0.75)
    p1 = gs.exp_f32(np.array([z1], dtype=np.float32))[0]
    l = np.full((1, v), -5.0, dtype=np.float32)
    l[0, 3], l[0, 9], l[0, 11] = 0.0, z1, z1 - np.float32(0.125)
    for min_p in (p1, np.nextafter(p1, np.float32(1.0))):
        prm = gs.OnChipParams(greedy=0, inv_temperature=np.float32(1.0), top_k=0, min_p=np.float32(min_p))
        lines.append(write_case(out, f"bound_minp_{hex32(min_p)}", shape, prm, state_for_uniform((1 << 24) - 1), [],
                                l))
    # penalty: a * inv_penalty == b exactly while a / penalty rounds to the other side of b; the tie goes to
    # the lower id, placed so that a divider (or any other rounding) picks the other token
    rng = np.random.default_rng(5)
    found = 0
    for pen in (1.3, 1.1, 1.7, 0.9):
        pen32 = np.float32(pen)
        inv = np.float32(np.float32(1.0) / pen32)
        for sign in (1, -1):
            for a in rng.uniform(1.0, 8.0, 2000).astype(np.float32):
                div, mul = np.float32(a / pen32), np.float32(a * inv)
                if div == mul or (div < mul) != (sign < 0):
                    continue
                b_id = 6 if div < mul else 4  # the penalised id 5 must win the exact tie
                l = np.full((1, v), -3.0, dtype=np.float32)
                l[0, 5], l[0, b_id] = a, mul
                for greedy in (1, 0):
                    prm = gs.OnChipParams(greedy=greedy, inv_temperature=np.float32(50.0), top_k=1,
                                          penalty=pen32, inv_penalty=inv)
                    lines.append(write_case(out, f"bound_pen{found}_g{greedy}", shape, prm,
                                            gs.seed_state(found), [5], l))
                found += 1
                break
    assert found >= 2, "no penalty rounding boundary found"
    return lines


def _sp(**kw):
    from roma_runtime.generate import SamplingParams

    return SamplingParams(**kw)


def write_units(out: Path) -> None:
    rng = np.random.default_rng(7)
    z = np.concatenate([
        np.array([0.0, -0.0, -1e-30, -1e-7, -0.5, -0.34657359, -0.6931472, -1.0, -85.999, -86.0, -86.00001,
                  -100.0, -np.inf], dtype=np.float32),
        -rng.uniform(0, 90, 20000).astype(np.float32),
        -(rng.uniform(0, 1, 5000) ** 6).astype(np.float32),
    ]).astype(np.float32)
    np.stack([z, gs.exp_f32(z)], axis=1).astype("<f4").tofile(out / "exp.f32")
    seeds = [0, 1, 2, 0xFFFFFFFFFFFFFFFF, gs.seed_state(0), gs.seed_state(42)]
    steps = 1000
    states = np.zeros((len(seeds), steps + 1), dtype="<u8")
    us = np.zeros((len(seeds), steps), dtype="<f4")
    for i, s in enumerate(seeds):
        states[i, 0] = s
        for t in range(steps):
            s, u = gs.prng_next(s)
            states[i, t + 1], us[i, t] = s, u
    states.tofile(out / "prng.u64")
    us.tofile(out / "prng.f32")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        sys.exit(__doc__)
    for line in write_cases(Path(args[0])):
        print(line)
