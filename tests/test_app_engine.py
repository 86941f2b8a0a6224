"""The app's own requests (Document.to_request, no widgets) through the real engine and the bundled models: each task
the canvas can infer comes back as the picture the app will lay onto the canvas."""
from __future__ import annotations

import numpy as np
import pytest

from app.document import Document, LayoutBox
from app.parameters import format_parameters
from engine.api import Engine, Result


@pytest.fixture(scope="module")
def engine():
    e = Engine()
    yield e
    e.shutdown()


def canvas(task: str) -> Document:
    doc = Document(64, 64)
    doc.set_param("prompt", "a red circle above a blue square on grass under the sky")
    doc.set_param("steps", 4)
    doc.set_param("best_of", 1)
    if task != "txt2img":
        doc.set_image(np.full((64, 64, 3), 120, np.uint8))
    if task == "img2img":
        doc.stroke("image", [(10, 50), (54, 50)], radius=8, value=(60, 150, 60))
    elif task == "inpaint":
        doc.stroke("mask", [(32, 32)], radius=10)
    elif task == "layout":
        doc.boxes.append(LayoutBox("red circle", (8, 8, 30, 30)))
    elif task == "semantic":
        doc.stroke("labels", [(32, 48)], radius=20, value=1)
    elif task == "upscale":
        doc.set_param("upscale", True)
    return doc


@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint", "layout", "semantic", "upscale"])
def test_every_task_the_canvas_infers_runs_on_the_bundled_models(task, engine):
    doc = canvas(task)
    assert doc.task() == task
    req = doc.to_request(seed=3)
    res = engine.wait(engine.submit(req), 300)
    assert isinstance(res, Result), getattr(res, "message", res)
    image = res.images[0]
    assert image.shape == ((256, 256, 3) if task == "upscale" else (64, 64, 3))
    if task == "inpaint":
        keep = doc.mask == 0
        assert np.array_equal(image[keep], req.image[keep]), "pixels outside the mask stay exactly"
    doc.apply_result(image)
    assert (doc.width, doc.height) == (image.shape[1], image.shape[0])


def test_unpainted_labels_take_the_nearest_painted_class():
    from engine.images import fill_unpainted

    labels = np.full((5, 6), -1, np.int16)
    labels[0, 0], labels[2, 2], labels[4, 5] = 3, 1, 7
    filled = fill_unpainted(labels)
    assert filled.dtype == labels.dtype and (filled >= 0).all()
    assert (filled[0, 0], filled[0, 5], filled[2, 3], filled[4, 4]) == (3, 1, 1, 7)
    assert (fill_unpainted(np.full((3, 3), -1)) == -1).all()


def test_an_empty_label_map_is_refused_with_a_clear_message(engine):
    from engine.api import Failed, Request

    res = engine.wait(engine.submit(Request(task="semantic", labels=np.full((64, 64), -1), steps=2)), 300)
    assert isinstance(res, Failed) and "the label map is empty" in res.message


@pytest.mark.parametrize("flow", ["planned layout", "large canvas", "region", "outpaint", "refined upscale",
                                  "x2 upscale"])
def test_the_apps_other_flows_run_on_the_bundled_models(flow, engine):
    """Layout from the prompt alone, a canvas four times the models' size (two passes through the x4 upscaler), a
    generation region, an extended canvas filled by inpainting, and an upscale refined by img2img."""
    doc = canvas("txt2img")
    if flow == "planned layout":
        doc.set_task_override("layout")
    elif flow == "large canvas":
        doc.resize(256, 256)
    elif flow == "region":
        doc.set_image(np.full((96, 128, 3), 120, np.uint8))
        doc.set_region((32, 16, 64, 64))
    elif flow == "outpaint":
        doc.set_image(np.full((64, 64, 3), 120, np.uint8))
        doc.extend(right=32)
    elif flow == "refined upscale":
        doc = canvas("upscale")
        doc.set_param("refine_strength", 0.3)
    elif flow == "x2 upscale":
        doc = canvas("upscale")
        doc.set_param("upscale_by", 2)
    req = doc.to_request(seed=5)
    res = engine.wait(engine.submit(req), 600)
    assert isinstance(res, Result), getattr(res, "message", res)
    want = {"large canvas": (256, 256), "region": (64, 64), "outpaint": (64, 96), "refined upscale": (256, 256),
            "x2 upscale": (128, 128)}
    assert res.images[0].shape[:2] == want.get(flow, (64, 64))
    if flow == "planned layout":
        assert res.boxes, "the planner's boxes come back for the canvas"
    if flow == "outpaint":
        assert np.array_equal(res.images[0][:, :64], req.image[:, :64]), "the old pixels stay exactly"
    before = (doc.width, doc.height)
    doc.apply_result(res.images[0], region=doc.region)
    assert (doc.width, doc.height) == {"refined upscale": (256, 256), "x2 upscale": (128, 128)}.get(flow, before)
    if flow == "x2 upscale":
        assert "Upscale by: 2" in res.parameters and "Size: 128x128" in format_parameters(req)
