"""Canvases larger than a model (engine.large_canvas): where each task is composed or filled, on tiny random-weight
checkpoints through the job API."""
import numpy as np
import pytest
from conftest_models import tiny_models  # noqa: F401
from test_pipelines import RNG, engine, request_for, run  # noqa: F401

from engine.api import Box, Failed, Request, Result, Started


def test_large_canvas_composes_at_the_training_size_then_repaints_at_full_size(tiny_models, engine):
    from engine.images import resize_nearest, resize_rgb

    path = tiny_models("ldm-semantic")
    labels = np.zeros((128, 128), np.int64)
    labels[40:100, 20:90] = 3
    base = request_for(path, "semantic", width=128, height=128, labels=labels, label_prompts={}, seed=4)
    ev, events = run(engine, **base)
    assert isinstance(ev, Result), getattr(ev, "detail", "")
    assert ev.images[0].shape == (128, 128, 3) and "First pass: 32x32, Hires strength" not in ev.parameters
    assert "Hires strength: 0.5, First pass: 32x32" in ev.parameters
    assert len([e for e in events if isinstance(e, Started)]) == 2
    first, _ = run(engine, **dict(base, width=32, height=32, labels=resize_nearest(labels, 32, 32), hires="off"))
    second, _ = run(engine, **dict(base, image=resize_rgb(first.images[0], 128, 128), strength=0.5, hires="off"))
    assert np.array_equal(ev.images[0], second.images[0])
    one, events = run(engine, **dict(base, hires="off"))
    assert len([e for e in events if isinstance(e, Started)]) == 1 and "First pass" not in one.parameters
    assert not np.array_equal(one.images[0], ev.images[0])
    small, events = run(engine, **dict(base, width=48, height=48, labels=labels[:48, :48]))
    assert len([e for e in events if isinstance(e, Started)]) == 1, "auto: 2.25x the training area at most is one pass"
    bad, _ = run(engine, **dict(base, hires_strength=1.5))
    assert isinstance(bad, Failed) and "hires strength" in bad.message
    bad, _ = run(engine, **dict(base, hires_upscaler="bicubic"))
    assert isinstance(bad, Failed) and "hires upscaler" in bad.message


def test_dilated_sampling_is_one_pass_at_full_size(tiny_models, engine):
    """hires 'dilated': no first pass, the canvas sampled once through guidance.DilatedDenoiser; under 1.5x the
    training size it is plain one-pass sampling."""
    labels = np.zeros((128, 128), np.int64)
    labels[40:100, 20:90] = 3
    base = request_for(tiny_models("ldm-semantic"), "semantic", width=128, height=128, labels=labels, label_prompts={},
                       seed=4)
    ev, events = run(engine, **dict(base, hires="dilated"))
    assert isinstance(ev, Result), getattr(ev, "detail", "")
    assert ev.images[0].shape == (128, 128, 3) and len([e for e in events if isinstance(e, Started)]) == 1
    assert "Large canvas: dilated sampling" in ev.parameters and "First pass" not in ev.parameters
    off, _ = run(engine, **dict(base, hires="off"))
    assert not np.array_equal(ev.images[0], off.images[0])
    small = dict(base, width=40, height=40, labels=labels[:40, :40])
    a, _ = run(engine, **dict(small, hires="dilated"))
    b, _ = run(engine, **dict(small, hires="off"))
    assert np.array_equal(a.images[0], b.images[0])


def test_large_canvas_can_enlarge_the_composition_with_the_upscaler_model(tiny_models, engine):
    """hires_upscaler 'model': the first pass goes through the default x4 upscaler (the bundled world-sr4), then the
    second pass repaints it; hires strength 0 keeps the enlargement as it is."""
    from engine.images import resize_nearest, resize_rgb

    labels = np.zeros((128, 128), np.int64)
    labels[40:100, 20:90] = 3
    base = request_for(tiny_models("ldm-semantic"), "semantic", width=128, height=128, labels=labels, label_prompts={},
                       seed=4, hires_upscaler="model", hires_strength=0.0)
    ev, events = run(engine, **base)
    assert isinstance(ev, Result), getattr(ev, "detail", "")
    assert ev.images[0].shape == (128, 128, 3) and "Hires upscaler: model" in ev.parameters
    assert [e.family for e in events if isinstance(e, Started)] == ["ldm-semantic", "world-sr4"]
    first, _ = run(engine, **dict(base, width=32, height=32, labels=resize_nearest(labels, 32, 32), hires="off"))
    up, _ = run(engine, model="default", task="upscale", image=first.images[0], steps=3, seed=4)
    assert up.images[0].shape == (128, 128, 3) and np.array_equal(ev.images[0], up.images[0])
    assert not np.array_equal(ev.images[0], resize_rgb(first.images[0], 128, 128))
    again, events = run(engine, **dict(base, hires_strength=0.5))
    assert [e.family for e in events if isinstance(e, Started)] == ["ldm-semantic", "world-sr4", "ldm-semantic"]
    second, _ = run(engine, **dict(base, image=up.images[0], strength=0.5, hires="off"))
    assert np.array_equal(again.images[0], second.images[0])


