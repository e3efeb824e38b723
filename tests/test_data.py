"""Data loading refuses damaged or unreachable data with one message that says what and where."""
from __future__ import annotations

import gc
import io
import os
import re
import urllib.error
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from latent_transforms.data import cifar10_5k_index, describe_spec, load_images, low_data_split
from latent_transforms.validation import WrongTypeError


def test_damaged_npz_is_refused_by_name(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=x, y=np.arange(64) % 10)
    data = good.read_bytes()
    truncated, flipped = tmp_path / "truncated.npz", tmp_path / "flipped.npz"
    truncated.write_bytes(data[: len(data) // 2])  # a copy or download cut short: was zipfile.BadZipFile
    middle = len(data) // 2
    flipped.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])  # was zlib.error / CRC
    for path in (truncated, flipped):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ValueError, match=f"{path} is not a readable .npz archive"):
                load_images(f"npz:{path}")
            gc.collect()
        # np.load(path) left the file it opened open when the zip could not be read
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_an_npz_archive_of_object_arrays_is_refused_without_unpickling_them(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([None, 1], dtype=object))
    with pytest.raises(ValueError, match=rf"^{path} is not a readable .npz archive of plain arrays \(Object arrays "
                                         rf"cannot be loaded when allow_pickle=False\)$"):
        load_images(f"npz:{path}")


@pytest.mark.parametrize("spec, name", [("folder:/data/pets/", "pets"), ("folder:/", "folder"),
                                        ("npz:/data/train.npz", "train"), ("digits", "digits")])
def test_a_data_spec_is_described_by_its_file_stem_or_folder_name(spec, name):
    assert describe_spec(spec) == name  # a folder spec had no test (coverage audit 188)


@pytest.mark.parametrize("spec, error", [("", ValueError), (None, WrongTypeError), (Path("x.npz"), WrongTypeError)])
def test_a_data_spec_that_is_no_string_or_empty_is_named(spec, error):
    with pytest.raises(error, match=rf"^data spec must be a non-empty str, got {re.escape(repr(spec))}$") as e:
        load_images(spec)
    assert isinstance(e.value, TypeError) == (error is WrongTypeError)  # a wrong type, as for every option


@pytest.mark.parametrize("content, what", [
    (b"x,y\n1,2\n", "not a zip file"),  # a CSV under an .npz name: was numpy's advice to set allow_pickle
    (b"", "an empty file"),
    (None, "a .npy array"),
])
def test_a_file_that_is_no_npz_archive_says_what_it_is(tmp_path, content, what):
    path = tmp_path / "x.npz"
    if content is None:
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 4, 4), dtype=np.uint8))
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{path} is {what}, not an .npz archive; save the images \(and labels\) "
                                         rf"with np.savez\(path, x=x, y=y\)$") as e:
        load_images(f"npz:{path}")
    assert "pickle" not in str(e.value)


def test_uint64_labels_up_to_int64s_largest_value_are_taken(tmp_path):
    # the bound of "must fit int64" is int64's largest value itself (mutation round 352: refusing it passed every test)
    path = tmp_path / "top.npz"
    np.savez(path, x=np.zeros((2, 4, 4), np.uint8), y=np.array([0, 2**63 - 1], dtype=np.uint64))
    assert load_images(f"npz:{path}")[1].tolist() == [0, 2**63 - 1]


