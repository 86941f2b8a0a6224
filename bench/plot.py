"""Bar chart of ours/diffusers ratios (Pillow only), one bar a measure, with the target and parity lines."""
from __future__ import annotations

from pathlib import Path


def ratio_chart(rows: list[tuple[str, float, float | None]], path: Path, title: str) -> None:
    """rows: (label, ratio ours/diffusers, target or None); bars left of 1.0 mean we are faster."""
    from PIL import Image, ImageDraw

    rows = [r for r in rows if r[1] is not None]
    label_w, bar_w, row_h, top, m = 330, 360, 26, 44, 16
    w, h = label_w + bar_w + 2 * m + 50, top + row_h * max(len(rows), 1) + 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.text((m, 10), title, fill="black")
    hi = max([1.25] + [r[1] * 1.05 for r in rows])
    x_of = lambda v: label_w + m + int(bar_w * v / hi)  # noqa: E731
    for i, (label, ratio, target) in enumerate(rows):
        y = top + i * row_h
        d.text((m, y + 6), label[:52], fill="black")
        met = target is None or ratio <= target
        colour = (70, 150, 90) if met and target is not None else (90, 120, 200) if target is None else (210, 90, 70)
        d.rectangle([x_of(0), y + 4, x_of(ratio), y + row_h - 4], fill=colour)
        d.text((x_of(ratio) + 4, y + 6), f"{ratio:.2f}", fill="black")
        if target is not None:
            d.line([x_of(target), y + 1, x_of(target), y + row_h - 1], fill=(200, 0, 0), width=2)
    base = top + row_h * len(rows)
    d.line([x_of(1.0), top - 4, x_of(1.0), base], fill="black", width=1)
    for v in (0.0, 0.5, 0.85, 1.0):
        d.text((x_of(v) - 8, base + 6), f"{v:g}", fill="black")
    d.text((m, base + 22), "ours / diffusers (lower is better); red ticks: targets; green: met, red: not met, blue: no target",
           fill=(80, 80, 80))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
