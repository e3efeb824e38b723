"""save_rows: the labelled PNG grids of the demo, the examples and the doc pictures."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from latent_transforms import visualize
from latent_transforms.validation import WrongTypeError
from latent_transforms.visualize import draw_rows, save_rows


def test_grid_layout_and_pixels(tmp_path):
    grey = torch.zeros(3, 1, 4, 4)
    grey[1] = 1.0                                    # white second image
    colour = torch.zeros(2, 3, 4, 4)
    colour[0, 0] = 1.0                               # red first image
    path = save_rows({"grey": grey, "colour": colour}, tmp_path / "sub" / "dir" / "grid.png", cell=8,
                     label_width=20)  # the folders made, parents too
    im = np.asarray(Image.open(path))
    assert im.shape == (2 * (8 + 2), 20 + 3 * (8 + 2), 3)  # rows x (label + widest row)
    assert (im[0:8, 30:38] == 255).all()                   # grey row, image 1: white in all channels
    assert (im[0:8, 20:28] == 0).all()                     # grey row, image 0: black
    assert (im[10:18, 20:28] == [255, 0, 0]).all()         # colour row, image 0: red, upscaled to the cell
    assert (im[10:18, 40:48] == 255).all()                 # colour row has 2 images: the third cell stays white


def test_the_grid_is_as_wide_as_its_longest_row_wherever_that_row_is(tmp_path):
    """A later row longer than the first (originals, then more samples of a method) is drawn whole, not cut at the
    first row's width."""
    path = save_rows({"short": torch.ones(1, 1, 4, 4), "long": torch.zeros(3, 1, 4, 4)}, tmp_path / "g.png", cell=8,
                     label_width=20)
    im = np.asarray(Image.open(path))
    assert im.shape == (2 * (8 + 2), 20 + 3 * (8 + 2), 3)
    assert (im[10:18, 40:48] == 0).all()  # the long row's third image, black on the white canvas
    assert (im[0:8, 30:38] == 255).all()   # the short row's second cell stays white


def test_a_non_square_image_keeps_its_shape(tmp_path):
    # a codec of 4x8 images had its training picture (train_codec's NAME.png, drawn by draw_rows) squeezed square
    rows = {"w": torch.zeros(2, 1, 4, 8), "s": torch.full((1, 1, 4, 4), 0.5)}  # labels within label_width
    im = np.asarray(Image.open(save_rows(rows, tmp_path / "g.png", cell=8, label_width=20)))
    assert im.shape == (2 * (8 + 2), 20 + 2 * (16 + 2), 3)              # the widest row: two images 16 wide
    assert (im[0:8, 20:36] == 0).all() and (im[0:8, 38:54] == 0).all()  # each 8 high, 16 wide
    assert (im[10:18, 20:28] == 128).all() and (im[10:18, 28:36] == 255).all()  # a square one stays 8 wide


def test_a_non_square_image_is_drawn_to_the_nearest_pixel_and_at_least_one_wide():
    # mutation round 42: widths truncated (10 for 8 * 4 / 3) or a thin image at a small cell drawn 0 wide (an error)
    assert draw_rows({"a": torch.zeros(2, 1, 3, 4)}, cell=8, label_width=0).size == (2 * (11 + 2), 8 + 2)
    assert draw_rows({"a": torch.zeros(1, 1, 4, 1)}, cell=1, label_width=0).size == (1 + 2, 1 + 2)


@pytest.mark.parametrize("rows, match", [
    ({}, "rows is empty"),
    ({"a": torch.rand(2, 3, 4)}, r"rows\['a'\] must have shape \(B, C, H, W\)"),
    ({"a": torch.full((1, 3, 4, 4), float("nan"))}, r"rows\['a'\] contains NaN"),
    ({"a": torch.full((1, 3, 4, 4), 2.0)}, r"rows\['a'\].*\[0, 1\]"),
    ({"a": torch.rand(1, 2, 4, 4)}, r"rows\['a'\] must have 1 or 3 channels, got shape \(1, 2, 4, 4\)"),
    ({"a": torch.randint(0, 255, (1, 3, 4, 4), dtype=torch.uint8)}, "float"),
])
def test_bad_rows_are_named_and_nothing_is_written(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        save_rows(rows, tmp_path / "grid.png")
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("rows, match", [
    ([torch.rand(1, 3, 4, 4)], r"rows must be a dict \{label: images\}, got list"),
    (torch.rand(1, 3, 4, 4), r"rows must be a dict \{label: images\}, got Tensor"),
    ({0: torch.rand(1, 3, 4, 4)}, r"rows' labels must be str, got int 0"),
])
def test_rows_not_a_dict_of_labelled_images_is_a_wrong_type_named(tmp_path, rows, match):
    """docs/api.md: bad input is a ValueError, an option of the wrong type a WrongTypeError (audit 388: a list of
    rows was AttributeError "'list' object has no attribute 'items'", a tensor torch's "Boolean value of Tensor ...
    is ambiguous", an int label PIL's "'int' object has no attribute 'split'")."""
    with pytest.raises(WrongTypeError, match=match):
        save_rows(rows, tmp_path / "grid.png")
    assert not (tmp_path / "grid.png").exists()


def test_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="cell must be an int >= 1"):
        save_rows({"a": torch.rand(1, 3, 4, 4)}, tmp_path / "g.png", cell=0)