def test_cifar10_that_cannot_be_downloaded_says_where_and_what_else(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(ValueError, match=f"could not download CIFAR-10 into {tmp_path} .*npz:PATH"):
        load_images("cifar10", "train", tmp_path)


def test_cifar10_is_not_downloaded_offline(tmp_path, monkeypatch):
    # LATENT_TRANSFORMS_OFFLINE=1 "forbids downloads" (docs/hub.md), but `train --data cifar10` still downloaded
    import torchvision.datasets.utils

    def download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", download)
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(ValueError, match=f"CIFAR-10 is not in {tmp_path}, and LATENT_TRANSFORMS_OFFLINE is set, "
                                         f"which forbids downloads; .*npz:PATH"):
        load_images("cifar10", "test", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_files_that_fail_the_md5_check_are_neither_unpickled_nor_extracted(tmp_path, monkeypatch):
    # CIFAR-10's batches are pickles: torchvision reads them, and extracts its archive, only once their MD5 is the
    # official one. Online, a tampered download was reported as "LATENT_TRANSFORMS_OFFLINE is set", which it was not
    import pickle
    import tarfile

    import torchvision.datasets.utils

    class Payload:
        def __reduce__(self):
            return Path.touch, (tmp_path / "unpickled",)

    root = tmp_path / "root"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (root / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(Payload()))

    def tampered(url, path, *args, **kwargs):  # the archive as a hostile server sends it: a member climbs out
        with tarfile.open(path, "w:gz") as tar:
            member = tarfile.TarInfo("../escaped")
            tar.addfile(member, io.BytesIO(b""))

    monkeypatch.setattr(torchvision.datasets.utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(torchvision.datasets.utils, "_urlretrieve", tampered)
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(ValueError, match=f"^CIFAR-10 in {root} is incomplete or damaged \\(data_batch_1, .*, "
                                         f"test_batch, batches.meta in .* not as torchvision's MD5 sums say\\), and "
                                         f"LATENT_TRANSFORMS_OFFLINE is set"):
        load_images("cifar10", "train", root)
    monkeypatch.delenv("LATENT_TRANSFORMS_OFFLINE")
    with pytest.raises(ValueError, match=f"the CIFAR-10 download into {root} failed torchvision's MD5 check "
                                         r"\(File not found or corrupted.\): corrupted or tampered with"):
        load_images("cifar10", "train", root)
    assert (root / "cifar-10-python.tar.gz").is_file()  # it was downloaded, and refused
    assert not (tmp_path / "unpickled").exists() and not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("archive", [True, False])  # kept from the download, or the extracted files alone
def test_cifar10_whose_metadata_file_is_missing_is_not_blamed_on_a_download(tmp_path, monkeypatch, archive):
    # torchvision checks the data batches' MD5 before downloading, batches.meta only after reading them: with the
    # batches whole and batches.meta gone, its RuntimeError was reported as a download that failed the MD5 check,
    # "try again (it is downloaded anew)", where nothing was downloaded and trying again fails the same way
    import pickle

    import torchvision.datasets.cifar
    import torchvision.datasets.utils

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:  # tiny stand-ins, taken as whole
        (folder / name).write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}))
    if archive:
        (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"the archive, whole")

    def whole(path, md5=None):  # the batches and the archive pass their MD5 check
        return Path(path).is_file() and Path(path).parent in (folder, tmp_path)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", whole)
    monkeypatch.setattr(torchvision.datasets.utils, "check_integrity", whole)
    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive",
                        lambda *args, **kwargs: pytest.fail("a download was attempted"))
    with pytest.raises(ValueError, match=rf"^CIFAR-10 in {tmp_path} could not be read \(batches.meta missing from "
                                         rf"{folder}\); remove {folder} to have it extracted or downloaded anew, "
                                         rf"or use npz:PATH or folder:PATH data$"):
        load_images("cifar10", "test", tmp_path)
    # offline, the same folder was reported as "CIFAR-10 is not in ..." where five batches of it were
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(ValueError, match=rf"^CIFAR-10 in {tmp_path} is incomplete or damaged \(batches.meta missing "
                                         rf"from {folder}\), and LATENT_TRANSFORMS_OFFLINE is set, which forbids "
                                         rf"downloads; .*npz:PATH or folder:PATH data$"):
        load_images("cifar10", "test", tmp_path)


def test_cifar10_offline_whose_files_all_check_out_reports_torchvisions_error(tmp_path, monkeypatch):
    # every file there and as its MD5 says, yet torchvision raised: its own words, not an empty list of files
    import torchvision.datasets
    import torchvision.datasets.utils
    from torchvision.datasets import CIFAR10

    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    for name, _ in [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], None]]:
        (folder / name).write_bytes(b"whole")

    class Unreadable(CIFAR10):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the reason torchvision gave")

    monkeypatch.setattr(torchvision.datasets.utils, "check_integrity", lambda path, md5=None: True)
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Unreadable)
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(ValueError, match=rf"^CIFAR-10 in {tmp_path} is incomplete or damaged \(the reason torchvision "
                                         rf"gave\), and LATENT_TRANSFORMS_OFFLINE is set"):
        load_images("cifar10", "test", tmp_path)


