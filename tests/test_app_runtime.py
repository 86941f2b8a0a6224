"""The Qt binding under the app keeps Python's reference counts: a long session must not abort the interpreter."""
import sys

import pytest

pytest.importorskip("pytestqt")
from PySide6.QtWidgets import QLineEdit  # noqa: E402


def test_void_qt_calls_return_none_with_its_reference(qtbot):
    """PySide6 6.12.0 on Python 3.11 returned None from void methods without a reference, so every setText or update
    took one from None and Python died ("deallocating None") a few thousand calls into a session."""
    edit = QLineEdit()
    qtbot.addWidget(edit)
    before = sys.getrefcount(None)
    for _ in range(150):
        edit.setText("a red circle")
        edit.update()
    assert sys.getrefcount(None) - before > -30
