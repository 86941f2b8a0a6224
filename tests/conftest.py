"""Shared test setup: Qt runs offscreen unless a display platform was chosen (pytest-qt, CI without X)."""
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
