"""The cluttered background of the generated datasets (``shapes``, ``shape_classes``): a vertical
gradient between two random colours, Gaussian pixel noise and random distractor lines, optionally small
specks and a blur, so that neither a flat colour nor an edge tells an object from the background."""
import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _randint(rng, low_high):
    return int(rng.integers(*low_high))


def _rgb(rng, low_high):
    return tuple(int(v) for v in rng.integers(*low_high, 3))


def cluttered_background(rng, size, *, gradient, noise, lines, line_colour, line_width, specks=None, blur=0.0):
    """A (size, size) RGB image drawn from ``rng``. Ranges are ``(low, high)``, high excluded: ``gradient``
    of the two end colours' channels (top and bottom), ``lines`` of the number of lines, ``line_colour`` of
    their channels, ``line_width`` of their widths, ``specks`` (or None) of the number of dots of radius
    1-3 in any colour. ``noise``: standard deviation of the pixel noise; ``blur``: Gaussian blur radius."""
    top, bottom = rng.integers(*gradient, 3), rng.integers(*gradient, 3)
    t = np.linspace(0, 1, size)[:, None, None]
    img = top * (1 - t) + bottom * t + rng.normal(0, noise, (size, size, 3))
    image = Image.fromarray(np.clip(np.broadcast_to(img, (size, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(_randint(rng, lines)):
        points = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(points, fill=_rgb(rng, line_colour), width=_randint(rng, line_width))
    for _ in range(_randint(rng, specks) if specks else 0):
        x, y = rng.integers(0, size, 2)
        r = _randint(rng, (1, 4))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_rgb(rng, (0, 255)))
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image
