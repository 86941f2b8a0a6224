"""Prompt text edits as pure functions (no Qt): A1111's Ctrl+Up / Ctrl+Down emphasis nudge and its styles."""
from __future__ import annotations

import re

_WORD = re.compile(r"[\w'-]+")
_WEIGHTED = re.compile(r"\(([^()]*?):\s*([+-]?\d*\.?\d+)\)")


def _word_at(text: str, pos: int) -> tuple[int, int]:
    for m in _WORD.finditer(text):
        if m.start() <= pos <= m.end():
            return m.start(), m.end()
    return pos, pos


def nudge_weight(text: str, start: int, end: int, step: float) -> tuple[str, int, int]:
    """The selection (or the word at the cursor, or the (words:w) group the cursor is in) as (words:w) with w moved by
    step; a weight back at 1 unwraps it. Returns the new text and the selection of the words in it."""
    for m in _WEIGHTED.finditer(text):
        if m.start() <= start and end <= m.end() and (start > m.start() or end < m.end() or start == end):
            inner, weight, outer = m.group(1), float(m.group(2)), (m.start(), m.end())
            break
    else:
        if start == end:
            start, end = _word_at(text, start)
        if start == end:
            return text, start, end
        inner, weight, outer = text[start:end], 1.0, (start, end)
        if text[max(0, start - 1):start] == "(" and text[end:end + 1] == ")":
            weight, outer = 1.1, (start - 1, end + 1)
    weight = round(weight + step, 2)
    core = inner.strip()
    piece = core if abs(weight - 1.0) < 1e-9 else f"({core}:{weight:g})"
    new = text[: outer[0]] + piece + text[outer[1]:]
    first = outer[0] + (0 if piece == core else 1)
    return new, first, first + len(core)


def with_style(style: str, prompt: str) -> str:
    """A1111's styles: the style's text with {prompt} replaced by the prompt, or appended to it after a comma."""
    if not style.strip():
        return prompt
    if "{prompt}" in style:
        return style.replace("{prompt}", prompt)
    return f"{prompt.rstrip().rstrip(',')}, {style}" if prompt.strip() else style