def test_a_layout_is_composed_where_its_boxes_have_the_trained_size(tiny_models, engine):
    """hires 'auto' for a layout: boxes about the size the model drew objects at keep one pass on a large canvas
    (convolutional sampling), larger ones are composed where they shrink to it; 'on' keeps the training area."""
    from engine.checkpoint import load
    from engine.large_canvas import TRAINED_BOX_SHARE, first_pass_size

    path = tiny_models("ldm-layout2img")
    model = load(path)
    n = model.config.image_size
    canvas = 4 * n

    def boxes(scale):
        s = scale * TRAINED_BOX_SHARE * n / canvas
        return [Box("Cat", (0.1, 0.1, 0.1 + s, 0.1 + s)), Box("Dog", (0.5, 0.5, 0.5 + 0.8 * s, 0.5 + s))]

    def first(scale, **kw):
        req = Request(**request_for(path, "layout", width=canvas, height=canvas, boxes=boxes(scale), **kw))
        return first_pass_size(req, model, canvas, canvas)

    assert first(1.0) is None and first(1.4) is None
    assert first(2.0) == (2 * n, 2 * n) and first(4.0) == (n, n) and first(8.0) == (n, n)
    assert first(1.0, hires="on") == (n, n) and first(1.0, hires="off") is None
    ev, events = run(engine, **request_for(path, "layout", width=canvas, height=canvas, boxes=boxes(1.0)))
    assert isinstance(ev, Result) and ev.images[0].shape == (canvas, canvas, 3) and "First pass" not in ev.parameters
    assert len([e for e in events if isinstance(e, Started)]) == 1
    ev, events = run(engine, **request_for(path, "layout", width=canvas, height=canvas, boxes=boxes(2.0)))
    assert f"First pass: {2 * n}x{2 * n}" in ev.parameters


def test_the_upscaler_enlarges_a_half_size_composition_from_a_quarter_of_the_canvas(tiny_models, engine):
    """A composition over a quarter of the canvas goes to the x4 upscaler model shrunk to a quarter (one x4 step that
    lands on the canvas, instead of overshooting it and shrinking the result)."""
    from engine.checkpoint import load
    from engine.images import resize_rgb
    from engine.large_canvas import TRAINED_BOX_SHARE

    path = tiny_models("ldm-layout2img")
    n = load(path).config.image_size
    canvas, s = 256, 2 * TRAINED_BOX_SHARE * n / 256
    boxes = [Box("Cat", (0.1, 0.1, 0.1 + s, 0.1 + s)), Box("Dog", (0.5, 0.5, 0.5 + s, 0.5 + s))]
    base = request_for(path, "layout", width=canvas, height=canvas, boxes=boxes, hires_upscaler="model",
                       hires_strength=0.0, seed=3)
    ev, events = run(engine, **base)
    assert isinstance(ev, Result) and "First pass: 128x128" in ev.parameters
    assert [e.family for e in events if isinstance(e, Started)] == ["ldm-layout2img", "world-sr4"]
    first, _ = run(engine, **dict(base, width=128, height=128, hires="off"))
    up, _ = run(engine, model="default", task="upscale", image=resize_rgb(first.images[0], 64, 64), steps=3, seed=3)
    assert np.array_equal(ev.images[0], up.images[0])


