"""Variation seeds (A1111's): a result's noise slerped towards another seed's, for pictures close to it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_models import tiny_models  # noqa: F401

from engine.pipelines import initial_noise, slerp


def test_slerp_keeps_the_noise_norm_and_meets_both_ends():
    a, b = initial_noise([1, 2], (4, 16, 16)), initial_noise([3, 4], (4, 16, 16))
    torch.testing.assert_close(slerp(0.0, a, b), a)
    torch.testing.assert_close(slerp(1.0, a, b), b)
    mid = slerp(0.5, a, b)
    norms = [t.flatten(1).norm(dim=1) for t in (a, b, mid)]
    assert (norms[2] - (norms[0] + norms[1]) / 2).abs().max() < 0.02 * norms[0].min()
    assert ((a + b) / 2).flatten(1).norm(dim=1).max() < 0.8 * norms[0].min(), "a straight mix would shrink it"
    torch.testing.assert_close(slerp(0.3, a, a), a)


def test_a_variation_stays_close_to_its_seed_and_reaches_the_other_at_strength_one(tiny_models):
    from engine.api import Engine, Request, Result

    engine = Engine()
    try:
        def image(**kw):
            job = engine.submit(Request(model=str(tiny_models("sd1")), prompt="a red circle", width=32, height=32,
                                        steps=4, **kw))
            res = engine.wait(job, 120)
            assert isinstance(res, Result), res
            return res

        base, near = image(seed=1), image(seed=1, variation_seed=9, variation_strength=0.2)
        far, other = image(seed=1, variation_seed=9, variation_strength=1.0), image(seed=9)
        diff = lambda x, y: np.abs(x.images[0].astype(int) - y.images[0]).mean()  # noqa: E731
        assert "Variation seed: 9, Variation seed strength: 0.2" in near.parameters
        assert "Variation" not in base.parameters
        assert 0 < diff(near, base) < diff(other, base)
        assert diff(far, other) < 1
        failed = engine.wait(engine.submit(Request(model=str(tiny_models("sd1")), prompt="x", width=32, height=32,
                                                   variation_strength=1.5)), 120)
        assert "variation strength must be in [0, 1]" in failed.message
    finally:
        engine.shutdown()
