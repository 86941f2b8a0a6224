"""Prompt syntax users know from A1111 and ComfyUI: (emphasis:1.2), [less], BREAK, <lora:name:weight> tags, and
prompt editing over the steps: [from:to:when], [to:when], [from::when] and [a|b] alternating every step.

Pure text handling (no torch): `steps` turns an edited prompt into plain prompts over step ranges, and `parse`
splits a prompt into weighted segments and the LoRAs it names; the encoder side lives in engine.tasks (weighted,
chunked text conditioning, the prompt switched over the steps) and engine.lora (merging the named files).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

UP = 1.1  # one pair of round brackets
BREAK = None  # a segment that ends the current 75-token chunk

_LORA = re.compile(r"<lora:([^<>]*)>", re.IGNORECASE)
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


class PromptError(ValueError):
    """A prompt whose markup cannot be read, with a message meant for the user."""


@dataclass
class Parsed:
    segments: list[tuple[str | None, float]] = field(default_factory=list)  # (text or BREAK, weight)
    loras: list[tuple[str, float]] = field(default_factory=list)

    @property
    def plain(self) -> str:
        text = re.sub(r"\s+", " ", " ".join(" " if t is None else t for t, _ in self.segments))
        return re.sub(r" ([,.;!?])", r"\1", text).strip()

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for _, w in self.segments) or any(t is None for t, _ in self.segments)


_EDIT = re.compile(r"\[([^\[\]:|]*):([^\[\]:|]*):\s*(\d*\.?\d+)\s*\]"  # [from:to:when], [from::when]
                   r"|\[([^\[\]:|]*):\s*(\d*\.?\d+)\s*\]"  # [to:when]
                   r"|\[([^\[\]:]*\|[^\[\]:]*)\]")  # [a|b|c]


def _at(m: re.Match, step: int, total: int) -> str:
    if m.group(6) is not None:
        options = m.group(6).split("|")
        return options[step % len(options)]
    before, after, when = (m.group(1), m.group(2), m.group(3)) if m.group(3) is not None else ("", m.group(4),
                                                                                                 m.group(5))
    w = float(when)
    return before if step < (int(w * total) if w < 1 else int(w)) else after


def steps(prompt: str, total: int) -> list[tuple[int, str]]:
    """A1111's prompt editing: [(first step after the range, the prompt over it), ...] covering steps 0..total-1;
    when below 1 is a share of the steps, from 1 on a step number. One range for a prompt without edits."""
    if "[" not in prompt or not _EDIT.search(prompt):
        return [(total, prompt)]
    out: list[tuple[int, str]] = []
    for step in range(max(total, 1)):
        text = _EDIT.sub(lambda m: _at(m, step, total), prompt)
        if out and out[-1][1] == text:
            out[-1] = (step + 1, text)
        else:
            out.append((step + 1, text))
    return out


def lora_tags(prompt: str) -> list[tuple[str, float]]:
    """<lora:name> and <lora:name:weight> tags, in order (weight 1 when left out)."""
    out = []
    for body in _LORA.findall(prompt):
        name, _, weight = body.rpartition(":") if ":" in body else (body, "", "1")
        name = name.strip()
        try:
            w = float(weight)
        except ValueError:
            name, w = body.strip(), 1.0
            if ":" in name:
                raise PromptError(f"<lora:{body}>: the weight after the last ':' must be a number") from None
        if not name:
            raise PromptError(f"<lora:{body}>: no LoRA name")
        out.append((name, w))
    return out


def emphasis(text: str) -> list[tuple[str, float]]:
    """A1111 attention syntax: (x) x1.1, [x] /1.1, (x:w) sets w, nesting multiplies, \\( is a literal bracket;
    brackets left open apply to the rest of the prompt. Adjacent segments of equal weight are merged."""
    out: list[list] = []
    stack: list[tuple[int, str]] = []

    def scale(start: int, factor: float) -> None:
        for seg in out[start:]:
            seg[1] *= factor

    for m in _TOKEN.finditer(text):
        tok, number = m.group(0), m.group(1)
        if len(tok) == 2 and tok[0] == "\\":
            out.append([tok[1], 1.0])
        elif tok in "([":
            stack.append((len(out), tok))
        elif number is not None and stack and stack[-1][1] == "(":
            scale(stack.pop()[0], float(number))
        elif tok == ")" and stack and stack[-1][1] == "(":
            scale(stack.pop()[0], UP)
        elif tok == "]" and stack and stack[-1][1] == "[":
            scale(stack.pop()[0], 1 / UP)
        else:
            out.append([tok, 1.0])
    for start, bracket in reversed(stack):
        scale(start, UP if bracket == "(" else 1 / UP)
    merged: list[list] = []
    for text_, w in out:
        if merged and abs(merged[-1][1] - w) < 1e-9:
            merged[-1][0] += text_
        else:
            merged.append([text_, w])
    return [(t, round(w, 6)) for t, w in merged]


def parse(prompt: str) -> Parsed:
    """Segments (text or BREAK, weight) and LoRA tags of a prompt."""
    loras = lora_tags(prompt)
    segments: list[tuple[str | None, float]] = []
    for text, w in emphasis(_LORA.sub(" ", prompt)):
        for i, piece in enumerate(_BREAK.split(text)):
            if i:
                segments.append((BREAK, 1.0))
            if piece:
                segments.append((piece, w))
    return Parsed(segments, loras)


def chunked(groups, room: int) -> list[list]:
    """Token groups into chunks of at most `room` tokens, as A1111 reads long prompts: a group (one word piece, or
    an embedding's vectors) that does not fit starts the next chunk, and None (BREAK) ends the current one."""
    chunks: list[list] = [[]]
    for group in groups:
        if group is None:
            if chunks[-1]:
                chunks.append([])
            continue
        if len(group) > room:
            raise PromptError(f"{len(group)} tokens in one piece: more than a chunk's {room}")
        if len(chunks[-1]) + len(group) > room:
            chunks.append([])
        chunks[-1].extend(group)
    return chunks


def plain(prompt: str) -> str:
    """The prompt's words without markup, for readers of the words themselves (planner, judge, sketch)."""
    if not any(c in prompt for c in "()[]<\\") and "BREAK" not in prompt:
        return prompt
    return parse(steps(prompt, 1000)[-1][1]).plain
