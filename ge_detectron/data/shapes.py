"""A deterministic, generated COCO-format detection dataset ("GE shapes") for the CPU demo and tests.

Each image has a cluttered background (a colour gradient, noise, distractor lines and specks) and
1-5 objects of four classes that differ by shape and by colour family, at varied sizes and with
partial overlaps. Images are written as JPEG files, annotations as COCO instances JSON with a box and
an instance mask (a polygon: the outline of the drawn shape; 48 vertices on the ellipse of a circle);
"area" is the polygon's area, as in COCO. Like the box, the mask covers the whole shape, also where a
later shape is drawn over it.
"""
import json
import math
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("circle", "square", "triangle", "cross")
# Base RGB colour of each class; instances vary it by up to +-40 per channel.
_CLASS_COLOURS = ((220, 50, 50), (50, 190, 60), (50, 90, 230), (235, 200, 40))
# 1: boxes; 2: boxes and polygon masks (same images and boxes). An older split is regenerated.
FORMAT_VERSION = 2
_ELLIPSE_VERTICES = 48


def _triangle(box):
    x0, y0, x1, y1 = box
    return [((x0 + x1) / 2, y0), (x1, y1), (x0, y1)]


def _draw_object(draw, cls, box, colour):
    x0, y0, x1, y1 = box
    if cls == "circle":
        draw.ellipse(box, fill=colour)
    elif cls == "square":
        draw.rectangle(box, fill=colour)
    elif cls == "triangle":
        draw.polygon(_triangle(box), fill=colour)
    else:  # cross: two bars of a third of the side
        tx, ty = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0 + tx, y0, x1 - tx, y1), fill=colour)
        draw.rectangle((x0, y0 + ty, x1, y1 - ty), fill=colour)


def _outline(cls, box):
    """The shape's outline as a COCO polygon [x0, y0, x1, y1, ...] (what ``_draw_object`` fills)."""
    x0, y0, x1, y1 = box
    if cls == "circle":
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        angles = (2 * math.pi * i / _ELLIPSE_VERTICES for i in range(_ELLIPSE_VERTICES))
        points = [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles]
    elif cls == "square":
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    elif cls == "triangle":
        points = _triangle(box)
    else:  # cross: the union of the two bars, clockwise from the top bar's left corner
        tx, ty = (x1 - x0) / 3, (y1 - y0) / 3
        points = [(x0 + tx, y0), (x1 - tx, y0), (x1 - tx, y0 + ty), (x1, y0 + ty), (x1, y1 - ty), (x1 - tx, y1 - ty),
                  (x1 - tx, y1), (x0 + tx, y1), (x0 + tx, y1 - ty), (x0, y1 - ty), (x0, y0 + ty), (x0 + tx, y0 + ty)]
    return [round(v, 2) for point in points for v in point]


def _polygon_area(polygon):
    """The area inside a COCO polygon (shoelace formula): COCO's "area" of an annotation with a mask."""
    xs, ys = polygon[0::2], polygon[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _background(rng, size):
    h = w = size
    top, bottom = rng.integers(60, 200, 3), rng.integers(60, 200, 3)
    t = np.linspace(0, 1, h)[:, None, None]
    img = top * (1 - t) + bottom * t + rng.normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.clip(np.broadcast_to(img, (h, w, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 9)):  # distractor lines in muted colours
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(70, 170, 3)), width=int(rng.integers(1, 4)))
    for _ in range(rng.integers(5, 20)):  # small specks
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(1, 4))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return image.filter(ImageFilter.GaussianBlur(0.6))


def _make_image(rng, size, min_side, max_side):
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    boxes = []
    for _ in range(rng.integers(1, 6)):
        for _attempt in range(20):
            side = float(rng.uniform(min_side, max_side))
            aspect = float(rng.uniform(0.75, 1.33))
            bw, bh = side * math.sqrt(aspect), side / math.sqrt(aspect)
            x0, y0 = float(rng.uniform(0, size - bw)), float(rng.uniform(0, size - bh))
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(_iou(box, other) < 0.25 for other, _ in boxes):  # overlaps allowed, but partial
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        colour = tuple(int(c) for c in np.clip(np.array(_CLASS_COLOURS[cls]) + rng.integers(-40, 41, 3), 0, 255))
        _draw_object(draw, CLASSES[cls], box, colour)
        boxes.append((box, cls))
    return image, boxes


def generate_shapes_split(image_dir, json_path, num_images, seed, image_size=160, min_side=14, max_side=64):
    """Write ``num_images`` JPEGs to ``image_dir`` and their COCO instances JSON to ``json_path``.

    Both are written under temporary names and renamed, the JSON last, so that processes generating
    the same split at once (every rank of a torchrun job) never read a half-written file."""
    rng = np.random.default_rng(seed)
    tmp_dir = f"{image_dir.rstrip(os.sep)}.tmp{os.getpid()}"
    os.makedirs(tmp_dir, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, boxes = _make_image(rng, image_size, min_side, max_side)
        file_name = f"{image_id:06d}.jpg"
        image.save(os.path.join(tmp_dir, file_name), quality=92)
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size})
        for (x0, y0, x1, y1), cls in boxes:
            polygon = _outline(CLASSES[cls], (x0, y0, x1, y1))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": _polygon_area(polygon), "iscrowd": 0,
                                "segmentation": [polygon]})
    coco = {
        "info": {"description": "GE shapes: generated by ge_detectron.data.shapes", "version": FORMAT_VERSION},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }
    if os.path.isdir(image_dir):  # same seed, same bytes: an existing folder (another process's) is as good
        shutil.rmtree(tmp_dir)
    else:
        try:
            os.rename(tmp_dir, image_dir)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(tmp_dir)
    tmp = f"{json_path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(coco, f)
    os.replace(tmp, json_path)  # the JSON appears last and whole: its presence marks a finished split


def shapes_split_paths(root, split):
    return os.path.join(root, split), os.path.join(root, f"{split}.json")


def split_format_version(json_path):
    """The FORMAT_VERSION a split's JSON was written with; None if there is no JSON."""
    if not os.path.exists(json_path):
        return None
    with open(json_path) as f:
        return json.load(f).get("info", {}).get("version")


def ensure_shapes_dataset(root, num_train=600, num_val=100, seed=0, image_size=160):
    """Generate the train/val splits under ``root`` unless they exist in the current format (a split
    written by an older FORMAT_VERSION gets the current JSON; its images are the same); return ``root``."""
    for split, num, split_seed in (("train", num_train, seed), ("val", num_val, seed + 1)):
        image_dir, json_path = shapes_split_paths(root, split)
        if split_format_version(json_path) != FORMAT_VERSION:
            generate_shapes_split(image_dir, json_path, num, split_seed, image_size=image_size)
    return root