def test_pixels_are_rounded_and_upscaled_without_blur(tmp_path):
    checker = torch.zeros(1, 1, 2, 2)
    checker[0, 0, 0, 0] = checker[0, 0, 1, 1] = 0.5          # 127.5: rounds to 128 (was truncated to 127)
    im = np.asarray(Image.open(save_rows({"c": checker}, tmp_path / "g.png", cell=8, label_width=0)))
    assert (im[0:4, 0:4] == 128).all() and (im[4:8, 4:8] == 128).all()  # each pixel a 4x4 block, no blending
    assert (im[0:4, 4:8] == 0).all() and (im[4:8, 0:4] == 0).all()


def test_a_bf16_image_is_drawn_at_its_values_level():
    # mutation round (audit 398): scaled in bf16, not float32, 0.39453125 (100.6 levels) became 100.5, rounded to 100
    x = torch.full((1, 1, 2, 2), 0.39453125, dtype=torch.bfloat16)  # an autocast step's output
    assert (np.asarray(draw_rows({"a": x}, cell=2, label_width=0))[0:2, 0:2] == 101).all()


def test_each_row_is_labelled_in_the_label_column_and_the_path_is_returned(tmp_path):
    target = tmp_path / "g.png"
    path = save_rows({"first": torch.ones(1, 1, 2, 2), "": torch.ones(1, 1, 2, 2)}, target, cell=20, label_width=60)
    assert isinstance(path, type(target)) and path == target
    im = np.asarray(Image.open(path))
    label, unlabelled = im[0:20, 0:60], im[22:42, 0:60]
    assert (label < 128).any()            # the text "first" drawn in black beside its row
    assert (unlabelled == 255).all()      # an empty label: nothing drawn


def test_a_path_in_the_home_folder_is_written_there(tmp_path, monkeypatch):
    # "~/pics/grid.png" was taken literally: a folder named "~" made in the current one, the picture in it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    path = save_rows({"a": torch.rand(1, 3, 4, 4)}, "~/pics/grid.png", cell=8)
    assert path == tmp_path / "home" / "pics" / "grid.png" and path.is_file() and not (tmp_path / "~").exists()
    with pytest.raises(ValueError, match=r"^path '~nosuchuser-xyz/g.png': its ~ names no home directory"):
        save_rows({"a": torch.rand(1, 3, 4, 4)}, "~nosuchuser-xyz/g.png")


def test_a_negative_label_width_is_refused(tmp_path):
    with pytest.raises(ValueError, match="label_width must be an int >= 0"):
        save_rows({"a": torch.rand(1, 3, 4, 4)}, tmp_path / "g.png", label_width=-1)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("name", ["augmented", "pictures/", "grid.txt"])
def test_a_path_without_an_image_extension_is_named(tmp_path, monkeypatch, name):
    # PIL's error read "unknown file extension: ", with nothing after the colon; mutation round 30 (audit 226): it
    # is refused before the grid is drawn and before a folder of the path is made
    monkeypatch.setattr(visualize, "draw_rows", lambda *args: pytest.fail("drawn before the path was checked"))
    with pytest.raises(ValueError, match=r"path must end in an image format's extension, such as \.png: got '.*"
                                         + name.rstrip("/") + "'"):
        save_rows({"a": torch.rand(1, 3, 4, 4)}, tmp_path / "out" / name)
    assert list(tmp_path.iterdir()) == []


def test_an_upper_case_extension_is_an_image_format(tmp_path):
    assert Image.open(save_rows({"a": torch.rand(1, 3, 4, 4)}, tmp_path / "grid.PNG")).format == "PNG"


def test_any_image_format_pil_writes_is_taken(tmp_path):
    # mutation round 23 (audit 204): the extension check takes every format PIL registers, not only .png
    assert Image.open(save_rows({"a": torch.rand(1, 3, 4, 4)}, tmp_path / "grid.jpg")).format == "JPEG"


def test_draw_rows_is_the_saved_grid_as_an_image_a_notebook_shows_inline(tmp_path):
    """In a notebook a path shows as text: the grid itself, a PIL image, shows inline as a cell's last value."""
    rows = {"a": torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0)), "b": torch.zeros(2, 3, 4, 4)}
    image = draw_rows(rows, cell=8, label_width=20)
    saved = np.asarray(Image.open(save_rows(rows, tmp_path / "g.png", cell=8, label_width=20)))
    assert np.array_equal(np.asarray(image), saved)
    assert image._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # what Jupyter displays
    with pytest.raises(ValueError, match="rows is empty"):
        draw_rows({})


def test_each_label_is_drawn_centred_beside_its_own_row():
    cell = 48
    im = np.asarray(draw_rows({"Ag": torch.rand(1, 3, 4, 4), "bp": torch.rand(1, 3, 4, 4)}, cell=cell, label_width=60))
    for r in range(2):  # the label's dark pixels, in its row's band of the label column
        ink = np.nonzero((im[r * (cell + 2):(r + 1) * (cell + 2), :60] < 128).all(2).any(1))[0]
        assert abs((ink.min() + ink.max()) / 2 - cell / 2) <= 3
