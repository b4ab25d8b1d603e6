"""Sampled decoding speed: µs per decode step of `Engine.generate` with the sampling controls on.

    python benchmarks/sampled_decode.py runs/quickstart/checkpoint [REPEATS]

Temperature 0.7, top-p 0.95 and repetition penalty 1.1 (so the temperature, filter and penalty paths all
run), up to 200 new tokens, at batch 1 and 16; the best of REPEATS (default 5). To compare two versions of
the code, alternate runs with PYTHONPATH pointing at each checkout's src/, with LMLAB_NATIVE=1 and 0.
"""

from __future__ import annotations

import sys
import time
import warnings

from lmlab.infer.engine import Engine
from lmlab.infer.sampling import SamplingParams


def step_us(engine: Engine, batch: int, repeats: int) -> float:
    params = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=200,
                            ignore_eos=True, seed=1)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = engine.generate(["Question: In which city was"] * batch, params)
        tokens = sum(len(c.token_ids) for o in outs for c in o.completions)
        best = min(best, (time.perf_counter() - t0) / tokens * batch * 1e6)
    return best


def main() -> None:
    warnings.simplefilter("ignore")  # the context-length notice: the model's context caps the 200 tokens
    engine = Engine.from_checkpoint(sys.argv[1], device="cpu")
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(" ".join(f"b{b}:{step_us(engine, b, repeats):.1f}" for b in (1, 16)))


if __name__ == "__main__":
    main()
