"""Seamless (tileable) images: denoising and decoding that treat the latent as wrapping around."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.guidance import SeamlessDenoiser


def blur(x, sigma, concat=None, **kw):
    """A local denoiser with zero padding at the edges (as a UNet's convolutions have), concat added in."""
    k = torch.ones(x.shape[1], 1, 3, 3) / 9
    out = F.conv2d(x, k, padding=1, groups=x.shape[1])
    return out if concat is None else out + concat


def circular_blur(x, concat=None):
    k = torch.ones(x.shape[1], 1, 3, 3) / 9
    out = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), k, groups=x.shape[1])
    return out if concat is None else out + concat


def test_the_seamless_denoiser_sees_each_edge_continued_by_the_opposite_one():
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 12, 10, generator=g), torch.randn(2, 4, 12, 10, generator=g)
    sigma = torch.ones(2)
    torch.testing.assert_close(SeamlessDenoiser(blur, "xy", pad=2)(x, sigma), circular_blur(x))
    cfg_args = {"cond": {"concat": c}, "uncond": {"concat": c * 0}}
    wrapped = SeamlessDenoiser(lambda v, s, cond, uncond: blur(v, s, **cond) - blur(v, s, **uncond), "xy", pad=2)
    torch.testing.assert_close(wrapped(x, sigma, **cfg_args), c)
    only_x = SeamlessDenoiser(blur, "x", pad=2)(x, sigma)
    rows = circular_blur(F.pad(x, (0, 0, 1, 1)))[..., 1:-1, :]  # wraps left-right only; zero rows above and below
    torch.testing.assert_close(only_x, rows)
    assert not torch.allclose(blur(x, sigma), circular_blur(x))


@pytest.fixture(scope="module")
def engine():
    from engine.api import Engine

    e = Engine()
    yield e
    e.shutdown()


def edge_ratio(img: np.ndarray, axis: int) -> float:
    """The step across the wrap edge over the typical step between neighbouring rows (axis 0) or columns (axis 1)."""
    a = img.astype(float)
    inner = np.abs(np.diff(a, axis=axis)).mean()
    first, last = (a[0], a[-1]) if axis == 0 else (a[:, 0], a[:, -1])
    return float(np.abs(first - last).mean() / inner)


def test_a_bundled_scene_made_seamless_meets_itself_at_its_edges(engine):
    """The bundled text model draws sky above ground: the top and bottom rows differ by far more than neighbouring
    rows do. Made seamless, the picture continues across its edges."""
    from engine.api import Request, Result

    def run(seamless):
        job = engine.submit(Request(prompt="a red circle above a blue square on grass under the sky", width=64,
                                    height=64, steps=20, cfg_scale=3.0, seed=3, best_of=1, seamless=seamless))
        res = engine.wait(job, 300)
        assert isinstance(res, Result), res
        return res

    plain, tiled = run("off"), run("xy")
    assert "Seamless: xy" in tiled.parameters and "Seamless" not in plain.parameters
    before, after = edge_ratio(plain.images[0], 0), edge_ratio(tiled.images[0], 0)
    assert before > 4 and after < before / 2, (before, after)
    assert edge_ratio(tiled.images[0], 1) < 2.5


def test_an_unknown_seamless_mode_is_refused_with_the_valid_ones(engine):
    from engine.api import Failed, Request

    res = engine.wait(engine.submit(Request(prompt="a red circle", width=64, height=64, steps=2, seamless="z")), 120)
    assert isinstance(res, Failed) and "unknown seamless mode 'z'; valid: off, xy, x, y" in res.message
