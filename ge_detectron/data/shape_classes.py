"""A deterministic, generated image-classification set ("GE shape classes") in ImageFolder layout,
for the CPU pretraining demo and the tests.

Eight classes: five shapes (circle, square, triangle, cross, ring) and three textures (stripes,
checker, dots). Each image holds one object of its class with random colours, size, position and
rotation on a cluttered background (colour gradient, noise, distractor lines), so neither colour nor
position tells the class: the shape or texture must be recognised.
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_folder
from .backgrounds import cluttered_background

CLASSES = ("circle", "square", "triangle", "cross", "ring", "stripes", "checker", "dots")
_UNIT_POLYGONS = {  # vertices on a unit-radius scale, rotated and scaled per instance
    "square": [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)],
    "triangle": [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
}


def _colour(rng):
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _texture(cls, rng, side):
    """An RGB (side, side) patch of the texture at a random angle and period, in two random colours."""
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 12)
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    u = x * math.cos(angle) + y * math.sin(angle)
    v = -x * math.sin(angle) + y * math.cos(angle)
    if cls == "stripes":
        on = np.floor(u / period) % 2 == 0
    elif cls == "checker":
        on = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    else:  # dots
        on = (u % period - period / 2) ** 2 + (v % period - period / 2) ** 2 < (period / 3.5) ** 2
    colours = np.array([_colour(rng), _colour(rng)], dtype=np.uint8)
    return Image.fromarray(colours[on.astype(np.int64)])


def make_image(cls, rng, size=64):
    """One image of class ``cls``."""
    image = cluttered_background(rng, size, gradient=(40, 216), noise=10, lines=(1, 4), line_colour=(0, 256),
                                 line_width=(1, 3))
    radius = rng.uniform(0.22, 0.36) * size
    cx, cy = rng.uniform(radius, size - radius, 2)
    if cls in ("stripes", "checker", "dots"):
        side = int(2 * radius)
        image.paste(_texture(cls, rng, side), (int(cx - radius), int(cy - radius)))
        return image
    draw = ImageDraw.Draw(image)
    ry = radius * rng.uniform(0.75, 1.0)
    box = (cx - radius, cy - ry, cx + radius, cy + ry)
    if cls == "circle":
        draw.ellipse(box, fill=_colour(rng))
    elif cls == "ring":
        draw.ellipse(box, outline=_colour(rng), width=max(2, int(radius / 3)))
    else:
        a = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(a), math.sin(a)
        draw.polygon([(cx + radius * (px * cos - py * sin), cy + radius * (px * sin + py * cos))
                      for px, py in _UNIT_POLYGONS[cls]], fill=_colour(rng))
    return image


def generate_split(root, images_per_class, seed, size=64):
    """Write ``root/<class>/<index>.png`` for every class. The folder appears whole or not at all:
    it is written under a temporary name and renamed at the end."""
    rng = np.random.default_rng(seed)
    with atomic_folder(root) as tmp:
        for cls in CLASSES:
            os.makedirs(os.path.join(tmp, cls))
        for index in range(images_per_class):
            for cls in CLASSES:
                make_image(cls, rng, size).save(os.path.join(tmp, cls, f"{index:05d}.png"))
    return root


def ensure_split(root, images_per_class, seed, size=64):
    """Generate the split at ``root`` unless it is there already; return ``root``."""
    if not os.path.isdir(root):
        generate_split(root, images_per_class, seed, size)
    return root
