"""Live mode (pytest-qt, offscreen): edits regenerate at one seed beside the canvas; Keep, Generate and failures."""
import numpy as np
import pytest

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402
from test_app_widgets import make_window  # noqa: E402,F401

from app.demo import fake_runner  # noqa: E402
from engine import api  # noqa: E402


def _recording(requests, step_s=0.01):
    def runner(request, ctx, cache):
        requests.append(request)
        return fake_runner(request, ctx, cache, step_s=step_s)

    return runner


def test_live_follows_every_edit_at_one_seed_and_keep_adds_to_history(make_window, qtbot):
    requests, previews = [], []
    win = make_window(runner=_recording(requests))
    win.doc.set_param("steps", 4)
    win.doc.set_param("batch_size", 3)
    win.bridge.preview.connect(lambda ev: previews.append(win.live.panel.info.text()))
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        QTest.keyClick(win, Qt.Key.Key_L, Qt.KeyboardModifier.ControlModifier)
    assert win.live_action.isChecked() and win.live_dock.isVisible() and win.last_error is None
    assert previews and previews[0].startswith("step")
    assert win.doc.history == [] and win.written == [] and win.canvas.preview is None
    assert win.live.panel.image is not None and win.live.panel.keep_button.isEnabled()
    first = requests[-1]
    assert first.batch_size == 1

    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.doc.stroke("labels", [(20, 20), (60, 40)], radius=6, value=2)
    assert requests[-1].task == "semantic" and requests[-1].seed == first.seed and requests[-1].steps == 4
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.live.panel.steps.setValue(2)  # fewer steps while painting: runs again at once
    assert requests[-1].steps == 2 and win.doc.params.steps == 4
    assert requests[-1].labels is not None and (requests[-1].labels == 2).any()

    assert win.keep_live()
    assert len(win.doc.history) == 1 and win.doc.history[0].seeds == [first.seed] and len(win.written) == 1
    assert np.array_equal(win.doc.history[0].images[0], win.live.panel.image)
    with qtbot.waitSignal(win.bridge.result, timeout=5000):  # applying changes the image: live follows it
        win.live.panel.apply_button.click()
    assert len(win.doc.history) == 2 and np.array_equal(win.doc.image, win.doc.history[1].images[0])
    assert win.doc.has_image and win.doc.can_undo
    win.set_live(False)
    win.doc.stroke("labels", [(70, 70)], radius=6, value=3)
    qtbot.wait(600)
    assert not win.bridge.busy and requests[-1].labels is not None and not (requests[-1].labels == 3).any()


def test_a_newer_edit_cancels_the_running_live_job_and_generate_goes_first(make_window, qtbot):
    requests = []
    win = make_window(runner=_recording(requests, step_s=0.05))
    win.doc.set_param("steps", 40)
    cancelled, results = [], []
    win.bridge.cancelled.connect(cancelled.append)
    win.bridge.result.connect(results.append)
    win.live.timer.setInterval(0)
    with qtbot.waitSignal(win.bridge.progress, timeout=5000):
        win.set_live(True)
    live_job = win.bridge.current_job
    win.doc.set_param("prompt", "a red circle")
    qtbot.waitUntil(lambda: bool(cancelled) and len(requests) == 2, timeout=5000)
    assert cancelled[0].job_id == live_job and requests[-1].prompt == "a red circle"

    win.generate()
    qtbot.waitUntil(lambda: len(win.doc.history) == 1, timeout=10000)
    assert len(cancelled) == 2 and requests[-1].batch_size == win.doc.params.batch_size
    assert win.doc.history[0].parameters.startswith("a red circle")
    qtbot.waitUntil(lambda: len(requests) == 4 and not win.bridge.busy, timeout=10000)
    assert results[-1].job_id == win.live.kept[0].job_id and len(win.doc.history) == 1
    win.set_live(False)


def test_a_failing_live_job_is_reported_in_the_status_bar_and_the_next_edit_runs(make_window, qtbot):
    calls = []

    def flaky(request, ctx, cache):
        calls.append(request.prompt)
        if request.prompt == "bad":
            raise api.EngineError("the model cannot read this")
        return fake_runner(request, ctx, cache, step_s=0.001)

    win = make_window(runner=flaky)
    win.doc.set_param("prompt", "bad")
    with qtbot.waitSignal(win.bridge.failed, timeout=5000):
        win.set_live(True)
    assert "cannot read" in win.statusBar().currentMessage() and "cannot read" in win.live.panel.info.text()
    assert not [w for w in win.findChildren(QMessageBox) if w.isVisible()]
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.doc.set_param("prompt", "good")
    assert calls == ["bad", "good"] and win.live.panel.keep_button.isEnabled()
    win.doc.to_request = lambda *a, **k: (_ for _ in ()).throw(ValueError("no request from this canvas"))
    win.doc.set_param("prompt", "again")
    qtbot.waitUntil(lambda: "no request from this canvas" in win.live.panel.info.text(), timeout=5000)
    assert win.last_error is None and not win.bridge.busy and calls == ["bad", "good"]
    win.set_live(False)


def test_screenshot_with_live_shows_the_live_image_beside_the_canvas(tmp_path):
    """`python -m app --screenshot --live` (how the README's picture is made): the Live panel holds the image."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from app.demo import fake_image

    shot = tmp_path / "live.png"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "LATENT_CANVAS_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "app", "--fake-engine", "--screenshot", str(shot), "--size", "128",
                           "--live"], cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(Path(str(shot) + ".json").read_text())
    assert meta["error"] is None and not list((tmp_path / "data" / "outputs").glob("*.png"))  # not kept
    x, y, w, h = meta["live_rect"]
    assert w > 100 and h > 100
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)[y:y + h, x:x + w]
    expected = np.asarray(Image.fromarray(fake_image(128, 128, seed=7)).resize((w, h), Image.BILINEAR), np.float32)
    assert np.abs(img - expected).mean() < 12 < np.abs(img - expected[::-1]).mean()
