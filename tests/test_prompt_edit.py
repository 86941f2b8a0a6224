"""A1111's Ctrl+Up / Ctrl+Down emphasis nudge, as a pure function and on the prompt box."""
import pytest

from app.prompt_edit import nudge_weight


@pytest.mark.parametrize("text, start, end, step, want", [
    ("a red circle", 3, 3, 0.1, ("a (red:1.1) circle", 3, 6)),
    ("a (red:1.1) circle", 5, 5, 0.1, ("a (red:1.2) circle", 3, 6)),
    ("a (red:1.1) circle", 4, 6, -0.1, ("a red circle", 2, 5)),
    ("a red circle", 2, 12, -0.1, ("a (red circle:0.9)", 3, 13)),
    ("a (red) circle", 4, 4, 0.1, ("a (red:1.2) circle", 3, 6)),
    ("a (red circle:0.9) on grass", 4, 14, -0.1, ("a (red circle:0.8) on grass", 3, 13)),
    ("a red circle ", 13, 13, 0.1, ("a red circle ", 13, 13)),
])
def test_nudge_weight(text, start, end, step, want):
    assert nudge_weight(text, start, end, step) == want


def test_ctrl_up_on_the_prompt_box_is_one_undoable_edit(qtbot):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QTextCursor

    from app.document import Document
    from app.prompt_panel import PromptPanel

    doc = Document(32, 32)
    panel = PromptPanel(doc)
    qtbot.addWidget(panel)
    panel.show()
    panel.prompt.setPlainText("a red circle")
    cursor = panel.prompt.textCursor()
    cursor.setPosition(3)
    panel.prompt.setTextCursor(cursor)
    panel.prompt.setFocus()
    qtbot.keyClick(panel.prompt, Qt.Key.Key_Up, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(panel.prompt, Qt.Key.Key_Up, Qt.KeyboardModifier.ControlModifier)
    assert doc.params.prompt == "a (red:1.2) circle"
    assert panel.prompt.textCursor().selectedText() == "red"
    panel.prompt.undo()
    assert doc.params.prompt == "a (red:1.1) circle"
    panel.negative.setPlainText("blurry")
    panel.negative.moveCursor(QTextCursor.MoveOperation.End)
    panel.negative.setFocus()
    qtbot.keyClick(panel.negative, Qt.Key.Key_Down, Qt.KeyboardModifier.ControlModifier)
    assert doc.params.negative_prompt == "(blurry:0.9)"


def test_the_prompt_box_counts_tokens_per_75_token_chunk(qtbot):
    from app.document import Document
    from app.prompt_panel import PromptPanel
    from engine import api

    panel = PromptPanel(Document(32, 32))
    qtbot.addWidget(panel)
    with qtbot.waitSignal(panel.tokenizerLoaded, timeout=30000):
        panel.set_model(api.ModelInfo(path="/m/sd.safetensors", name="sd", family="sd1"))
    panel.prompt.setPlainText("a (red:1.2) circle <lora:ink:0.5>")
    assert panel.count.text() == "3/75"
    panel.prompt.setPlainText(" ".join(["red"] * 80))
    assert panel.count.text() == "80/150"
    panel.prompt.setPlainText("a cat BREAK a dog")
    assert panel.count.text() == "4/150"
    with qtbot.waitSignal(panel.tokenizerLoaded, timeout=30000):
        panel.set_model(api.ModelInfo(path="/m/sem.safetensors", name="sem", family="ldm-semantic"))
    assert panel.count.text() == ""