def test_cifar10_whose_download_loops_through_redirects_is_a_failed_download(tmp_path, monkeypatch):
    # torchvision raises RecursionError, a RuntimeError, past 3 redirects: it was reported as an MD5 check failure
    import torchvision.datasets.utils

    class Redirect:  # every request is sent one address further
        def __init__(self, request):
            self.url = request.full_url + "/next"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torchvision.datasets.utils.urllib.request, "urlopen", Redirect)
    with pytest.raises(ValueError, match=rf"^could not download CIFAR-10 into {tmp_path} \(Request to https://\S+ "
                                         rf"exceeded 3 redirects.*\); put torchvision's cifar-10-python files there"):
        load_images("cifar10", "train", tmp_path)
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()


@pytest.mark.parametrize("mode, key", [("RGB", (0, 0, 0)), ("L", 0)])
def test_folder_spec_refuses_a_colour_key_transparency(tmp_path, mode, key):
    # a grey or RGB PNG with a tRNS colour key has transparent pixels but no alpha band: it was loaded silently,
    # its transparent pixels kept as the key colour
    from PIL import Image

    root = tmp_path / "keyed"
    root.mkdir()
    im = Image.new(mode, (4, 6), key)
    im.paste(Image.new(mode, (2, 6), (200, 200, 200) if mode == "RGB" else 200), (2, 0))
    im.save(root / "keyed.png", transparency=key)
    with pytest.raises(ValueError, match="keyed.png: has transparent pixels"):
        load_images(f"folder:{root}")


