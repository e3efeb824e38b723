"""Image data sets for training codecs and for the demo: one loader, ``load_images(spec)``.

Specs:

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, intensities 0..16, so ``num_bins`` 17), with a
  fixed stratified 70/30 train/test split (``train_test_split(..., test_size=0.3, random_state=0)``).
  Needs scikit-learn (``pip install scikit-learn``; the ``demo`` extra installs it).
* ``cifar10``: torchvision's CIFAR-10, downloaded into ``data_root`` (default: ``data/`` in
  ``latent_transforms.hub.cache_dir()``).
* ``cifar10-5k``: the same download; its ``train`` split is the class-balanced 5,000-image subset the shipped CIFAR-10
  codecs were trained on and the docs' CIFAR-10 figures use (``cifar10_5k_index()``), its ``test`` split the full
  10,000-image test set.
* ``npz:PATH``: a NumPy archive with ``x`` (N, H, W, C), C 1 or 3, or (N, H, W) uint8 and optionally ``y`` (N,)
  integer labels (read from ``y`` only: another 1-D integer array of length N without ``y`` is refused as misplaced
  labels).
* ``folder:PATH``: a folder of same-sized PNG/JPEG/BMP/WebP images, either flat (no labels) or one subfolder per
  class as in torchvision's ``ImageFolder`` (labels = index of the subfolder name in sorted order). Every
  subfolder is a class and must hold images only; other files are refused; hidden names (``.x``) are skipped.

For ``npz:`` and ``folder:`` the path *is* the split: ``split`` is ignored (give the test set as its own spec).
Every loader returns ``x`` (N, C, H, W) float32 in [0, 1], ``y`` (N,) int64 or ``None``, and ``num_bins``
(the number of intensity levels: 256 for 8-bit images).
"""
from __future__ import annotations

import lzma
import math
import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from numpy.typing import NDArray
import torch

from .hub import cache_dir, offline
from .validation import MissingFileError, bad_option, check_choice, check_count, expanded_path, shown

if TYPE_CHECKING:
    from PIL import Image
    from PIL.ImageFile import ImageFile

