"""File > Train a model on a folder (pytest-qt, offscreen): the engine's train-ae and train-ldm run as child
processes with their progress shown; the model lands in the models folder and is chosen; Stop saves and resumes."""
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")
from test_app_widgets import make_window  # noqa: E402,F401

from app.training import training_commands  # noqa: E402
from engine import api  # noqa: E402

REAL_LIST_MODELS = api.list_models


def _folder(tmp_path, n=6):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def test_training_commands_chain_the_two_stages_and_resume_by_name(tmp_path):
    ae, ldm = training_commands("/photos", "mine", "/models", 128, 5, 20, captions="/photos/captions.json",
                                kind="txt2img")
    assert ae[0] == "train-ae" and ldm[0] == "train-ldm"
    assert ldm[ldm.index("--ae") + 1] == ae[ae.index("--run-dir") + 1] + "/ae.pt"
    assert ldm[ldm.index("--out") + 1] == "/models/mine.safetensors" and "--captions" in ldm
    assert ldm[ldm.index("--kind") + 1] == "txt2img"
    assert ae[ae.index("--size") + 1] == "128" and ldm[ldm.index("--minutes") + 1] == "20"
    again = training_commands("/photos", "mine", "/models")[0]
    assert again[again.index("--run-dir") + 1] == ae[ae.index("--run-dir") + 1]  # same name, same run: it resumes


def test_train_a_model_on_a_folder_from_the_app(make_window, qtbot, tmp_path, monkeypatch):
    models = tmp_path / "models"
    monkeypatch.setattr(api, "list_models", lambda extra=(): REAL_LIST_MODELS(extra))
    win = make_window(models_dir=str(models))
    dlg = win.train_dialog()
    assert not dlg.start() and "folder" in dlg.status.text()
    dlg.images.setText(str(_folder(tmp_path)))
    dlg.name.setText("my photos")
    assert not dlg.start() and "Name" in dlg.status.text()
    dlg.name.setText("my-photos")
    dlg.kind.setCurrentIndex(dlg.kind.findData("txt2img"))
    assert not dlg.start() and "captions" in dlg.status.text()
    dlg.kind.setCurrentIndex(dlg.kind.findData("inpaint"))
    dlg.steps = 2
    with qtbot.waitSignal(dlg.trained, timeout=180000) as sig:
        assert dlg.start()
    out = models / "my-photos.safetensors"
    assert sig.args == [str(out)] and out.exists() and dlg.bar.value() == 100 and "Done" in dlg.status.text()
    assert win.model_panel.combo.currentData() == str(out)
    info = api.inspect_model(str(out))
    assert not info.error and info.image_size == 64 and info.tasks == ("inpaint",)
    progress = json.loads((tmp_path / "data" / "training" / "my-photos" / "ldm.progress.json").read_text())
    assert progress["step"] == 2 and progress["loss"] > 0

    dlg.name.setText("stopped")
    dlg.steps = 0
    dlg.ae_minutes.setValue(30)
    assert dlg.start()
    qtbot.waitUntil(lambda: "step" in dlg.status.text(), timeout=60000)
    with qtbot.waitSignal(dlg.process.finished, timeout=120000):
        dlg.stop()
    assert "Stopped during the autoencoder" in dlg.status.text() and dlg.start_button.isEnabled()
    state = tmp_path / "data" / "training" / "stopped" / "ae"
    assert (state / "state.pt").exists() and not (models / "stopped.safetensors").exists()


def test_the_packaged_app_runs_the_engine_cli_through_its_own_binary(monkeypatch, capsys):
    import sys

    from app.__main__ import main
    from app.training import engine_argv

    assert engine_argv(["train-ae"]) == ["-m", "engine", "train-ae"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert engine_argv(["train-ae"]) == ["--engine", "train-ae"]
    with pytest.raises(SystemExit) as exit_:
        main(["--engine", "train-ldm", "--help"])
    assert exit_.value.code == 0 and "--progress-file" in capsys.readouterr().out


def test_a_training_that_cannot_start_says_so_and_can_be_started_again(make_window, qtbot, tmp_path, monkeypatch):
    import sys

    win = make_window(models_dir=str(tmp_path / "models"))
    dlg = win.train_dialog()
    dlg.images.setText(str(_folder(tmp_path, 1)))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    assert dlg.start()
    qtbot.waitUntil(lambda: "Cannot start" in dlg.status.text(), timeout=10000)
    assert dlg.start_button.isEnabled() and not dlg.stop_button.isEnabled()


def test_merge_dialog_runs_the_engine_merge_and_chooses_the_result(make_window, qtbot, tmp_path, monkeypatch):
    from conftest_models import write_tiny

    from engine import api

    folder = tmp_path / "models"
    folder.mkdir()
    (tmp_path / "b").mkdir()
    a, b, other = write_tiny(folder, "sd1", 1), write_tiny(tmp_path / "b", "sd1", 2), write_tiny(tmp_path, "sd2", 3)
    infos = [api.inspect_model(str(p)) for p in (a, b, other)]
    monkeypatch.setattr(api, "list_models", lambda extra=(): infos + [api.inspect_model(str(f)) for f in
                                                                      sorted(folder.glob("merged*.safetensors"))])
    win = make_window(models_dir=str(folder))
    win.model_panel.refresh()
    dialog = win.merge_dialog()
    dialog.b.setCurrentIndex(1)
    dialog.multiplier.setValue(0.25)
    assert not dialog.c.isEnabled()
    with qtbot.waitSignal(dialog.merged, timeout=120000) as done:
        assert dialog.start()
    assert done.args == [str(folder / "merged.safetensors")]
    assert win.model_panel.combo.currentData() == str(folder / "merged.safetensors")
    assert "Done" in dialog.status.text() and dialog.bar.value() == 100
    assert not dialog.start() and "already in the models folder" in dialog.status.text()
    dialog.mode.setCurrentIndex(1)
    dialog.name.setText("merged-diff")
    assert dialog.c.isEnabled()
    with qtbot.waitSignal(dialog.merged, timeout=120000):
        assert dialog.start()
    dialog.b.setCurrentIndex(2)
    dialog.name.setText("merged-bad")
    assert dialog.start()
    qtbot.waitUntil(lambda: dialog.merge_button.isEnabled(), timeout=120000)
    assert "Merge failed" in dialog.status.text() and "different families" in dialog.status.text()
    assert not (folder / "merged-bad.safetensors").exists()