@pytest.mark.parametrize("spec", ["npz:", "folder:"])
def test_a_spec_without_a_path_is_refused(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "folder:" scanned the current directory
    with pytest.raises(ValueError, match=f"data spec '{spec}' has no path"):
        load_images(spec)


def test_an_npz_with_another_float_array_of_one_value_per_image_is_an_unlabelled_set(tmp_path):
    # only an integer array of length N without 'y' is refused as misplaced labels; per-image weights are not labels
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    np.savez(tmp_path / "weights.npz", x=x, w=np.linspace(0, 1, 5))
    images, y, _ = load_images(f"npz:{tmp_path / 'weights.npz'}")
    assert y is None and images.shape == (5, 1, 6, 4)


def test_npz_with_negative_labels_or_four_channels_is_refused(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "neg.npz", x=x, y=np.array([0, 1, -1, 2, 3]))
    with pytest.raises(ValueError, match="labels y must be >= 0, got -1"):
        load_images(f"npz:{tmp_path / 'neg.npz'}")
    rgba = np.concatenate([x, np.full((5, 6, 4, 1), 255, np.uint8)], axis=-1)
    np.savez(tmp_path / "rgba.npz", x=rgba)
    with pytest.raises(ValueError, match=r"C 1 or 3.*got shape \(5, 6, 4, 4\)$"):  # not "channels first?"
        load_images(f"npz:{tmp_path / 'rgba.npz'}")


def test_a_folder_of_grey_palette_images_stays_one_channel(tmp_path):
    """Audit 134: a grey image stored with a palette (GIFs, size-optimised PNGs) counted as colour, so a grey data set
    silently became RGB, and a codec trained on it took 3-channel images."""
    from PIL import Image

    root = tmp_path / "palette"
    root.mkdir()
    grey = np.random.default_rng(0).integers(0, 256, (2, 6, 4), dtype=np.uint8)
    for i, image in enumerate(grey):
        Image.fromarray(image).convert("P").save(root / f"{i}.png")
    x, _, _ = load_images(f"folder:{root}")
    assert torch.equal(x, torch.from_numpy(grey).unsqueeze(1) / 255)
    Image.fromarray(np.zeros((6, 4, 3), np.uint8) + np.array([200, 0, 0], np.uint8)).convert("P").save(root / "red.png")
    assert load_images(f"folder:{root}")[0].shape == (3, 3, 6, 4)  # a colour palette makes all RGB, as a colour mode


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_grey_image_stored_in_a_colour_mode_keeps_a_grey_folder_one_channel(tmp_path, mode):
    """Audit 421: one grey image saved as RGB or opaque RGBA (by an editor, a screenshot tool) among grey ones made the
    whole set RGB without a word, and a codec trained on it took 3-channel images at 3 times the cost."""
    from PIL import Image

    root = tmp_path / mode
    root.mkdir()
    grey = np.random.default_rng(0).integers(0, 256, (3, 6, 4), dtype=np.uint8)
    for i, image in enumerate(grey):
        Image.fromarray(image).convert(mode if i == 1 else "L").save(root / f"{i}.png")
    x, _, _ = load_images(f"folder:{root}")
    assert torch.equal(x, torch.from_numpy(grey).unsqueeze(1) / 255)


def test_a_folder_is_rgb_if_any_image_is_colour_and_grey_if_none_is(tmp_path):
    """Whichever image comes first: one colour image (RGB or a colour palette) among grey ones makes the set RGB; grey
    images with an opaque alpha channel (LA) and black-and-white ones (1) stay one channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for colour_mode in ("RGB", "P"):
        root = tmp_path / colour_mode
        root.mkdir()
        Image.fromarray(rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)).convert(colour_mode).save(root / "0.png")
        for i in (1, 2):  # after the colour one
            Image.fromarray(rng.integers(0, 256, (6, 4), dtype=np.uint8)).save(root / f"{i}.png")
        assert load_images(f"folder:{root}")[0].shape == (3, 3, 6, 4)
    grey = rng.integers(0, 256, (2, 6, 4), dtype=np.uint8)
    for grey_mode in ("LA", "1"):  # grey with an opaque alpha, and black and white (bilevel)
        root = tmp_path / grey_mode
        root.mkdir()
        images = [Image.fromarray(image).convert(grey_mode) for image in grey]
        for i, image in enumerate(images):
            image.save(root / f"{i}.png")
        x, _, _ = load_images(f"folder:{root}")
        want = np.stack([np.asarray(image.convert("L")) for image in images])
        assert torch.equal(x, torch.from_numpy(want).unsqueeze(1) / 255), f"{grey_mode} images not one grey channel"


def test_folder_spec_refuses_16_bit_images(tmp_path):
    from PIL import Image

    root = tmp_path / "deep"
    root.mkdir()
    Image.fromarray(np.full((6, 4), 40000, np.uint16)).save(root / "deep.png")  # a 16-bit grey PNG
    with pytest.raises(ValueError, match="deep.png: I.* \\(16-bit or float\\) images are not supported; convert to "
                                         "8-bit" + KEEPS_LEVELS):
        load_images(f"folder:{root}")


def _png(path, image: np.ndarray, colour_type: int) -> None:
    """Write ``image`` (H, W, C) uint16 as a 16-bit-per-channel PNG of ``colour_type`` (2 RGB, 4 grey and alpha, 6
    RGBA), which PIL cannot write."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in image)
    header = struct.pack(">IIBBBBB", image.shape[1], image.shape[0], 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels, colour_type", [(3, 2), (4, 6), (2, 4)])
def test_folder_spec_refuses_16_bit_colour_images(tmp_path, channels, colour_type):
    """Audit 421: PIL opens a 16-bit-per-channel RGB, RGBA or grey-and-alpha PNG as an 8-bit mode, keeping the high
    byte, so where a 16-bit grey PNG is refused these lost their low byte without a word."""
    root = tmp_path / "deep"
    root.mkdir()
    image = np.random.default_rng(0).integers(0, 65536, (6, 4, channels), dtype=np.uint16)
    if channels != 3:
        image[..., -1] = 65535  # an opaque alpha
    _png(root / "deep.png", image, colour_type)
    with pytest.raises(ValueError, match="deep.png: .*;16B \\(16-bit or float\\) images are not supported; convert "
                                         "to 8-bit" + KEEPS_LEVELS):
        load_images(f"folder:{root}")


def test_folder_spec_reads_a_16_bit_bmp_of_fewer_bits_per_channel(tmp_path):
    """A 16-bit BMP packs 5, 6 and 5 bits per channel (PIL's raw mode BGR;16): not refused as 16 bits per channel."""
    import struct

    from PIL import Image

    root = tmp_path / "packed"
    root.mkdir()
    pixels = struct.pack("<8H", *(i << 11 | (7 - i) << 5 | i for i in range(8)))  # 4x2: rows a multiple of 4 bytes
    info = struct.pack("<IiiHHIIiiII3I", 40, 4, 2, 1, 16, 3, len(pixels), 2835, 2835, 0, 0, 0xF800, 0x07E0, 0x001F)
    offset = 14 + len(info)
    (root / "packed.bmp").write_bytes(b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + pixels)
    x, _, _ = load_images(f"folder:{root}")
    with Image.open(root / "packed.bmp") as im:
        assert torch.equal(x[0], torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1) / 255)


def test_a_bare_npz_path_or_folder_is_answered_with_the_spec_to_use(tmp_path):
    # "unknown data spec '/p/x.npz'; use digits, cifar10, npz:PATH or folder:PATH": the fix was left to the reader
    with pytest.raises(ValueError, match=r"npz:PATH or folder:PATH \(here: npz:/p/x.npz\)"):
        load_images("/p/x.npz")
    with pytest.raises(ValueError, match=rf"\(here: folder:{tmp_path}\)"):
        load_images(str(tmp_path))
    for spec in ("bogus", "~nosuchuser-xyz/imgs", "d" * 300):  # the last two raised RuntimeError / OSError
        with pytest.raises(ValueError, match=r"folder:PATH$"):
            load_images(spec)


def test_a_class_with_exactly_per_class_samples_gives_them_all():
    y = torch.tensor([0, 1, 2] * 10)  # 10 of each class
    assert torch.equal(low_data_split(y, 10), torch.arange(30))  # was refused as "fewer than per_class" if off by one
    with pytest.raises(ValueError, match="class 0 has only 10 samples, fewer than per_class=11"):
        low_data_split(y, 11)
    # audit 422: an int of more than 4,300 digits raised Python's "Exceeds the limit (4300 digits) for integer string
    # conversion", naming nothing (validation.shown)
    with pytest.raises(ValueError, match=r"^class 0 has only 10 samples, fewer than per_class=an int near 10\*\*5000$"):
        low_data_split(y, 10**5000)


def test_cifar10_refuses_an_unknown_split_before_touching_torchvision(tmp_path, monkeypatch):
    # digits checked its split; cifar10 must too: any split but "train" silently read the test set
    import torchvision.datasets

    def cifar10(*args, **kwargs):
        raise AssertionError("CIFAR10 was built for an unknown split")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", cifar10)
    with pytest.raises(ValueError, match="split"):
        load_images("cifar10", "val", tmp_path)


@pytest.mark.parametrize("high", [256, 3])  # 0..2: not floats a step pushed past 1, to clip (audit 222)
def test_integer_images_other_than_uint8_are_not_told_they_are_floats(tmp_path, high):
    x = np.random.default_rng(0).integers(0, high, (3, 6, 4), dtype=np.int64)
    np.savez(tmp_path / "int.npz", x=x)
    with pytest.raises(ValueError, match=r"images must be uint8 \(0..255\), got dtype int64; 8-bit values in another "
                                         r"dtype\? store x.round\(\).astype\(np.uint8\)$"):
        load_images(f"npz:{tmp_path / 'int.npz'}")


KEEPS_LEVELS = (r"; or keep every level: scale them into \[0, 1\] yourself and train in Python, train_codec\(kind, x, "
                r"\.\.\., num_bins=N\) with N their number of levels, 4096 for 12-bit data, 65536 for 16-bit "
                r"\(docs/training.md#python\)$")


@pytest.mark.parametrize("top", [4095, 256])  # 256: past 8 bits, where x.round().astype(np.uint8) wraps to 0
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_12_and_16_bit_npz_images_are_told_how_to_make_them_8_bit_or_keep_them(tmp_path, dtype, top):
    # audit 134: refused without a hint, where a folder of 16-bit PNGs is told to convert to 8-bit; audit 216: 12-bit
    # data in uint16 was told to divide by 65535 only, and nothing of training on every level it holds; in int32, no
    # hint; in float32, "floats in [0, 1]? store (x * 255).round().astype(np.uint8)", which wraps them; audit 222:
    # from black (0) too, and just past 8 bits
    np.savez(tmp_path / "deep.npz", x=np.linspace(0, top, 3 * 6 * 4).astype(dtype).reshape(3, 6, 4))
    with pytest.raises(ValueError, match=r"; 12- or 16-bit images\? store \(x / M \* 255\)\.round\(\)"
                                         r"\.astype\(np.uint8\) with M the maximum of their bit depth, 4095 for "
                                         r"12-bit data, 65535 for 16-bit" + KEEPS_LEVELS):
        load_images(f"npz:{tmp_path / 'deep.npz'}")


@pytest.mark.parametrize("lo, hi", [(-1024, 3071), (-128, 127)])  # audit 222: within 255 too, where x.round() wraps
def test_signed_npz_images_are_told_to_store_a_window_or_keep_every_level(tmp_path, lo, hi):
    """CT in Hounsfield units (int16, down to -1024) was refused with no hint at all."""
    np.savez(tmp_path / "ct.npz", x=np.linspace(lo, hi, 3 * 6 * 4).astype(np.int16).reshape(3, 6, 4))
    with pytest.raises(ValueError, match=r"got dtype int16; signed values \(CT in Hounsfield units, say\)\? store a "
                                         r"window \[lo, hi\] of them, fixed for the data set, as "
                                         r"\(np.clip\(\(x - lo\) / \(hi - lo\), 0, 1\) \* 255\)\.round\(\)"
                                         r"\.astype\(np.uint8\)" + KEEPS_LEVELS):
        load_images(f"npz:{tmp_path / 'ct.npz'}")


@pytest.mark.parametrize("lo, hi", [(0.0, 1.03), (-0.02, 1.0), (0.0, 1.5)])  # 1.5: a gain (mutation round 31)
def test_float_npz_images_a_step_pushed_past_0_1_are_told_to_clip_them_not_round_them(tmp_path, lo, hi):
    """Audit 222: [0, 1] floats a resize overshot to 1.03 were told "8-bit values in another dtype? store
    x.round().astype(np.uint8)", which leaves only 0 and 1 (and the loader took those); down to -0.02, a CT window."""
    x = np.linspace(lo, hi, 3 * 6 * 4, dtype=np.float32).reshape(3, 6, 4)
    np.savez(tmp_path / "over.npz", x=x)
    with pytest.raises(ValueError, match=r"got dtype float32; floats in \[0, 1\] that a step pushed past it\? store "
                                         r"\(np.clip\(x, 0, 1\) \* 255\)\.round\(\)\.astype\(np.uint8\)$"):
        load_images(f"npz:{tmp_path / 'over.npz'}")
    np.savez(tmp_path / "over.npz", x=(np.clip(x, 0, 1) * 255).round().astype(np.uint8))  # the hint, followed
    images, _, _ = load_images(f"npz:{tmp_path / 'over.npz'}")
    assert torch.allclose(images[:, 0], torch.from_numpy(x).clamp(0, 1), atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("x", [np.array([[[0.5, float("nan")]]], np.float32), np.array([[[0.0, np.inf]]]),
                               np.zeros((0, 6, 4), np.float32), np.zeros((3, 6, 4), np.complex64)])
def test_npz_images_of_no_range_to_tell_of_get_the_dtype_alone(tmp_path, x):
    # audit 222: NaN was told the CT window and inf the bit depths; no images at all raised numpy's "zero-size array"
    np.savez(tmp_path / "odd.npz", x=x)
    with pytest.raises(ValueError, match=rf"images must be uint8 \(0..255\), got dtype {x.dtype}$"):
        load_images(f"npz:{tmp_path / 'odd.npz'}")


@pytest.mark.parametrize("shape", [(0, 6, 4, 3), (0, 6, 4), (5, 0, 4, 3), (5, 6, 0, 1)])
def test_npz_of_no_images_or_of_empty_images_is_refused(tmp_path, shape):
    np.savez(tmp_path / "empty.npz", x=np.zeros(shape, np.uint8))
    shown = shape if len(shape) == 4 else (*shape, 1)
    with pytest.raises(ValueError, match=rf"N > 0; got shape \({', '.join(map(str, shown))}\)$"):
        load_images(f"npz:{tmp_path / 'empty.npz'}")


def test_an_npz_without_x_is_named_as_such_not_as_unreadable(tmp_path):
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'nox.npz'}: no array 'x' \(found \['images'\]\); images are "
                                         r"read from 'x' \(np.savez\(path, x=images, y=labels\)\)$"):  # said no more
        load_images(f"npz:{tmp_path / 'nox.npz'}")


