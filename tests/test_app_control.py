"""The ControlNet unit in the app: the guide image as a document edit (one undo step, kept in projects, stretched over
the canvas and cut to the generation region), the Control panel, and the app's request through the real engine."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app import project
from app.document import Document
from engine import api


def guide(h=32, w=32) -> np.ndarray:
    g = np.zeros((h, w, 3), np.uint8)
    g[h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
    return g


def test_the_guide_is_one_undo_step_kept_in_projects_and_cut_to_the_region(tmp_path):
    doc = Document(64, 48)
    doc.set_image(np.full((48, 64, 3), 90, np.uint8))
    assert doc.to_request().control == ()
    doc.set_param("control_model", "edges")
    doc.set_param("control_strength", 0.8)
    doc.set_control_image(guide())
    (unit,) = doc.to_request().control
    assert (unit.model, unit.strength, unit.preprocessor) == ("edges", 0.8, "canny")
    assert unit.image.shape == (48, 64, 3), "stretched over the canvas"
    doc.set_region((16, 8, 32, 32))
    (unit,) = doc.to_request().control
    assert unit.image.shape == (32, 32, 3)
    assert np.array_equal(unit.image, doc.control_request((0, 0, 64, 48))[0].image[8:40, 16:48])
    project.save(doc, tmp_path / "p.lcv")
    again = project.load(tmp_path / "p.lcv")
    assert np.array_equal(again.control_image, doc.control_image)
    assert again.params.control_model == "edges"
    doc.undo()
    doc.undo()
    assert doc.control_image is None and doc.region is None
    assert doc.to_request().control[0].image is None, "the engine then says the unit has no guide"
    doc.redo()
    assert np.array_equal(doc.control_image, guide())
    doc.set_param("upscale", True)
    assert doc.task() == "upscale" and doc.to_request().control == ()


pytest.importorskip("pytestqt")
from test_app_widgets import make_window  # noqa: E402,F401


def test_control_panel_lists_chooses_and_sets_the_guide(make_window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QMessageBox

    from app.demo import fake_runner

    (tmp_path / "controlnet").mkdir()
    (tmp_path / "controlnet" / "scribble.safetensors").write_bytes(b"x")
    seen = []
    win = make_window(runner=lambda r, ctx, cache: seen.append(r) or fake_runner(r, ctx, cache, step_s=0.002))
    panel = win.control_panel
    assert [panel.model.itemText(i) for i in range(panel.model.count())] == ["Off", "scribble", "world-canny"]
    assert not panel.strength.isEnabled() and not panel.clear_button.isEnabled()
    panel.model.setCurrentIndex(1)
    panel.reading.setCurrentIndex(panel.reading.findData("scribble"))
    panel.end.setValue(0.6)
    assert (win.doc.params.control_model, win.doc.params.control_preprocessor) == ("scribble", "scribble")
    win.doc.stroke("image", [(20, 20), (100, 70)], radius=4, value=(10, 10, 10))
    panel.from_canvas.click()
    assert np.array_equal(win.doc.control_image, win.doc.flattened())
    assert not panel.thumb.pixmap().isNull() and panel.clear_button.isEnabled()
    win.doc.set_task_override("txt2img")
    win.generate()
    qtbot.waitUntil(lambda: bool(seen), timeout=5000)
    assert seen[-1].control[0].end == 0.6
    assert np.array_equal(seen[-1].control[0].image, win.doc.control_image)
    Image.fromarray(guide(40, 50)).save(tmp_path / "g.png")
    assert panel.open_guide(str(tmp_path / "g.png")) and win.doc.control_image.shape == (40, 50, 3)
    warned = []
    monkeypatch.setattr(QMessageBox, "warning", lambda *a: warned.append(a[2]))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert not panel.open_guide(str(tmp_path / "bad.png"))
    assert "bad.png" in warned[0] and win.doc.control_image.shape == (40, 50, 3)
    panel.clear_button.click()
    assert win.doc.control_image is None and panel.thumb.text() == "no guide"
    win.doc.undo()
    assert win.doc.control_image.shape == (40, 50, 3)


def test_the_apps_control_request_runs_through_the_engine(tmp_path):
    from conftest_models import write_tiny
    from test_control import write_controlnet

    path = write_tiny(tmp_path, "sd1")
    (tmp_path / "controlnet").mkdir()
    write_controlnet(tmp_path / "controlnet" / "edges.safetensors")
    doc = Document(64, 64)
    for name, value in (("model", str(path)), ("prompt", "a cat"), ("steps", 3), ("control_model", "edges")):
        doc.set_param(name, value)
    engine = api.Engine()
    try:
        plain = engine.wait(engine.submit(doc.to_request(seed=2)), 120)
        assert isinstance(plain, api.Failed) and "has no control image" in plain.message
        doc.set_control_image(guide(64, 64))
        controlled = engine.wait(engine.submit(doc.to_request(seed=2)), 120)
        doc.set_param("control_model", "")
        free = engine.wait(engine.submit(doc.to_request(seed=2)), 120)
    finally:
        engine.shutdown()
    assert isinstance(controlled, api.Result) and isinstance(free, api.Result)
    assert np.abs(controlled.images[0].astype(int) - free.images[0]).mean() > 2
