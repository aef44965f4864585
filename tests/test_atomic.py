"""Atomic publishing (ge_detectron.atomic) and the skipping of unreadable images (data.sanitize):
what a reader sees when a writer fails or another process publishes first, and which errors count
as an unreadable image."""
import os

import pytest
from detectron2.data.detection_utils import SizeMismatchError
from PIL import Image

from ge_detectron.atomic import AtomicFile, atomic_folder
from ge_detectron.data.sanitize import SkipUnreadableImages


def test_a_file_appears_only_when_its_write_completes(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with AtomicFile(str(path), "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with AtomicFile(str(path), "w") as f:
        f.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_a_folder_appears_whole_and_a_folder_published_first_is_kept(tmp_path):
    target = tmp_path / "parent" / "split"
    with pytest.raises(RuntimeError):
        with atomic_folder(str(target)) as tmp:
            (open(os.path.join(tmp, "a.png"), "w")).close()
            raise RuntimeError("killed")
    assert not (tmp_path / "parent").exists() or os.listdir(tmp_path / "parent") == []
    with atomic_folder(str(target)) as tmp:
        assert not target.exists()  # nothing at the final name while it is being written
        (open(os.path.join(tmp, "first"), "w")).close()
    with atomic_folder(str(target)) as tmp:  # a second writer of the same folder
        (open(os.path.join(tmp, "second"), "w")).close()
    assert os.listdir(target) == ["first"] and os.listdir(tmp_path / "parent") == ["split"]


def raising(error):
    def mapper(dataset_dict):
        raise error
    return mapper


def pil_value_error(dataset_dict):
    Image.new("RGB", (-1, 4))  # PIL: ValueError("Width and height must be >= 0")


@pytest.mark.parametrize("mapper", [raising(FileNotFoundError("gone")), raising(SyntaxError("broken PNG chunk")),
                                    raising(SizeMismatchError("mismatched image size")), pil_value_error,
                                    raising(Image.DecompressionBombError("too many pixels"))],
                         ids=["missing", "png chunk", "size mismatch", "PIL ValueError", "decompression bomb"])
def test_errors_of_reading_an_image_skip_it(mapper):
    skip = SkipUnreadableImages(mapper)
    assert skip({"file_name": "x.jpg"}) is None and skip.skipped == 1


def test_other_errors_of_the_mapper_are_raised():
    for error in (ValueError("Cannot transform the polygon"), KeyError("bbox"), TypeError("bad annotation")):
        with pytest.raises(type(error)):
            SkipUnreadableImages(raising(error))({"file_name": "x.jpg"})