def test_a_folder_of_many_files_that_are_not_images_names_five_and_the_count(tmp_path):
    from PIL import Image

    root = tmp_path / "mixed"
    root.mkdir()
    Image.new("L", (4, 6)).save(root / "a.png")
    for i in range(5):
        (root / f"notes{i}.txt").write_text("notes")
    five = r": notes0.txt, notes1.txt, notes2.txt, notes3.txt, notes4.txt"
    with pytest.raises(ValueError, match=five + r"; remove or convert them$"):  # all five named: no count
        load_images(f"folder:{root}")
    (root / "notes5.txt").write_text("notes")
    with pytest.raises(ValueError, match=five + r", \.\.\. \(6 in all\); remove or convert them$"):
        load_images(f"folder:{root}")


def test_image_suffixes_in_capitals_are_images(tmp_path):
    from PIL import Image

    root = tmp_path / "caps"
    root.mkdir()
    Image.new("L", (4, 6), 10).save(root / "A.PNG", format="PNG")
    Image.new("L", (4, 6), 20).save(root / "b.JPEG", format="JPEG")
    x, y, _ = load_images(f"folder:{root}")
    assert x.shape == (2, 1, 6, 4) and y is None


# the positions in CIFAR-10's training set (uint16) and labels (uint8) of the project's train-5k.npz (sha256 3572934...,
# shared/data/cifar10), the subset the shipped CIFAR-10 codecs were trained on
CIFAR10_5K = Path(__file__).parent / "data" / "cifar10_5k.npz"