def test_a_label_map_is_composed_where_its_small_regions_have_the_trained_size(tiny_models):
    """The same rule for semantic synthesis, on the lower quartile of the map's connected regions: small blobs over a
    large canvas keep one pass, the same map enlarged 4x is composed at the training size."""
    from engine.checkpoint import load
    from engine.images import resize_nearest
    from engine.large_canvas import TRAINED_BOX_SHARE, first_pass_size

    path = tiny_models("ldm-semantic")
    model = load(path)
    n = model.config.image_size
    canvas, side = 4 * n, int(TRAINED_BOX_SHARE * n)
    labels = np.zeros((canvas, canvas), np.int64)
    labels[canvas // 2:] = 2
    for i in range(4):
        for j in range(4):
            labels[i * n + 2:i * n + 2 + side, j * n + 2:j * n + 2 + side] = 3 + (i + j) % 2

    def first(lab, **kw):
        req = Request(**request_for(path, "semantic", width=canvas, height=canvas, labels=lab, **kw))
        return first_pass_size(req, model, canvas, canvas)

    assert first(labels) is None and first(labels, hires="on") == (n, n)
    zoomed = resize_nearest(labels[:n, :n], canvas, canvas)
    assert first(zoomed) == (n, n)


@pytest.mark.parametrize("family", ["sd1-inpainting", "ldm-inpainting-big", "sd1"])
def test_inpainting_a_large_object_fills_it_at_the_trained_size(family, tiny_models, engine):
    """hires 'auto' for inpainting: a mask four times the trained object size is filled on the image scaled to the
    training size, the fill enlarged and composited (pixels outside exact); hires 'off' fills it in place."""
    import cv2

    from engine.checkpoint import load
    from engine.images import composite, grow_and_feather, resize_rgb
    from engine.large_canvas import TRAINED_BOX_SHARE

    path = tiny_models(family)
    n = load(path).config.image_size
    canvas, side = 4 * n, int(4 * TRAINED_BOX_SHARE * n)
    img = (RNG.rand(canvas, canvas, 3) * 255).astype(np.uint8)
    mask = np.zeros((canvas, canvas), np.uint8)
    mask[8:8 + side, 16:16 + side] = 255
    base = request_for(path, "inpaint", image=img, mask=mask, width=None, height=None, labels=None, mask_grow=2)
    ev, _ = run(engine, **base)
    assert isinstance(ev, Result), getattr(ev, "detail", "")
    assert f"First pass: {n}x{n}" in ev.parameters and ev.images[0].shape == img.shape
    soft = grow_and_feather(mask, 2, 0)
    assert np.array_equal(ev.images[0][soft == 0], img[soft == 0])
    small_mask = (cv2.resize(mask.astype(np.float32), (n, n), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) * 255
    small, _ = run(engine, **dict(base, image=resize_rgb(img, n, n), mask=small_mask, hires="off", mask_grow=1))
    assert np.array_equal(ev.images[0], composite(img, resize_rgb(small.images[0], canvas, canvas), soft))
    one, _ = run(engine, **dict(base, hires="off"))
    assert "First pass" not in one.parameters and not np.array_equal(one.images[0], ev.images[0])


def test_img2img_on_a_large_canvas_starts_its_first_pass_from_the_image_scaled_down(tiny_models, engine):
    """hires 'auto' for img2img: its first pass starts from the image scaled to the training size, then the hires
    fix enlarges and repaints it (in place, a model drew 4x-enlarged objects as noise: caption match 0.00 -> 0.69)."""
    from engine.checkpoint import load
    from engine.images import resize_rgb

    path = tiny_models("sd1")
    n = load(path).config.image_size
    img = (RNG.rand(4 * n, 4 * n, 3) * 255).astype(np.uint8)
    base = request_for(path, "img2img", image=img, width=None, height=None, strength=0.6, seed=4)
    ev, events = run(engine, **base)
    assert isinstance(ev, Result) and f"First pass: {n}x{n}" in ev.parameters
    assert len([e for e in events if isinstance(e, Started)]) == 2
    first, _ = run(engine, **dict(base, image=resize_rgb(img, n, n), hires="off"))
    second, _ = run(engine, **dict(base, image=resize_rgb(first.images[0], 4 * n, 4 * n), strength=0.5, hires="off"))
    assert np.array_equal(ev.images[0], second.images[0])
    one, _ = run(engine, **dict(base, hires="off"))
    assert "First pass" not in one.parameters and one.images[0].shape == img.shape


@pytest.mark.parametrize("family,task", [("sd1-inpainting", "inpaint"), ("sd1", "inpaint"), ("sd1", "img2img")])
def test_dilated_sampling_fills_and_repaints_in_one_pass(family, task, tiny_models, engine):
    """hires 'dilated' for inpainting and img2img: one pass at full size through guidance.DilatedDenoiser (at 4x the
    bundled inpainting model removed 0.94 of 16 objects this way, in place 0.31), the pixels outside the mask exact."""
    from engine.checkpoint import load
    from engine.images import grow_and_feather

    path = tiny_models(family)
    canvas = 4 * load(path).config.image_size
    img = (RNG.rand(canvas, canvas, 3) * 255).astype(np.uint8)
    mask = np.zeros((canvas, canvas), np.uint8)
    mask[8:8 + canvas // 2, 16:16 + canvas // 2] = 255
    extra = dict(mask=mask, labels=None, mask_grow=2) if task == "inpaint" else dict(strength=0.6)
    base = request_for(path, task, image=img, width=None, height=None, seed=4, **extra)
    ev, events = run(engine, **dict(base, hires="dilated"))
    assert isinstance(ev, Result), getattr(ev, "detail", "")
    assert len([e for e in events if isinstance(e, Started)]) == 1 and ev.images[0].shape == img.shape
    assert "Large canvas: dilated sampling" in ev.parameters and "First pass" not in ev.parameters
    one, _ = run(engine, **dict(base, hires="off"))
    assert not np.array_equal(ev.images[0], one.images[0]) and "Large canvas" not in one.parameters
    if task == "inpaint":
        keep = grow_and_feather(mask, 2, 0) == 0
        assert np.array_equal(ev.images[0][keep], img[keep])
