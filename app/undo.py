"""A pure-Python undo stack of commands (Qt's QUndoStack pattern without Qt): one user edit = one command."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np


class Command:
    """An edit that can be undone and redone; `text` describes it, `changes` names the document parts it touches."""

    def redo(self, doc) -> None:
        raise NotImplementedError

    def undo(self, doc) -> None:
        raise NotImplementedError


@dataclass
class PatchCommand(Command):
    """A rectangle of one layer before and after (brush strokes, fills)."""

    text: str
    layer: str
    y0: int
    x0: int
    before: np.ndarray
    after: np.ndarray

    @property
    def changes(self):
        return (self.layer,)

    def _put(self, doc, data: np.ndarray) -> None:
        arr = getattr(doc, self.layer)
        arr[self.y0:self.y0 + data.shape[0], self.x0:self.x0 + data.shape[1]] = data

    def redo(self, doc) -> None:
        self._put(doc, self.after)

    def undo(self, doc) -> None:
        self._put(doc, self.before)


@dataclass
class BoxesCommand(Command):
    """The whole (small) box list before and after one box edit."""

    text: str
    before: list
    after: list
    changes: tuple[str, ...] = ("boxes",)

    def redo(self, doc) -> None:
        doc.boxes = copy.deepcopy(self.after)

    def undo(self, doc) -> None:
        doc.boxes = copy.deepcopy(self.before)


@dataclass
class RegionCommand(Command):
    """The generation-region rectangle (x, y, w, h) or None (whole canvas), before and after."""

    text: str
    before: tuple | None
    after: tuple | None
    changes: tuple[str, ...] = ("region",)

    def redo(self, doc) -> None:
        doc.region = self.after

    def undo(self, doc) -> None:
        doc.region = self.before


@dataclass
class StateCommand(Command):
    """Every layer and the boxes before and after (new image, applied result, resize)."""

    text: str
    before: dict
    after: dict
    changes: tuple[str, ...] = ("image", "mask", "labels", "boxes", "size", "region")

    def redo(self, doc) -> None:
        doc._restore_state(self.after)

    def undo(self, doc) -> None:
        doc._restore_state(self.before)


def nbytes(cmd: Command) -> int:
    """Bytes of pixel data a command holds (its arrays, also inside before/after dicts)."""
    total = 0
    for value in vars(cmd).values():
        for v in value.values() if isinstance(value, dict) else (value,):
            total += v.nbytes if isinstance(v, np.ndarray) else 0
    return total


@dataclass
class UndoStack:
    """At most `limit` steps and `max_bytes` of pixel data (Krita's undo limit and memory cap); the oldest steps go
    first, the newest always stays."""

    limit: int = 200
    max_bytes: int = 1 << 30
    done: list = field(default_factory=list)
    undone: list = field(default_factory=list)
    clean_index: int | None = 0

    def push(self, cmd: Command) -> None:
        self.done.append(cmd)
        self.undone.clear()
        if self.clean_index is not None and self.clean_index >= len(self.done):
            self.clean_index = None
        held = sum(map(nbytes, self.done))
        while len(self.done) > 1 and (len(self.done) > self.limit or held > self.max_bytes):
            held -= nbytes(self.done.pop(0))
            self.clean_index = None if self.clean_index in (None, 0) else self.clean_index - 1

    def undo(self, doc) -> Command | None:
        if not self.done:
            return None
        cmd = self.done.pop()
        cmd.undo(doc)
        self.undone.append(cmd)
        return cmd

    def redo(self, doc) -> Command | None:
        if not self.undone:
            return None
        cmd = self.undone.pop()
        cmd.redo(doc)
        self.done.append(cmd)
        return cmd

    @property
    def can_undo(self) -> bool:
        return bool(self.done)

    @property
    def can_redo(self) -> bool:
        return bool(self.undone)

    @property
    def is_clean(self) -> bool:
        return self.clean_index == len(self.done)

    def set_clean(self) -> None:
        self.clean_index = len(self.done)

    def clear(self) -> None:
        self.done.clear()
        self.undone.clear()
        self.clean_index = 0