def _training_labels_drawing(index: np.ndarray, y_sub: np.ndarray, seed: int) -> np.ndarray | None:
    """CIFAR-10-shaped training labels (50,000, 5,000 per class) whose per-class draw with ``default_rng(seed)`` picks
    exactly the positions ``index`` (of labels ``y_sub``), or ``None`` if no labels do.

    A class's 500 drawn ranks fix how many of its images lie before, between and after its picked positions; the other
    45,000 positions are handed out earliest deadline first, which finds such labels whenever any exist."""
    rng = np.random.default_rng(seed)
    picked = np.full(50000, -1)
    picked[index] = y_sub
    need, end, intervals = [0] * 10, [0] * 10, []
    for c in range(10):
        ranks, positions = np.sort(rng.choice(5000, 500, replace=False)), np.sort(index[y_sub == c])
        counts = np.diff(np.concatenate([[-1], ranks, [5000]])) - 1       # class-c images in each gap
        intervals.append(iter(zip(counts.tolist(), np.append(positions, 50000).tolist())))
        need[c], end[c] = next(intervals[c])
    labels = picked.copy()
    for t in range(50000):
        if picked[t] >= 0:
            c = picked[t]
            if need[c]:
                return None
            need[c], end[c] = next(intervals[c])
            continue
        waiting = [c for c in range(10) if need[c]]
        if not waiting:
            return None
        c = min(waiting, key=end.__getitem__)
        labels[t], need[c] = c, need[c] - 1
    return labels if not any(need) else None


