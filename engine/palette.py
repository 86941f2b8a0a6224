"""Display colours of a model's label classes: the shapes world's own region colours where the names are the world's,
otherwise the PASCAL VOC colour map (bits of the class id spread over the high bits of R, G and B)."""
from __future__ import annotations


def voc_color(i: int) -> tuple[int, int, int]:
    r = g = b = 0
    for bit in range(8):
        r |= ((i >> 0) & 1) << (7 - bit)
        g |= ((i >> 1) & 1) << (7 - bit)
        b |= ((i >> 2) & 1) << (7 - bit)
        i >>= 3
    return r, g, b


def label_colors(names: tuple[str, ...] | list[str]) -> tuple[tuple[int, int, int], ...]:
    """One RGB triple per class name; class 0 of COCO-Stuff style sets gets VOC colour 1 (VOC 0 is black)."""
    from engine.world.scene import REGION_RGB, REGIONS, SHAPES

    world = {name: tuple(int(c) for c in REGION_RGB[k]) for k, name in enumerate(REGIONS)}
    world.update(zip(SHAPES, ((235, 60, 70), (250, 200, 40), (60, 200, 230), (240, 120, 230))))
    if names and all(n in world for n in names):
        return tuple(world[n] for n in names)
    return tuple(voc_color(i + 1) for i in range(len(names)))