__all__ = ["load_images", "low_data_split", "cifar10_5k_index", "describe_spec", "IMAGE_SUFFIXES", "SPLIT_SPECS",
           "CIFAR10_SPECS"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_SPLITS = ("train", "test")
CIFAR10_SPECS = ("cifar10", "cifar10-5k")  # torchvision's download, whole or the 5,000-image subset
SPLIT_SPECS = ("digits", *CIFAR10_SPECS)  # the specs with a train and a test split
DEFAULT_DATA_ROOT = ("data/ in the cache dir: $LATENT_TRANSFORMS_HOME, else $XDG_CACHE_HOME/latent-transforms or "
                     "~/.cache/latent-transforms")  # for --data-root's help


def check_data_root_used(data_root: object, specs: dict[str, str | None]) -> None:
    """Refuse a command line's ``--data-root`` when none of ``specs`` (its flag -> the spec given) downloads CIFAR-10:
    it would be ignored in silence."""
    if data_root is not None and not set(specs.values()) & set(CIFAR10_SPECS):
        raise ValueError(f"--data-root is where {' and '.join(CIFAR10_SPECS)} are downloaded, and neither "
                         f"{' nor '.join(specs)} is one of them: leave --data-root out")


def _check_split(split: str) -> None:
    check_choice("split", split, _SPLITS)


def load_images(spec: str, split: str = "train", data_root: str | os.PathLike[str] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Load images by spec (see the module doc): ``(x (N, C, H, W) float32 in [0, 1], y (N,) int64 | None, num_bins)``.
    ``split``: ``"train"`` or ``"test"`` (ignored by ``npz:`` and ``folder:``); ``data_root``: where CIFAR-10 is
    downloaded (``None``: ``data/`` in the cache dir)."""
    if not isinstance(spec, str) or not spec:
        raise bad_option(f"data spec must be a non-empty str, got {shown(spec)}", right_type=isinstance(spec, str))
    if spec == "digits":
        _check_split(split)
        return _digits(split)
    if spec in CIFAR10_SPECS:
        _check_split(split)
        x, y, num_bins = _cifar10(split, data_root)
        if spec == "cifar10-5k" and split == "train":
            index = torch.from_numpy(cifar10_5k_index(y.numpy()))
            x, y = x[index], y[index]
        return x, y, num_bins
    for kind, load in (("npz", _npz), ("folder", _folder)):
        if spec.startswith(kind + ":"):
            if not spec[len(kind) + 1:]:
                raise ValueError(f"data spec {spec!r} has no path: use {kind}:PATH")
            return load(expanded_path(spec[len(kind) + 1:], f"data spec {spec!r}"))
    try:
        guess = f"npz:{spec}" if spec.endswith(".npz") else f"folder:{spec}" if Path(spec).expanduser().is_dir() \
            else None
    except (OSError, RuntimeError, ValueError):  # too long a name, ~nosuchuser: no guess
        guess = None
    raise ValueError(f"unknown data spec {spec!r}; use {', '.join(SPLIT_SPECS)}, npz:PATH or folder:PATH"
                     + (f" (here: {guess})" if guess else ""))


def describe_spec(spec: str) -> str:
    """A short name for a data spec (``digits``, ``cifar10``, a file stem or a folder name), e.g. for file names."""
    if spec.startswith("npz:"):
        return Path(spec[4:]).stem or "npz"
    if spec.startswith("folder:"):
        return Path(spec[7:].rstrip("/\\")).name or "folder"
    return spec


# -- loaders ------------------------------------------------------------------------------------------
def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImportError(
            # not `pip install latent-transforms[demo]`: the package is not on PyPI, and zsh (macOS's shell) takes
            # the unquoted brackets for a file pattern ("no matches found")
            "the 'digits' data set needs scikit-learn (the package's 'demo' extra): pip install scikit-learn"
        ) from None
    d = load_digits()
    images, target = d.images, d.target
    idx_train, idx_test = train_test_split(np.arange(len(target)), test_size=0.3, random_state=0, stratify=target)
    idx = idx_train if split == "train" else idx_test
    x = torch.from_numpy(images[idx].astype(np.float32) / 16.0).unsqueeze(1).contiguous()
    y = torch.from_numpy(target[idx].astype(np.int64))
    return x, y, 17


def _cifar10(split: str, data_root: str | os.PathLike[str] | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    root = expanded_path(data_root, f"data root {str(data_root)!r}") if data_root is not None else cache_dir() / "data"
    try:
        ds = CIFAR10(root=str(root), train=split == "train", download=not offline())
    except (OSError, RecursionError) as e:  # offline (URLError), disk full, a redirect loop (a RuntimeError), ...:
        # torchvision's message names neither the folder nor a way out
        raise ValueError(f"could not download CIFAR-10 into {root} ({e}); put torchvision's cifar-10-python files "
                         f"there (or pass another data root), or use npz:PATH or folder:PATH data") from None
    except RuntimeError as e:  # offline, not downloaded: torchvision's "Dataset not found or corrupted"
        archive = root / CIFAR10.filename
        if not offline() and archive.is_file() and not check_integrity(str(archive), CIFAR10.tgz_md5):
            # a download whose MD5 is not CIFAR-10's ("File not found or corrupted."): not used
            raise ValueError(f"the CIFAR-10 download into {root} failed torchvision's MD5 check ({e}): corrupted or "
                             f"tampered with on the way, it was neither extracted nor read; try again (it is "
                             f"downloaded anew), or use npz:PATH or folder:PATH data") from None
        folder = root / CIFAR10.base_folder
        if not offline():  # no download failed: files there are damaged or missing (batches.meta, say)
            raise ValueError(f"CIFAR-10 in {root} could not be read ({_cifar10_damage(folder, e)}); "
                             f"remove {folder} to have it extracted or downloaded anew, or use npz:PATH or "
                             f"folder:PATH data") from None
        found = (f"CIFAR-10 in {root} is incomplete or damaged ({_cifar10_damage(folder, e)})"
                 if folder.is_dir() and any(folder.iterdir()) else f"CIFAR-10 is not in {root}")
        raise ValueError(f"{found}, and LATENT_TRANSFORMS_OFFLINE is set, which forbids downloads; put torchvision's "
                         f"cifar-10-python files there (or pass another data root), unset it, or use npz:PATH or "
                         f"folder:PATH data") from None
    x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).float().div_(255).contiguous()
    y = torch.as_tensor(ds.targets, dtype=torch.int64, device="cpu")
    return x, y, 256


def _cifar10_damage(folder: Path, error: Exception) -> str:
    """What is wrong with the extracted CIFAR-10 files in ``folder``: those missing, else those whose MD5 is not
    torchvision's, else torchvision's ``error`` (its "Dataset not found or corrupted. You can use download=True"
    names no file, and offline advises what is forbidden)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    files = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        return f"{', '.join(missing)} missing from {folder}"
    altered = [name for name, md5 in files if not check_integrity(str(folder / name), md5)]
    return f"{', '.join(altered)} in {folder} not as torchvision's MD5 sums say" if altered else str(error)


# what images of more than 8 bits are told besides making them 8-bit: how to train on every level they hold
_KEEP_LEVELS = ("; or keep every level: scale them into [0, 1] yourself and train in Python, train_codec(kind, x, ..., "
                "num_bins=N) with N their number of levels, 4096 for 12-bit data, 65536 for 16-bit "
                "(docs/training.md#python)")


def _dtype_hint(lo: float, hi: float, floats: bool) -> str:
    """How to store images of values in ``[lo, hi]`` (of a dtype other than uint8, float where ``floats``) as uint8,
    or to train on every level they hold."""
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or inf: no range to tell of
        return ""
    if lo >= 0 and hi <= 1:
        return "; floats in [0, 1]? store (x * 255).round().astype(np.uint8)"
    if floats and lo >= -0.5 and hi <= 2:  # a resize or noise overshot [0, 1]: x.round() would leave only 0 and 1
        return "; floats in [0, 1] that a step pushed past it? store (np.clip(x, 0, 1) * 255).round().astype(np.uint8)"
    if lo >= 0 and hi <= 255:
        return "; 8-bit values in another dtype? store x.round().astype(np.uint8)"
    if lo >= 0:
        return ("; 12- or 16-bit images? store (x / M * 255).round().astype(np.uint8) with M the maximum of their bit "
                "depth, 4095 for 12-bit data, 65535 for 16-bit" + _KEEP_LEVELS)
    return ("; signed values (CT in Hounsfield units, say)? store a window [lo, hi] of them, fixed for the data set, "
            "as (np.clip((x - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8)" + _KEEP_LEVELS)


def _uint8_to_tensor(x: NDArray[Any], where: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        hint = _dtype_hint(float(x.min()), float(x.max()), x.dtype.kind == "f") if x.dtype.kind in "iuf" and x.size \
            else ""
        raise ValueError(f"{where}: images must be uint8 (0..255), got dtype {x.dtype}{hint}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[0] == 0 or min(x.shape[1:3]) < 1:
        channels_first = x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[0] > 0  # empty: N > 0 is what is wrong
        hint = "; channels first? store x.transpose(0, 2, 3, 1)" if channels_first else ""
        raise ValueError(
            f"{where}: images must be (N, H, W, C) with C 1 or 3, or (N, H, W) grey, N > 0; got shape {x.shape}{hint}"
        )
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255).contiguous()


def _as_int64(y: NDArray[Any], name: str) -> NDArray[np.int64]:
    """``y`` as int64; refuses non-integer dtypes and values beyond int64 (uint64 would wrap)."""
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    if y.size and int(y.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must fit int64, got {int(y.max())}")
    return y.astype(np.int64)


def _labels(y: NDArray[Any], n: int, where: str) -> torch.Tensor:
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{where}: labels y must have shape ({n},), got {y.shape}")
    y = _as_int64(y, f"{where}: labels y")
    if n and y.min() < 0:
        raise ValueError(f"{where}: labels y must be >= 0, got {int(y.min())}")
    return torch.from_numpy(y)


def _npz(path: Path) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    if path.is_dir():
        raise ValueError(f"npz data file {str(path)!r} is a directory, not an .npz archive")
    if not path.is_file():
        raise MissingFileError(f"npz data file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic.startswith(b"PK"):  # np.load took it for a pickle and advised allow_pickle
        what = "a .npy array" if magic == b"\x93NUMPY" else f"{'an empty file' if not magic else 'not a zip file'}"
        raise ValueError(f"{path} is {what}, not an .npz archive; save the images (and labels) with "
                         f"np.savez(path, x=x, y=y)")
    try:
        # opened here, so closed whatever np.load raises: given a path, it left its own file open when the zip
        # could not be read (a ResourceWarning, and a file descriptor held until the garbage collector ran)
        with open(path, "rb") as f:
            d = np.load(f, allow_pickle=False)
            with d:
                if "x" not in d.files:
                    raise ValueError(f"{path}: no array 'x' (found {sorted(d.files)}); images are read from 'x' "
                                     f"(np.savez(path, x=images, y=labels))")
                x_np = d["x"]
                y_np = d["y"] if "y" in d.files else None
                if y_np is None:  # labels under another name would silently make an unlabelled set
                    like = [k for k in d.files if k != "x" and d[k].ndim == 1 and len(d[k]) == len(x_np)
                            and np.issubdtype(d[k].dtype, np.integer)]
                    if like:
                        raise ValueError(f"{path}: no array 'y', but {like[0]!r} looks like labels; labels are read "
                                         f"from 'y' (np.savez(path, x=x, y=labels)), and an unlabelled set holds 'x' "
                                         f"alone")
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise ValueError(f"{path} is not a readable .npz archive of plain arrays ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError) as e:  # not a zip file, truncated...
        raise ValueError(f"{path} is not a readable .npz archive ({type(e).__name__}: {e})") from None
    x = _uint8_to_tensor(x_np, str(path))
    y = _labels(y_np, x.shape[0], str(path)) if y_np is not None else None
    return x, y, 256


def _entries(folder: Path) -> tuple[list[Path], list[Path]]:
    """The subfolders and the other entries of ``folder``, sorted, skipping hidden names (``.x``)."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return [p for p in entries if p.is_dir()], [p for p in entries if not p.is_dir()]


def _special_file(path: Path) -> str | None:
    """What ``path`` is where it is no regular file once links are followed ("a FIFO", "a device", "a socket", "a link
    to nothing"; opening a FIFO waits for a writer, for ever), else ``None``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a link to nothing"
    except OSError:  # a loop of links, no permission: opening it says why
        return None
    if stat.S_ISREG(mode):
        return None
    return "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"


def _names(paths: list[Path], root: Path) -> str:
    """Up to 5 paths relative to ``root`` (``a/1.png``), for messages."""
    names = [p.relative_to(root).as_posix() for p in paths[:5]]
    return ", ".join(names) + (f", ... ({len(paths)} in all)" if len(paths) > 5 else "")


def _has_transparency(im: Image.Image) -> bool:
    """Whether a PIL image has an alpha channel (or transparency info) that is not fully opaque."""
    if "transparency" in im.info:  # palette transparency, or a colour key (PNG tRNS) in a grey or RGB image
        im = im.convert("RGBA")
    if "A" not in im.getbands():
        return False
    return cast(int, im.getchannel("A").getextrema()[0]) < 255  # one band's (min, max)


def _is_colour(im: Image.Image) -> bool:
    """Whether a PIL image holds colour: a pixel that is not grey. A grey image stored in a colour mode (a grey palette,
    as in GIFs and size-optimised PNGs, or RGB or RGBA from an editor) holds a grey image."""
    if im.mode in ("1", "L", "LA"):
        return False
    rgb = np.asarray(im.convert("RGB"))
    return not (rgb == rgb[..., :1]).all()


def _deep_mode(im: ImageFile) -> str | None:
    """The mode of a PIL image opened but not yet loaded, if it holds more than 8 bits per channel (``I;16``, ``F``;
    ``RGB;16B`` for a 16-bit RGB PNG, which PIL opens as 8-bit ``RGB``, dropping the low byte), else ``None``."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return im.mode
    for tile in im.tile:  # (decoder, box, offset, args): args the raw mode, or a tuple that starts with it
        raw = tile[3][0] if isinstance(tile[3], tuple) and tile[3] else tile[3]
        if isinstance(raw, str) and raw.rsplit(";", 1)[-1] in ("16B", "16L"):  # not a 16-bit BMP's BGR;16 (5-6-5)
            return raw
    return None


def _folder(root: Path) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    from PIL import Image

    if root.is_file():
        raise ValueError(f"image folder {str(root)!r} is a file, not a folder")
    if not root.is_dir():
        raise MissingFileError(f"image folder {str(root)!r} does not exist")
    classes, top = _entries(root)
    if classes and top:
        raise ValueError(
            f"{root} mixes files ({_names(top, root)}) with class subfolders ({_names(classes, root)}); "
            f"use either a flat folder of images or one subfolder per class"
        )
    files = [(f, -1) for f in top]
    for i, c in enumerate(classes):
        subfolders, contents = _entries(c)
        if subfolders:
            raise ValueError(f"class folder {c.name} in {root} holds subfolders ({_names(subfolders, root)}); "
                             f"every subfolder of {root} is a class and must hold images only")
        if not contents:
            raise ValueError(f"class folder {c.name} in {root} holds no images; every subfolder of {root} is a "
                             f"class (remove the empty ones)")
        files += [(f, i) for f in contents]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root}")
    others = [f for f, _ in files if f.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise ValueError(f"{root} holds files that are not images ({', '.join(IMAGE_SUFFIXES)}): "
                         f"{_names(others, root)}; remove or convert them")
    special = {f: what for f, _ in files if (what := _special_file(f)) is not None}
    if special:  # before any is opened: a FIFO would hang the load
        raise ValueError(f"{root} holds entries that are not regular files ({', '.join(sorted(set(special.values())))})"
                         f": {_names(list(special), root)}; remove them")
    arrays, size, colour = [], None, False
    for f, _ in files:
        try:
            # a str: Pillow 10.1 resolved a Path first, where a loop of links raised RuntimeError, not OSError
            with Image.open(os.fspath(f)) as im:
                deep = _deep_mode(im)
                im.load()
                if deep:
                    raise ValueError(f"{f}: {deep} (16-bit or float) images are not supported; convert to 8-bit"
                                     f"{_KEEP_LEVELS}")
                colour = colour or _is_colour(im)
                if _has_transparency(im):
                    raise ValueError(f"{f}: has transparent pixels, which would be dropped; flatten it onto a "
                                     f"background first")
                if size is None:
                    size = im.size
                elif im.size != size:
                    raise ValueError(
                        f"images in {root} differ in size: {_names([files[0][0]], root)} is {size[0]}x{size[1]}, "
                        f"{_names([f], root)} is {im.size[0]}x{im.size[1]} (W x H); resize them to one size first"
                    )
                arrays.append(im.copy())
        except ValueError:
            raise
        except OSError as e:
            raise ValueError(f"cannot read image {f} ({e})") from None
        except Image.DecompressionBombError as e:  # PIL's, naming no file: past twice Image.MAX_IMAGE_PIXELS
            raise ValueError(f"cannot read image {f} ({e}); if you trust the file, raise PIL.Image.MAX_IMAGE_PIXELS"
                             ) from None
    mode = "RGB" if colour else "L"
    x_np = np.stack([np.asarray(im.convert(mode), dtype=np.uint8) for im in arrays])
    x = _uint8_to_tensor(x_np, str(root))
    y = torch.tensor([c for _, c in files], dtype=torch.int64, device="cpu") if classes else None
    return x, y, 256


# -- splits -------------------------------------------------------------------------------------------
def cifar10_5k_index(y: NDArray[Any]) -> NDArray[np.intp]:
    """The sorted positions of ``cifar10-5k`` in CIFAR-10's training set, from its labels ``y: (50000,)`` int in
    torchvision's order: for each class 0..9 in turn, 500 of the class's positions drawn without replacement by
    ``rng.choice``, with one ``rng = numpy.random.default_rng(0)`` (the rule of the project's ``train-5k.npz``)."""
    y = np.asarray(y)
    if y.shape != (50000,) or y.dtype.kind not in "iu" or np.bincount(y, minlength=10).tolist() != [5000] * 10:
        raise ValueError(f"cifar10-5k is drawn from CIFAR-10's 50,000 training images, 5,000 of each of 10 classes; "
                         f"got labels of shape {y.shape}, dtype {y.dtype}: is the download complete and unchanged?")
    rng = np.random.default_rng(0)
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), 500, replace=False) for c in range(10)]))


def low_data_split(y: torch.Tensor | NDArray[Any], per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted (M,) int64 indices of ``per_class`` random samples of every class in ``y: (N,)`` integer class indices
    (a fixed low-data training subset, the same for the same ``seed``)."""
    check_count("per_class", per_class, 1)
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu()
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"y must be integers, got dtype {y.dtype}")
        y = y.numpy()
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] == 0:
        raise ValueError(f"y must be (N,) class indices with N > 0, got shape {y.shape}")
    y = torch.from_numpy(_as_int64(y, "y"))
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in torch.unique(y).tolist():
        members = (y == c).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} samples, fewer than per_class={shown(per_class)}")
        picked.append(members[torch.randperm(len(members), generator=g, device="cpu")[:per_class]])
    return torch.cat(picked).sort().values