def test_cifar10_5k_index_draws_the_projects_subset():
    with np.load(CIFAR10_5K) as d:
        index, y_sub = d["index"].astype(np.int64), d["y"].astype(np.int64)
    labels = _training_labels_drawing(index, y_sub, seed=0)
    assert labels is not None and np.bincount(labels).tolist() == [5000] * 10
    assert np.array_equal(cifar10_5k_index(labels), index)
    assert _training_labels_drawing(index, y_sub, seed=1) is None  # another seed's draw fits no CIFAR-10 labels


def _fake_cifar10(monkeypatch, labels: np.ndarray):
    """torchvision's CIFAR10 replaced by 1x1 images whose pixel holds the position; the test split has 100."""
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            n = len(labels) if train else 100
            self.data = np.zeros((n, 1, 1, 3), dtype=np.uint8)
            self.data[:, 0, 0, 0], self.data[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
            self.targets = list(labels) if train else [i % 10 for i in range(100)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)


def test_cifar10_5k_spec_loads_the_subset_and_the_full_test_set(tmp_path, monkeypatch):
    labels = np.random.default_rng(3).permutation(np.arange(50000) % 10)
    _fake_cifar10(monkeypatch, labels)
    x, y, num_bins = load_images("cifar10-5k", "train", tmp_path)
    position = (x[:, 0, 0, 0] * 255).round().long() * 256 + (x[:, 1, 0, 0] * 255).round().long()
    assert position.tolist() == cifar10_5k_index(labels).tolist() and num_bins == 256
    assert y.tolist() == labels[position.numpy()].tolist() and torch.bincount(y).tolist() == [500] * 10
    x_test, y_test, _ = load_images("cifar10-5k", "test", tmp_path)
    assert x_test.shape == (100, 3, 1, 1) and y_test.tolist() == [i % 10 for i in range(100)]
    assert describe_spec("cifar10-5k") == "cifar10-5k"
    assert len(load_images("cifar10", "train", tmp_path)[0]) == 50000  # cifar10 itself: the whole training set


@pytest.mark.parametrize("labels, what", [(np.arange(40000) % 10, r"shape \(40000,\)"),
                                          (np.arange(50000) % 11 % 10, r"shape \(50000,\)")])
def test_cifar10_5k_refuses_a_training_set_it_was_not_drawn_from(tmp_path, monkeypatch, labels, what):
    _fake_cifar10(monkeypatch, labels)
    with pytest.raises(ValueError, match=f"cifar10-5k is drawn from CIFAR-10's 50,000 training images, 5,000 of each "
                                         f"of 10 classes; got labels of {what}, dtype int64: is the download complete"):
        load_images("cifar10-5k", "train", tmp_path)


def test_cifar10_5k_index_takes_a_list_and_refuses_labels_that_are_not_class_indices():
    labels = np.random.default_rng(3).permutation(np.arange(50000) % 10)
    assert cifar10_5k_index(labels.tolist()).tolist() == cifar10_5k_index(labels).tolist()
    for bad, what in ((labels.astype(np.float64), r"shape \(50000,\), dtype float64"),
                      (labels.reshape(50000, 1), r"shape \(50000, 1\), dtype int64")):
        with pytest.raises(ValueError, match=f"cifar10-5k is drawn from CIFAR-10's 50,000 training images, 5,000 of "
                                             f"each of 10 classes; got labels of {what}: is the download complete"):
            cifar10_5k_index(bad)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs (Windows)")
@pytest.mark.parametrize("special", ["fifo", "device", "dangling link"])
def test_a_folder_entry_that_is_no_regular_file_is_refused_before_it_is_opened(tmp_path, special):
    """Audit 429: a FIFO named like an image (or a link to one) hung the load for ever in PIL's open, waiting for a
    writer; a link to /dev/zero or to nothing was opened as an image. Named, with what it is, before any is read."""
    from PIL import Image

    root = tmp_path / "images" / "cats"
    root.mkdir(parents=True)
    Image.new("L", (4, 6)).save(root / "a.png")
    odd = root / "b.png"
    if special == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to("/dev/zero" if special == "device" else tmp_path / "gone.png")
    what = {"fifo": "a FIFO", "device": "a device", "dangling link": "a link to nothing"}[special]
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'images'))} holds entries that are not regular "
                                         rf"files \({what}\): cats/b\.png; remove them$"):
        load_images(f"folder:{tmp_path / 'images'}")


