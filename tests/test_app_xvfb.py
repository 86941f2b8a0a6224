"""The real window under Xvfb: `python -m app --screenshot` runs a fake generation and saves the window."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.demo import fake_image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.xvfb, pytest.mark.skipif(shutil.which("Xvfb") is None, reason="Xvfb is not on PATH")]


@pytest.fixture
def display():
    r, w = os.pipe()
    proc = subprocess.Popen(["Xvfb", "-displayfd", str(w), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
                            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        number = f.readline().strip()
    if not number:
        proc.kill()
        pytest.skip("Xvfb did not start")
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


def test_real_window_generates_and_shows_the_image(display, tmp_path):
    shot = tmp_path / "window.png"
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "LATENT_CANVAS_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "app", "--fake-engine", "--screenshot", str(shot), "--size", "512"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(Path(str(shot) + ".json").read_text())
    assert meta["error"] is None
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
    assert img.shape[0] > 400 and img.shape[1] > 600 and img.std() > 20
    x, y, w, h = meta["canvas_image_rect"]
    assert w > 100 and h > 100
    crop = img[y + 2:y + h - 2, x + 2:x + w - 2]
    expected = np.asarray(Image.fromarray(fake_image(*meta["image_size"], seed=meta["seed"])).resize((w, h), Image.BILINEAR))
    expected = expected[2:h - 2, 2:w - 2].astype(np.float32)
    assert np.abs(crop - expected).mean() < 12
    assert np.abs(crop - expected[::-1]).mean() > 40
    outputs = list((tmp_path / "data" / "outputs").glob("*.png"))
    assert len(outputs) == 1


@pytest.mark.skipif(not list((ROOT / "resources" / "models").glob("*.safetensors")), reason="no bundled models")
def test_real_window_with_the_real_engine_and_bundled_model(display, tmp_path):
    shot = tmp_path / "window.png"
    env = {**os.environ, "DISPLAY": display, "QT_QPA_PLATFORM": "xcb", "LATENT_CANVAS_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run([sys.executable, "-m", "app", "--screenshot", str(shot), "--size", "128", "--steps", "8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads(Path(str(shot) + ".json").read_text())
    assert meta["error"] is None, meta
    outputs = list((tmp_path / "data" / "outputs").glob("*.png"))
    assert len(outputs) == 1
    result = Image.open(outputs[0])
    assert "parameters" in result.text and result.size == (128, 128)
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.float32)
    x, y, w, h = meta["canvas_image_rect"]
    crop = img[y + 2:y + h - 2, x + 2:x + w - 2]
    expected = np.asarray(result.convert("RGB").resize((w, h), Image.BILINEAR))[2:h - 2, 2:w - 2].astype(np.float32)
    assert np.abs(crop - expected).mean() < 12
    assert np.abs(crop - expected[::-1, ::-1]).mean() > np.abs(crop - expected).mean() + 5