@pytest.mark.skipif(os.name == "nt", reason="a symbolic link takes a privilege on Windows")
def test_a_folder_entry_that_is_a_loop_of_links_is_named_by_the_error_of_opening_it(tmp_path):
    """Mutation round (audit 433): a link that cannot be followed but does lead somewhere (a loop of links) is no
    "link to nothing"; it is left to the open, whose error names the file and says why. Untested: the check's
    ``return None`` dropped ended in an UnboundLocalError, the open's ``raise`` dropped in a set one image short."""
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    Image.new("L", (4, 6)).save(root / "a.png")
    (root / "b.png").symlink_to(root / "b.png")
    with pytest.raises(ValueError, match=rf"^cannot read image {re.escape(str(root / 'b.png'))} \(\[Errno \d+\] "
                                         r"Too many levels of symbolic links: .*\)$"):
        load_images(f"folder:{root}")


def test_an_image_past_pils_decompression_bomb_limit_is_named(tmp_path, monkeypatch):
    """Audit 429: PIL refuses an image of more than twice Image.MAX_IMAGE_PIXELS pixels (a 48 KB PNG of 20000x20000
    pixels would take 400 MB), but its DecompressionBombError named no file of the folder. A ValueError naming it."""
    from PIL import Image

    root = tmp_path / "images"
    root.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("L", (8, 8) if name == "a.png" else (8, 9)).save(root / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 35)  # 64 pixels pass (warned of), 72 are past twice the limit
    with pytest.warns(Image.DecompressionBombWarning), \
            pytest.raises(ValueError, match=rf"^cannot read image {re.escape(str(root / 'b.png'))} \(Image size \(72 "
                                            r"pixels\) exceeds limit of 70 pixels, .*\); if you trust the file, raise "
                                            r"PIL\.Image\.MAX_IMAGE_PIXELS$"):
        load_images(f"folder:{root}")
