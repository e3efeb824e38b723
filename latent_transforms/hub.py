"""Pretrained codecs: one ``.safetensors`` file per checkpoint, a registry, and a verified download cache.

A checkpoint holds the codec's ``state_dict()`` as tensors and, in the safetensors metadata,
``{"config": json.dumps(codec.config), "format": "latent-transforms/1"}``. Files are only ever read with
safetensors (never ``torch.load``/pickle), so loading one cannot run code.

``load(name)`` resolves a registry name in this order, sha256-verifying every file before use:
the in-process cache, the user cache dir (``$LATENT_TRANSFORMS_HOME``, default
``$XDG_CACHE_HOME/latent-transforms`` or ``~/.cache/latent-transforms``), the files shipped in
``latent_transforms/checkpoints/``, then ``$LATENT_TRANSFORMS_HUB_URL/<file>`` (http, https or file URLs;
there is no default remote). ``LATENT_TRANSFORMS_OFFLINE=1`` forbids downloads and
``LATENT_TRANSFORMS_HUB_TIMEOUT`` sets the network timeout in seconds (default 60): the longest wait for the
server to connect, answer or send more data, not a limit on the whole download.

The registry of names is, in this order (a later source shadows an earlier one): the shipped
``latent_transforms/checkpoints/registry.json``, the user registry ``cache_dir() / "registry.json"`` (same format;
``register(..., persist=True)`` and ``latent-transforms register`` write it, ``unregister(..., persist=True)`` and
``latent-transforms unregister`` remove from it; it may not redefine a shipped name), then this process's
``register()`` calls.
"""
from __future__ import annotations

import contextlib
import copy
import enum
import errno
import glob
import hashlib
import http.client
import json
import math
import os
import re
import shlex
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from .torch_defaults import cpu_as_default_device
from .validation import (MissingFileError, NotAFileError, WrongTypeError, bad_option, check_bool, close_names,
                         expanded_path, file_in_the_way, resolve_device, state_mismatch)

if TYPE_CHECKING:
    from .codecs import Codec

FORMAT = "latent-transforms/1"
_SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
_URL_SCHEMES = ("http", "https", "file")
_DEFAULT_TIMEOUT = 60.0
_STORAGE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_CHUNK = 1 << 20
_MAX_FILENAME_BYTES = 240  # a download's temp name, ".<file>.XXXXXXXX.part" (15 more), must stay within 255 bytes
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NETLOC = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*:)?//([^/?#]*)")  # a URL's scheme and host part (RFC 3986)
# a user name or password a network error's reason quotes: a URL's (urllib's refusal of a redirect names the URL) and
# http.client's port of "user:password@host" ("nonnumeric port: 'password@host'"); not any "@" (a path's, an address)
_QUOTED_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://|nonnumeric port: ')[^\s/?#'\"]*@")
_HUB_URL = "LATENT_TRANSFORMS_HUB_URL"  # the environment variable naming the base URL checkpoints are fetched from
_MAX_NAME_CHARS = 200  # a registry name's length
_SEPARATORS = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())

_registered: dict[str, dict[str, Any]] = {}  # runtime entries from register(), shadowing the shipped registry
_loaded: dict[tuple[str, str, str], "Codec"] = {}  # (name, device, sha256) -> frozen codec
_lock = threading.Lock()  # guards _registered, _loaded and _load_locks
_load_locks: dict[tuple[str, str, str], threading.Lock] = {}
_cache_dir_thread_lock = threading.RLock()  # with a file lock: one registry edit or download at a time


class _HeldDirs(threading.local):
    """The cache dirs this thread holds ``_cache_dir_lock`` on (``dirs``)."""

    def __init__(self) -> None:
        self.dirs: set[Path] = set()


_cache_dir_held = _HeldDirs()


class HubError(RuntimeError):
    """A checkpoint could not be found, downloaded or verified."""


class UnknownCheckpointError(HubError, KeyError, ValueError):
    """A name that is neither a registered checkpoint nor an existing file: a ``ValueError``, as every unknown name the
    package is given (a codec kind, a data spec; torchvision's ``get_model``), and still a ``HubError`` and a
    ``KeyError``, as it was, so that code catching any of them keeps working."""

    def __str__(self) -> str:
        return str(self.args[0])


# -- files ----------------------------------------------------------------------------------------
_SET_HOME = "set LATENT_TRANSFORMS_HOME to an absolute path"  # where cache_dir cannot expand a ~


def cache_dir() -> Path:
    """The user cache dir: ``$LATENT_TRANSFORMS_HOME``, else ``$XDG_CACHE_HOME/latent-transforms`` (a relative
    ``XDG_CACHE_HOME`` is ignored, as the XDG spec says), else ``~/.cache/latent-transforms``."""
    home = os.environ.get("LATENT_TRANSFORMS_HOME")
    if home:
        path = expanded_path(home, f"LATENT_TRANSFORMS_HOME={home!r}", _SET_HOME)
        if not path.is_absolute():
            raise ValueError(f"LATENT_TRANSFORMS_HOME={home!r} is a relative path, which would depend on the current "
                             f"directory; give an absolute path (~ is expanded)")
        return path
    xdg_home = os.environ.get("XDG_CACHE_HOME", "")
    xdg = expanded_path(xdg_home, f"XDG_CACHE_HOME={xdg_home!r}", _SET_HOME)
    if not xdg.is_absolute():  # unset, empty or relative
        xdg = expanded_path("~/.cache", "the default cache dir ~/.cache/latent-transforms", _SET_HOME)
    return xdg / "latent-transforms"


def beyond_range(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether float ``t`` holds finite values that ``dtype`` stores as inf (1e300 in float32, 1e5 in float16)."""
    return bool((torch.isfinite(t) & ~torch.isfinite(t.detach().to(dtype))).any())


def weights_beyond(codec: "Codec", dtype: torch.dtype) -> list[str]:
    """Names of ``codec``'s weights with finite values that ``dtype`` would store as inf."""
    return [k for k, v in codec.state_dict().items() if v.is_floating_point() and beyond_range(v, dtype)]


def sha256_tensors(*tensors: torch.Tensor) -> str:
    """sha256 (hex) of the tensors' bytes, in order (on the CPU, contiguous): the identity of a data set."""
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(_bytes_of(t.detach().cpu().contiguous()))
    return digest.hexdigest()


def _bytes_of(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor of any dtype (bfloat16 included), as a view: no copy."""
    return memoryview(cast(Any, t.reshape(-1).view(torch.uint8).numpy()))  # numpy's stubs: a buffer from 3.12 on


def checksum_metadata(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """``{"tensors_sha256": ...}``, the sha256 of a file's tensors in name order, for its metadata: safetensors keeps
    no checksum of its own, so a flipped bit would load silently (checked by ``matches_checksum``)."""
    return {"tensors_sha256": sha256_tensors(*(tensors[k] for k in sorted(tensors)))}


def matches_checksum(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> bool:
    """Whether ``tensors`` match the ``checksum_metadata`` saved with them (``True`` for a file saved without)."""
    saved = metadata.get("tensors_sha256")
    return saved is None or checksum_metadata(tensors)["tensors_sha256"] == saved


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of the file at ``path``, read in chunks."""
    if not Path(path).is_file():
        raise MissingFileError(f"no file at {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_filename(file: object) -> str:
    """A registry file name must be a plain ``*.safetensors`` name that stays inside the cache dir."""
    if not isinstance(file, str) or not file:
        raise ValueError(f"checkpoint file name must be a non-empty str, got {file!r}")
    # ':' too: on Windows "D:x.safetensors" is a file in drive D:'s current folder, outside the cache dir
    # unprintable: a newline or a terminal escape, printed by `list -v` and in messages (NUL: open() refuses it)
    if any(s in file for s in (*_SEPARATORS, ":", "..")) or file.startswith(".") or not file.isprintable():
        raise ValueError(f"checkpoint file name {file!r} is not a plain file name (no path separators, ':', '..' or "
                         f"leading '.'; printable characters only)")
    if not file.endswith(".safetensors"):
        raise ValueError(f"checkpoint file name {file!r} must end in .safetensors")
    if len(file.encode("utf-8", "surrogatepass")) > _MAX_FILENAME_BYTES:
        raise ValueError(f"checkpoint file name {file[:40]!r}... is {len(file.encode('utf-8', 'surrogatepass'))} "
                         f"bytes long; at most {_MAX_FILENAME_BYTES} (file systems allow 255, and a download's "
                         f"temporary name adds to it)")
    return file


def _is_plain_text(name: str) -> bool:
    """Printable characters, no leading or trailing space: a name that can be typed back."""
    return name.isprintable() and name == name.strip()


def check_file_stem(name: object, what: str = "name") -> str:
    """``name`` as the stem of ``<name>.safetensors`` (a trained or registered checkpoint's file, a registry name): a
    non-empty str of printable characters, no leading or trailing space, with no path separators, ``:``, ``..`` or
    leading ``.``, not itself ending in ``.safetensors``; ``ValueError`` naming ``what`` otherwise (a
    ``WrongTypeError`` for what is not a str)."""
    if not isinstance(name, str) or not name:
        raise bad_option(f"{what} must be a non-empty file stem, got {name!r}", right_type=isinstance(name, str))
    if not _is_plain_text(name):
        raise ValueError(f"{what} {name[:40]!r} must be printable characters without leading or trailing space")
    if name.endswith(".safetensors"):
        raise ValueError(f"{what} {name!r} is a file name; give the stem, {name[:-len('.safetensors')]!r} "
                         f"(.safetensors is added)")
    try:
        _check_filename(f"{name}.safetensors")
    except ValueError as e:
        if len(f"{name}.safetensors".encode("utf-8", "surrogatepass")) > _MAX_FILENAME_BYTES:
            raise ValueError(f"{what} {name[:40]!r}... cannot be a file name (it is too long: {e})") from None
        raise ValueError(f"{what} {name!r} cannot be a file name (no path separators, ':', '..' or leading '.')"
                         ) from None
    return name


def _read_umask() -> int:
    umask = os.umask(0)  # the only way to read it sets it: done once, at import, before any thread of ours runs
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _chmod_default(path: str | os.PathLike[str], fd: int) -> None:
    """Give a file from ``mkstemp`` (mode 0600), ``path`` open as ``fd``, the usual permissions (0666 minus the
    process's umask): through ``fd`` where the system can (by name a link put in its place would be followed)."""
    with contextlib.suppress(OSError):
        os.chmod(fd if os.chmod in os.supports_fd else path, 0o666 & ~_UMASK)


def _check_made(tmp: str, made: int) -> None:
    """``OSError`` unless the name ``tmp`` is still the file ``mkstemp`` made, open as ``made`` (held open, so its
    inode cannot be reused): not a link (not followed) nor another file that whoever can write its folder swapped in,
    which a chmod or rename by name would then serve; nor a file the block renamed over it (safetensors' ``save_file``
    writes a file of its own beside it and renames it: refused as a swap would be, its file told from theirs by
    nothing safe)."""
    if not os.path.samestat(os.stat(tmp, follow_symlinks=False), os.fstat(made)):
        raise OSError(errno.EEXIST, f"its temporary file was replaced by another file or a link: by the block (write "
                                    f"it in place; a writer that renames a file of its own over it, as safetensors' "
                                    f"save_file does, is refused) or by someone else (can others write to "
                                    f"{Path(tmp).parent}?)")


def _remove(path: str | os.PathLike[str]) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)  # a full disk, a quota reached


def _room_needed(e: OSError, file: str, size: int | None) -> str:
    """``": FILE needs SIZE bytes"`` where ``e`` is a full disk (or quota) and ``file``'s ``size`` is known, else
    ``""``: what an error writing ``file`` ends its reason with."""
    return f": {file} needs {size} bytes" if e.errno in _NO_ROOM and file and size is not None else ""


@contextlib.contextmanager
def _naming(filename: Path, temp: str | None = None) -> Iterator[None]:
    """An ``OSError`` from the block names ``filename`` (the folder a temp file could not be made in, the file it
    was to become), not the hidden temp file it was about. With ``temp``, the block writes that temp file and only
    an error naming it, or a full disk naming no file, is renamed."""
    try:
        yield
    except OSError as e:
        if temp is None or (e.filename is None and e.errno in _NO_ROOM) or \
                (isinstance(e.filename, str) and Path(e.filename) == Path(temp)):
            e.filename = str(filename)
            del e.filename2  # unset, not None: str(e) would end in "-> None"
        raise


@contextlib.contextmanager
def _atomic_file(path: Path, errors: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
                 ) -> Iterator[tuple[BinaryIO, str]]:
    """``atomic_path``'s machinery: yield its temp file, open for binary writing (the block may close it and write
    it by name), and its name, ``.<name>.XXXXXXXX.part`` (what ``remove_abandoned_parts`` matches, 15 bytes over
    ``path``'s: ``_MAX_FILENAME_BYTES``). ``errors`` wraps the steps that create, close, flush and rename the file (an
    ``OSError`` there: the folder cannot be written, a full disk, on NFS seen only at the close, a read-only file
    system seen only at the rename), not the block; such an error names ``path``'s folder (creating) or ``path``
    (flushing, renaming), never the temp file."""
    with errors(), _naming(path.parent):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        made = os.dup(fd)  # the block may close f and write the file by name: flushed and chmod-ed through this
        try:
            with os.fdopen(fd, "wb") as f:
                yield f, tmp
                with errors():
                    f.close()
            with errors(), _naming(path):
                _check_made(tmp, made)
                os.fsync(made)
                _chmod_default(tmp, made)
        finally:
            os.close(made)  # before the rename: Windows renames no file open without FILE_SHARE_DELETE
        with errors(), _naming(path):
            os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write to, in place (``open(tmp, "wb")``, PIL's or torch's save; not
    safetensors' ``save_file``, which renames a file of its own over it: an ``OSError``); when the block ends without
    error it is flushed to disk, gets the usual permissions and is renamed over ``path``, else (any exception,
    ``KeyboardInterrupt`` too) it is removed: ``path`` never holds half a file, also after a crash or power loss
    (without the flush, the rename could reach the disk before the data). An ``OSError`` in making, flushing or
    renaming the temp file names ``path`` (its folder, where the temp file could not be made), not the temp file; so
    does one of the block's that names the temp file, or a full disk (or quota) that names none."""
    with _atomic_file(Path(path)) as (f, tmp):
        f.close()  # written by name
        with _naming(Path(path), tmp):
            yield tmp


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file, on the CPU; raises ``SafetensorError`` if it is not one."""
    # with torch 2.4 and safetensors 0.4, get_tensor made the tensors on torch's default device
    with cpu_as_default_device(), safe_open(str(path), framework="pt", device="cpu") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def write_safetensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write ``tensors`` (CPU, contiguous) and ``metadata`` to a safetensors file at ``path``, atomically; returns
    the file's sha256 (hex).

    The bytes are those of ``safetensors.torch.save`` with the metadata keys sorted (safetensors writes them in a
    per-process hash order), so the same tensors and metadata give the same file in every process. The tensors'
    bytes go to the file from views of their memory: a 600 MB latent cache is written without a copy of it.
    """
    file = file_in_the_way(Path(path).parent)  # also a file further up: the folder could not be made there
    if file is not None:
        raise ValueError(f"cannot save {path}: {file} is a file, not a directory")
    if not Path(path).parent.exists():
        raise MissingFileError(f"cannot save {path}: the directory {Path(path).parent} does not exist")
    for name, t in tensors.items():
        if t.device.type != "cpu" or t.layout != torch.strided or not t.is_contiguous():
            raise ValueError(f"cannot save tensor {name!r}: it must be a dense, contiguous CPU tensor, got "
                             f"{t.layout} on {t.device}{'' if t.is_contiguous() else ', not contiguous'}")
    bad = [repr(k) for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise WrongTypeError(f"safetensors metadata maps str to str; not so at key(s) {', '.join(bad)}")
    # safetensors' order of the tensors (by dtype, then name) and its dtype names, from a file of empty tensors
    probe = safetensors_bytes({k: torch.empty(0, dtype=t.dtype, device="cpu") for k, t in tensors.items()})
    probe_header = json.loads(probe[8:8 + int.from_bytes(probe[:8], "little")])
    header: dict[str, dict[str, Any]]
    header, offset = {"__metadata__": dict(sorted(metadata.items()))}, 0
    for name, entry in probe_header.items():
        size = tensors[name].numel() * tensors[name].element_size()
        header[name] = {"dtype": entry["dtype"], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)  # the data stays 8-byte aligned, as safetensors pads it
    h = hashlib.sha256()
    try:
        with _atomic_file(Path(path)) as (f, _):
            parts: tuple[bytes | memoryview, ...] = (len(head).to_bytes(8, "little"), head,
                                                     *(_bytes_of(tensors[k]) for k in probe_header))
            for part in parts:
                f.write(part)
                h.update(part)
    except OSError as e:  # full disk, read-only directory: named as the file asked for, not the hidden temp file
        needs = _room_needed(e, Path(path).name, 8 + len(head) + offset)
        raise OSError(e.errno, f"cannot write {path} ({e.strerror or e}){needs}") from None
    return h.hexdigest()


# -- checkpoint format ------------------------------------------------------------------------------
def save_checkpoint(codec: "Codec", path: str | os.PathLike[str], dtype: torch.dtype = torch.float32,
                    extra_metadata: dict[str, Any] | None = None) -> str:
    """Write ``codec`` to the ``.safetensors`` file ``path`` (another suffix is refused) atomically; returns its
    sha256 (hex).

    Float tensors are stored as ``dtype`` (float32, float16 or bfloat16) and cast back to the codec's
    float32 on load. ``extra_metadata`` adds str -> str entries (other values are stored as JSON).
    """
    from .codecs import Codec

    if not isinstance(codec, Codec):  # an nn.Module had no config to save: "'Linear' object has no attribute 'config'"
        raise WrongTypeError(f"codec must be a Codec (a Glow, a ConvVAE or a codec of your own), got "
                             f"{type(codec).__name__}")
    if dtype not in _STORAGE_DTYPES:
        raise bad_option(f"dtype must be one of {[str(d) for d in _STORAGE_DTYPES]}, got {dtype!r}",
                         right_type=isinstance(dtype, torch.dtype))
    path = expanded_path(path, f"checkpoint path {str(path)!r}")
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {str(path)!r}")
    metadata = {"config": json.dumps(codec.config, sort_keys=True), "format": FORMAT}
    for key, value in (extra_metadata or {}).items():
        if not isinstance(key, str) or key in metadata:
            raise bad_option(f"extra_metadata keys must be str other than 'config' and 'format', got {key!r}",
                             right_type=isinstance(key, str))
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    # clone: independent storages (safetensors refuses shared tensors), on the CPU
    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).cpu().contiguous().clone()
        for k, v in codec.state_dict().items()
    }
    overflow = weights_beyond(codec, dtype)
    if overflow:
        raise ValueError(f"weights {overflow} do not fit in {dtype} (they would be stored as inf); save as float32")
    return write_safetensors(path, tensors, metadata)


class _AllocationBudget(TorchFunctionMode):
    """Raises ``MemoryError`` before a tensor factory call (``torch.empty``, ``torch.randn``, ...) would take the
    elements it has made, in all, past ``limit``: a codec built from a checkpoint's config is stopped before it
    allocates far more than the file's weights (a config of hidden=30000 would otherwise take gigabytes)."""

    FACTORIES = frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand,
                           torch.randn, torch.randint, torch.normal, torch.eye, torch.arange, torch.linspace})

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.used = limit, 0

    def __torch_function__(self, func: Callable[..., Any], types: tuple[type, ...], args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func in self.FACTORIES and "out" not in kwargs:
            try:  # the size the call asks for, from the same call on the meta device (no memory)
                size = func(*args, **{**kwargs, "device": "meta"}).numel()
            except (RuntimeError, TypeError, ValueError):
                size = 0  # a call the meta device cannot make; the real one below makes it or says why not
            self.used += size
            if self.used > self.limit:
                raise MemoryError(f"more than {self.limit:,} elements")
        return func(*args, **kwargs)


def _is_run_json(path: Path) -> bool:
    """Whether ``path`` is the JSON ``train`` writes beside its checkpoint (it holds a ``registry_entry``)."""
    try:
        return path.stat().st_size < 1 << 24 and isinstance(json.loads(path.read_bytes()).get("registry_entry"), dict)
    except (ValueError, RecursionError, AttributeError, OSError):  # not JSON (or nested thousands deep), not an
        return False  # object, unreadable


def _read_verified(path: Path, sha256: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``read_safetensors`` of ``path`` whose bytes have the sha256 ``sha256``: read once, hashed and parsed from
    memory, so that the bytes checked are the bytes loaded (another process may replace the file meanwhile)."""
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise HubError(f"{path} does not have the expected sha256 {sha256}, got {got}: the sha256 given is another "
                       f"file's, or the file was replaced while it was read (perhaps by a process whose registry gives "
                       f"another version: load it again)")
    tensors = safetensors_load(data)  # SafetensorError if it is not a safetensors file
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    return header.get("__metadata__") or {}, tensors


def _load_device(device: object) -> torch.device:
    """``resolve_device(device)``, refusing the meta device: a codec there would have dropped the file's weights."""
    device = resolve_device(device)
    if device.type == "meta":
        raise ValueError("device 'meta' holds shapes, not values: a checkpoint loaded there would lose its weights; "
                         "load on cpu or cuda")
    return device


@torch.inference_mode(False)  # inside inference_mode its weights would be inference tensors, a Glow's unusable
def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                    sha256: str | None = None) -> "Codec":
    """Build the codec described by the ``.safetensors`` checkpoint at ``path`` (``~`` expanded), load its weights
    onto ``device`` (default ``"cpu"``), freeze it: float32 whatever torch's default dtype, device or inference mode.

    ``sha256`` (hex): the file's bytes must have this hash (``HubError`` otherwise); they are read once, so the
    bytes checked are the bytes loaded.
    """
    from .codecs import build_codec

    if not isinstance(path, (str, os.PathLike)):
        raise WrongTypeError(f"path must be a .safetensors checkpoint's path, got {type(path).__name__}")
    if sha256 is not None and not (isinstance(sha256, str) and _SHA256.fullmatch(sha256)):
        raise bad_option(f"sha256 must be 64 lowercase hex digits (hashlib's hexdigest(), sha256sum's) or None, got "
                         f"{sha256!r}", right_type=isinstance(sha256, str))
    device = _load_device(device)
    path = expanded_path(path, f"checkpoint path {str(path)!r}")
    if path.is_dir():
        raise NotAFileError(f"{path} is a directory; give a checkpoint's .safetensors file in it")
    if not path.is_file():
        raise MissingFileError(f"no checkpoint file at {path}")
    try:
        metadata, tensors = read_safetensors(path) if sha256 is None else _read_verified(path, sha256)
    except SafetensorError as e:
        if _is_run_json(path):  # train prints both paths: an easy mix-up
            raise ValueError(f"{path} is the JSON report of a `latent-transforms train` run, not a checkpoint; load "
                             f"{path.with_suffix('.safetensors')} beside it, or "
                             f"`latent-transforms register {shlex.quote(str(path))}` and load it by name") from None
        raise ValueError(
            f"{path} is not a safetensors file ({e}); latent-transforms only loads .safetensors checkpoints "
            f"and never unpickles .pt/.pth files"
        ) from None
    config = _checkpoint_config(metadata, path)
    stored = sum(t.numel() for t in tensors.values())
    limit = 2 * stored + (1 << 16)  # building a codec allocates about as many elements as its state dict holds
    # the random init, overwritten below, must not move torch's global RNG
    with torch.random.fork_rng(devices=[]), _AllocationBudget(limit):
        try:
            codec = build_codec(config)
        except ValueError as e:
            raise ValueError(f"{path}: its config cannot build a codec ({e})") from None
        except MemoryError:
            raise ValueError(
                f"{path}: its config describes a codec of more than {limit:,} weights, but the file holds "
                f"{stored:,}: config and tensors do not belong together (a corrupted or hand-edited file)"
            ) from None
    codec.float()  # build_codec builds in float32, but a codec class of one's own may make float64 weights
    expected = codec.state_dict()
    mismatch = state_mismatch(expected, tensors)
    if mismatch:
        raise ValueError(f"{path} does not match the {config.get('kind')} codec built from its config: {mismatch} "
                         f"(a corrupted or hand-edited file)")
    for k, v in expected.items():
        t = tensors[k]
        if t.is_floating_point() and v.is_floating_point():
            tensors[k] = t.to(v.dtype)  # checked as cast: float64 weights of 1e300 are inf in float32
            if not bool(torch.isfinite(tensors[k]).all()):
                beyond = f" (stored as {t.dtype}, beyond {v.dtype}'s range)" if bool(torch.isfinite(t).all()) else ""
                raise ValueError(f"{path}: tensor {k} holds NaN or inf weights{beyond} (a corrupted or diverged "
                                 f"checkpoint)")
        elif t.dtype != v.dtype:
            raise ValueError(f"{path}: tensor {k} has dtype {t.dtype}, the codec expects {v.dtype}")
    codec.load_state_dict(tensors)
    return codec.to(device).freeze()


# -- registry ---------------------------------------------------------------------------------------
def _check_entry(name: object, entry: object, where: str) -> dict[str, Any]:
    if not isinstance(name, str) or not name or not _is_plain_text(name) or len(name) > _MAX_NAME_CHARS:
        # ' x', a newline or 5,000 characters were accepted
        raise bad_option(f"{where}: checkpoint names must be non-empty str of printable characters, without leading "
                         f"or trailing space, at most {_MAX_NAME_CHARS} characters, got {name!r:.60}",
                         right_type=isinstance(name, str))
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: entry {name!r} must be a dict, got {type(entry).__name__}")
    for key in ("file", "sha256", "config"):
        if key not in entry:
            raise ValueError(f"{where}: entry {name!r} has no {key!r}")
    try:
        _check_filename(entry["file"])
    except ValueError as e:
        raise ValueError(f"{where}: entry {name!r}: {e}") from None
    if not isinstance(entry["sha256"], str) or not _SHA256.fullmatch(entry["sha256"]):
        raise ValueError(f"{where}: entry {name!r} sha256 must be 64 lowercase hex digits, got {entry['sha256']!r}")
    if not isinstance(entry["config"], dict) or "kind" not in entry["config"]:
        raise ValueError(f"{where}: entry {name!r} config must be a dict with a 'kind'")
    size = entry.get("size")
    if size is not None and not _is_int_at_least(size, 0):
        raise ValueError(f"{where}: entry {name!r} size must be a non-negative int (bytes), got {size!r}")
    quality = entry.get("quality", {})
    if not isinstance(quality, dict):
        raise ValueError(f"{where}: entry {name!r} quality must be a dict of figures, got {type(quality).__name__}")
    device, images = quality.get("train_device"), quality.get("classifier_eval_images")
    if device is not None and not (isinstance(device, str) and device):
        raise ValueError(f"{where}: entry {name!r} quality train_device must name the device train_device_minutes "
                         f"were spent on, such as 'cpu (x86_64, 1 thread)' or 'NVIDIA H100', got {device!r}")
    if images is not None and not _is_int_at_least(images, 1):
        raise ValueError(f"{where}: entry {name!r} quality classifier_eval_images must be a positive int (the test "
                         f"images the classifier figures were measured on), got {images!r}")
    return entry


def _config_differences(registered: dict[str, Any], held: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{key: (registered value, file's value)}`` for each key of a registry entry's config that the checkpoint
    file's config does not hold with the same value (empty: they agree)."""
    return {k: (v, held.get(k)) for k, v in registered.items() if held.get(k) != v}


def _checkpoint_config(metadata: dict[str, str], path: str | os.PathLike[str]) -> dict[str, Any]:
    """The codec config a checkpoint's safetensors ``metadata`` holds; ``ValueError`` naming ``path`` and why where it
    holds none (another format, no JSON object under 'config')."""
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a latent-transforms checkpoint: metadata 'format' is {metadata.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    try:
        config = json.loads(metadata["config"])
    # ValueError: also an int of over 4,300 digits; RecursionError: arrays nested thousands deep
    except (KeyError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} has no valid JSON 'config' in its metadata ({e})") from None
    if not isinstance(config, dict):
        kind = {type(None): "null", list: "an array", str: "a string", bool: "a boolean"}.get(type(config), "a number")
        raise ValueError(f"{path}: metadata 'config' must be a JSON object, got {kind}")
    return config


def _file_config(metadata: dict[str, str] | None) -> dict[str, Any] | None:
    """``_checkpoint_config``'s config, None where ``metadata`` holds none (``load_checkpoint`` says why)."""
    try:
        return _checkpoint_config(metadata or {}, "the file")
    except ValueError:  # safetensors metadata is str to str: json.loads gets a str
        return None


def _held_config(path: Path) -> dict[str, Any] | None:
    """The codec config the checkpoint file at ``path`` holds (``_file_config``; its header alone is read); None where
    it holds none or is not a safetensors file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return _file_config(f.metadata())
    except (SafetensorError, OSError):  # not a safetensors file: load_checkpoint says so
        return None


def _check_local_file(name: str, entry: dict[str, Any]) -> None:
    """Refuse an entry whose config is not the one its file holds, where that file is at hand (in the cache dir or
    shipped) and has the entry's sha256 (an older copy there is not the registered file); only its header is read,
    and the whole file only to confirm a difference. A file that is only at the hub URL is not read."""
    for path in (cache_dir() / entry["file"], _SHIPPED_DIR / entry["file"]):
        if not path.is_file():
            continue
        held = _held_config(path)
        differ = {} if held is None else _config_differences(entry["config"], held)
        if differ and sha256_file(path) == entry["sha256"]:
            raise ValueError(f"register(): {name!r}'s config differs from the one its file {path} holds (key: (given, "
                             f"file)): {differ}; hub.load would refuse it: pass the file's config "
                             f"(hub.load_checkpoint(path).config), or save the codec you mean there first")


def _is_int_at_least(value: object, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _read_registry_file(path: Path) -> dict[str, Any] | None:
    """The object in a registry file, its entries validated (messages name the file); None if there is no file."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark, as some Windows editors write, is skipped
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    except OSError as e:  # a directory of that name, no read permission: as unusable as a broken file
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    # ValueError: also an int of over 4,300 digits; RecursionError: arrays nested thousands deep
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
        raise ValueError(f"{path} must hold an object {{\"checkpoints\": {{name: entry, ...}}}}")
    for name, entry in data["checkpoints"].items():
        _check_entry(name, entry, str(path))
    return data


def _shipped_registry() -> dict[str, dict[str, Any]]:
    path = _SHIPPED_DIR / "registry.json"
    registry = _read_registry_file(path) if path.is_file() else None  # None: no file (also one gone since)
    return {} if registry is None else dict(registry["checkpoints"])


def user_registry_path() -> Path:
    """The user registry file, ``cache_dir() / "registry.json"`` (it need not exist yet)."""
    return cache_dir() / "registry.json"


def _user_registry_data(path: Path, shipped: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The user registry file's object (``{"checkpoints": {}}`` if there is none), checked against ``shipped``."""
    try:
        data = _read_registry_file(path)
    except ValueError as e:
        raise ValueError(f"{e}; fix or delete it (`latent-transforms register` writes it again)") from None
    if data is None:
        return {"checkpoints": {}}
    clash = [name for name in data["checkpoints"] if name in shipped]
    if clash:
        raise ValueError(f"{path}: {clash[0]!r} is a shipped checkpoint's name, which the user registry may not "
                         f"redefine; rename that entry (and its file) or remove it")
    return data


def _registry(warn_if_broken: bool = False) -> dict[str, dict[str, Any]]:
    """Every registered name. ``warn_if_broken``: a user registry file that cannot be used is reported as a warning
    and its entries left out, instead of raising."""
    shipped, path = _shipped_registry(), user_registry_path()  # a bad LATENT_TRANSFORMS_HOME raises, never warns
    try:
        user = _user_registry_data(path, shipped)["checkpoints"]
    except ValueError as e:
        if not warn_if_broken:
            raise
        warnings.warn(f"{e}; until then its checkpoints are left out", stacklevel=3)
        user = {}
    with _lock:
        runtime = dict(_registered)
    return {**shipped, **user, **runtime}


class _CacheDirError(HubError):
    """The cache dir cannot be created or written (read-only, full, a file): ``_writing_cache_dir``'s error."""


@contextlib.contextmanager
def _writing_cache_dir(directory: Path, file: str = "", size: int | None = None) -> Iterator[None]:
    """Report an ``OSError`` from the block, which creates, writes or renames files in the cache dir, as a ``HubError``
    that says what to do (the error itself may name a hidden temp file); a full disk (or quota) says how many bytes
    ``file`` needs, where its ``size`` is known."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NO_ROOM:
            raise _CacheDirError(f"cannot write to the cache dir {directory} ({e.strerror or e}); "
                                 f"set LATENT_TRANSFORMS_HOME to a writable directory") from None
        raise _CacheDirError(f"cannot write to the cache dir {directory} ({e.strerror or e})"
                             f"{_room_needed(e, file, size)}; free space there or set LATENT_TRANSFORMS_HOME to a "
                             f"directory with room") from None


def _make_cache_dir(directory: Path) -> None:
    """Create ``directory`` (and its parents) if missing; ``HubError`` saying what to do when it cannot be."""
    with _writing_cache_dir(directory):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            # a file further up: "Not a directory" named no file (on Windows "File exists", at that file: mkdir makes
            # the parents first once the cache dir's path is not found)
            file = file_in_the_way(directory)
            if file is not None and file != directory:
                raise OSError(errno.ENOTDIR, f"{file} is a file, not a directory") from None
            if isinstance(e, NotADirectoryError):  # the file gone meanwhile: the system's words
                raise
            # exist_ok passes a directory, not a file or a link to nothing ("File exists")
            what = "a symbolic link to a path that does not exist" if directory.is_symlink() else "a file"
            raise OSError(errno.EEXIST, f"it is {what}, not a directory") from None


@contextlib.contextmanager
def _cache_dir_lock(directory: Path) -> Iterator[None]:
    """Serialise what writes the cache dir ``directory`` (a read-modify-write of the user registry, a download,
    ``register_run``'s check, copy and registry edit) across threads and processes (where ``fcntl`` exists and the
    file system takes ``flock``; NFS and Lustre may not: then across threads only, as without ``fcntl``). Nested
    in one thread, the inner lock is the outer one."""
    held = _cache_dir_held.dirs
    if directory in held:
        yield
        return
    fcntl: ModuleType | None
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic replacement only (a concurrent writer may drop an entry)
        fcntl = None
    with _cache_dir_thread_lock:
        held.add(directory)
        try:
            if fcntl is None:
                yield
                return
            with _writing_cache_dir(directory):  # a directory without read permission cannot be opened
                fd = os.open(directory, os.O_RDONLY)  # the cache dir itself is locked: no lock file is left behind
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
                except OSError:  # EBADF (NFSv4: a directory opens for reading only), ENOLCK, ENOSYS (Lustre, noflock)
                    pass  # no lock: downloads and registry writes are atomic replacements, as without fcntl
                yield
            finally:
                os.close(fd)
        finally:
            held.discard(directory)


def _edit_user_registry(edit: Callable[[dict[str, dict[str, Any]]], bool]) -> None:
    """Apply ``edit`` (returns whether it changed anything) to the user registry file's entries under a lock and
    replace the file atomically, keeping the other entries (a broken file is reported before anything is touched)."""
    path = user_registry_path()
    shipped = _shipped_registry()
    _user_registry_data(path, shipped)
    _make_cache_dir(path.parent)
    with _cache_dir_lock(path.parent):
        data = _user_registry_data(path, shipped)  # again, under the lock: another process may have just changed it
        remove_abandoned_parts(path)  # of a writer killed before its rename
        if not edit(data["checkpoints"]):
            return
        with _writing_cache_dir(path.parent), atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _persist(name: str, entry: dict[str, Any], overwrite: bool) -> None:
    """Add ``entry`` (in its JSON form) to the user registry file."""
    path = user_registry_path()

    def add(entries: dict[str, dict[str, Any]]) -> bool:
        if name in entries and not overwrite:
            raise ValueError(f"checkpoint {name!r} is already registered in {path}; pass overwrite=True to replace it")
        entries[name] = entry
        return True

    _edit_user_registry(add)


def register(name: str, *, file: str, sha256: str, config: dict[str, Any], trained_on: str = "",
             quality: dict[str, Any] | None = None, notes: str = "", size: int | None = None, overwrite: bool = False,
             persist: bool = False) -> None:
    """Add a checkpoint to this process's registry, so ``load(name)`` / ``fetch(name)`` find it.

    ``file`` is a plain file name looked up in the cache dir, the shipped checkpoints and under
    ``$LATENT_TRANSFORMS_HUB_URL``; ``sha256`` and ``size`` are what ``save_checkpoint`` returned and the
    file's size in bytes. ``config`` is the codec's (with its ``kind``; ``load`` refuses a file whose config differs in
    a key it gives); ``trained_on`` (the training data) and ``notes`` are free text that ``latent-transforms list -v``
    shows. An existing name is only replaced with ``overwrite=True``. ``quality`` holds the figures shown by
    ``latent-transforms list``, as in the shipped registry: test metrics (``test_bits_per_dim`` or
    ``test_mse``/``test_kl``; ``train_...`` for figures measured on training images, as ``latent-transforms train``
    writes without a test set), ``train_device_minutes`` with the ``train_device`` they were spent on, and classifier
    accuracies with ``classifier_eval_images``, the number of test images they were measured on.

    With ``persist=True`` the entry is also written to the user registry file, ``cache_dir() / "registry.json"``
    (created if missing, replaced atomically, other entries kept), so every later process finds the name too; a
    shipped checkpoint's name is refused there even with ``overwrite=True``. The file itself is not copied: put
    it in ``cache_dir()`` (``register_run(RUN.json)`` does both for a trained run). The entry is kept in
    its JSON form, as a registry file holds it (a tuple becomes a list); values JSON cannot hold are refused. A
    warning says when ``file`` is nowhere ``load`` looks (not in the cache dir nor shipped, and no download: no hub
    URL set, or offline). A ``config`` other than the one ``file`` holds, where that file is at hand (cache dir or
    shipped) with this ``sha256``, is refused.
    """
    no_download = offline()  # before the entry is added: a LATENT_TRANSFORMS_OFFLINE it refuses registers nothing
    _add_entry(name, file=file, sha256=sha256, config=config, trained_on=trained_on, quality=quality, notes=notes,
               size=size, overwrite=overwrite, persist=persist, check_file=True)
    if not (cache_dir() / file).is_file() and not (_SHIPPED_DIR / file).is_file() \
            and (not os.environ.get(_HUB_URL) or no_download):
        why = "LATENT_TRANSFORMS_OFFLINE is set" if os.environ.get(_HUB_URL) else f"{_HUB_URL} is not set"
        warnings.warn(f"registered {name!r}, but its file {file} is not in {cache_dir()} (nor shipped, and {why}): "
                      f"copy it there before hub.load({name!r})", stacklevel=2)


def _add_entry(name: str, *, file: str, sha256: str, config: dict[str, Any], trained_on: str,
               quality: dict[str, Any] | None, notes: str, size: int | None, overwrite: bool, persist: bool,
               check_file: bool = False) -> None:
    """``register`` without the warning about the file (``register_run`` puts the file in place afterwards);
    ``check_file``: ``_check_local_file`` (``register_run`` checks the config in its own read of the file)."""
    check_bool("overwrite", overwrite)
    check_bool("persist", persist)
    if not isinstance(config, dict) or (quality is not None and not isinstance(quality, dict)):
        raise WrongTypeError(f"register(): config and quality must be dicts, got {type(config).__name__} and "
                             f"{type(quality).__name__}")
    entry = {"file": file, "sha256": sha256, "size": size, "config": dict(config), "trained_on": trained_on,
             "quality": dict(quality or {}), "notes": notes}
    try:  # a tuple image_shape must compare equal to the list in the file's config
        entry = json.loads(json.dumps(entry))
    except (TypeError, ValueError) as e:
        raise ValueError(f"register(): entry {name!r} is not JSON data ({e})") from None
    _check_entry(name, entry, "register()")
    if check_file:
        _check_local_file(name, entry)
    if persist and name in _shipped_registry():
        raise ValueError(f"{user_registry_path()}: {name!r} is a shipped checkpoint's name, which the user registry "
                         f"may not redefine; register yours under another name")
    # without persist, a broken user registry file only warns (its names are out of reach until it is fixed)
    if not overwrite and name in _registry(warn_if_broken=not persist):
        raise ValueError(f"checkpoint {name!r} is already registered; pass overwrite=True to replace it")
    if persist:
        _persist(name, entry, overwrite)
    with _lock:
        _registered[name] = entry
        for key in [k for k in _loaded if k[0] == name]:
            del _loaded[key]


@dataclass(frozen=True)
class RegisteredRun:
    """What ``register_run`` did: the ``name`` registered, the checkpoint's ``path`` in the cache dir, and whether
    anything ``changed`` (False: that run was already registered under that name)."""
    name: str
    path: Path
    changed: bool


def _read_run(path: Path) -> dict[str, Any]:
    """The ``registry_entry`` of a run's JSON (``latent-transforms train`` writes it beside the checkpoint), checked,
    with the run's ``name``."""
    if not path.is_file():
        raise MissingFileError(f"no run JSON at {path}: give the NAME.json that `latent-transforms train` wrote beside "
                               f"NAME.safetensors")
    try:
        report = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; arrays nested thousands deep
        raise ValueError(f"{path} is not a JSON file ({e}); give the NAME.json that `latent-transforms train` wrote "
                         f"beside NAME.safetensors") from None
    entry = report.get("registry_entry") if isinstance(report, dict) else None
    if not isinstance(entry, dict):
        raise ValueError(f"{path} has no 'registry_entry': not a run's JSON written by `latent-transforms train`")
    return {"name": report.get("name"), **_check_entry("registry_entry", entry, str(path))}


def register_run(run: str | os.PathLike[str], *, name: str | None = None, overwrite: bool = False) -> RegisteredRun:
    """Register a trained codec by name for every process, as ``latent-transforms register RUN.json`` does.

    ``run`` is the ``NAME.json`` that ``train_codec`` / ``latent-transforms train`` wrote beside ``NAME.safetensors``.
    The checkpoint's sha256 and codec config (its safetensors metadata's) are checked against the run's, the file is
    copied into ``cache_dir()`` as ``<name>.safetensors`` (``name``: the run's name unless given) and the name is
    added to the user registry, so ``load(name)`` works in any process using that cache dir. A shipped checkpoint's
    name is refused, and so is a name registered with another checkpoint or other details unless ``overwrite=True``;
    the same run registered again under the same name changes nothing (``changed`` is False; also for all but one of
    several processes registering it at once, such as DDP ranks), or, if its cached copy was deleted or damaged
    since, copies it back. Nothing is copied or registered when it refuses.
    """
    check_bool("overwrite", overwrite)
    run = expanded_path(run, f"run JSON {str(run)!r}")
    entry = _read_run(run)
    run_name = entry.pop("name")
    if name is None and (not isinstance(run_name, str) or not run_name):
        what = "no" if run_name is None else "an empty" if run_name == "" else \
            f"{type(run_name).__name__} {run_name!r} as"
        raise ValueError(f"{run} has {what} 'name'; give one with --name (Python: name=)")
    given, name = name is not None, run_name if name is None else name
    try:
        check_file_stem(name, "--name" if given else f"{run}'s name")
    except ValueError as e:
        raise ValueError(f"{e}; give another with --name (Python: name=)") from None
    shipped = _shipped_registry()
    if name in shipped:
        raise ValueError(f"{name!r} is a shipped checkpoint's name; register yours under another name, e.g. "
                         f"--name my-{name} (Python: name='my-{name}')")
    file = f"{name}.safetensors"
    new = {"file": file, "sha256": entry["sha256"], "size": entry.get("size"), "config": entry["config"],
           "trained_on": entry.get("trained_on") or "", "quality": entry.get("quality") or {},
           "notes": entry.get("notes") or ""}
    dest = cache_dir() / file
    _make_cache_dir(dest.parent)
    # the checks, the copy and the registry edit as one step for every process: DDP ranks each registering the run
    # at start find it whole (entry and file) or not at all
    with _cache_dir_lock(dest.parent):
        registry = _registry()
        persisted = _user_registry_data(user_registry_path(), shipped)["checkpoints"].get(name)
        # this run registered by this process alone (hub.register without persist): not yet for every process
        this_process_only = persisted is None and registry.get(name) == new
        # this run registered for every process, its cached copy deleted or damaged since: put back, nothing to add
        restore = registry.get(name) == new == persisted
        if name in registry and not overwrite and not this_process_only:
            if not restore:
                raise ValueError(f"checkpoint {name!r} is already registered (another checkpoint, or other "
                                 f"details); pass --overwrite (Python: overwrite=True) to replace it, or give another "
                                 f"--name")
            if dest.is_file() and sha256_file(dest) == new["sha256"]:
                return RegisteredRun(name, dest, changed=False)
        users = sorted(n for n, e in registry.items() if e["file"] == file and n != name)
        if users:
            raise ValueError(f"{file} is the file of checkpoint {users[0]!r}; give another --name (Python: name=)")
        source = run.parent / entry["file"]
        if not source.is_file():
            beside = run.with_suffix(".safetensors")  # renamed with the JSON, which still names the file it was
            hint = (f"; {beside.name} is there: {run.name} names its checkpoint {entry['file']}, give it that name "
                    f"again (to register it as {beside.stem}: --name {beside.stem}, Python: name={beside.stem!r})"
                    if beside.is_file() else "")  # not source, which is not there
            raise MissingFileError(f"no checkpoint file {source} beside {run}{hint}")
        sha = sha256_file(source)
        if sha != entry["sha256"]:
            raise ValueError(f"{source} does not match {run}: its sha256 is {sha}, the run's is {entry['sha256']} "
                             f"(changed after training?); nothing registered")
        _check_run_config(run, source, entry["config"])
        # the file appears once it is registered
        with _writing_cache_dir(dest.parent, file, source.stat().st_size), atomic_path(dest) as tmp:
            shutil.copyfile(source, tmp)
            if sha256_file(tmp) != entry["sha256"]:
                raise ValueError(f"{source} changed while it was copied; nothing registered")
            if not restore:
                _add_entry(name, **new, overwrite=overwrite or this_process_only, persist=True)
    return RegisteredRun(name, dest, changed=True)


def _check_run_config(run: Path, source: Path, config: dict[str, Any]) -> None:
    """Refuse a run whose recorded codec ``config`` is not the one its checkpoint ``source`` holds in its safetensors
    metadata (``_held_config``): registered, ``list`` would show the run's and ``load`` refuse it."""
    held = _held_config(source)
    if held is None:
        raise ValueError(f"{source} is not a latent-transforms checkpoint (no {FORMAT!r} codec config in its "
                         f"safetensors metadata); give the NAME.json that `latent-transforms train` wrote beside its "
                         f"NAME.safetensors; nothing registered")
    differ = _config_differences(config, held)
    if differ:
        raise ValueError(f"{run} does not describe {source}: its registry_entry config differs from the file's "
                         f"(key: (run JSON, file)): {differ}; the JSON was edited or belongs to another checkpoint: "
                         f"set its config to the file's, or register the JSON written with this file; nothing "
                         f"registered")


def unregister(name: str, *, persist: bool = False) -> dict[str, Any]:
    """Remove ``name`` from this process's registry and, with ``persist=True``, from the user registry file; returns
    the removed entry. Shipped checkpoints cannot be removed (an in-process ``register(..., overwrite=True)`` of a
    shipped name is undone: the shipped entry is back). The checkpoint file is left where it is
    (``latent-transforms unregister NAME`` also deletes the copy ``register`` put in the cache dir)."""
    if name in _shipped_registry() and name not in _registered:  # register(overwrite=True) of it is undone
        raise ValueError(f"{name!r} is a shipped checkpoint; only names you registered can be removed")
    removed: list[dict[str, Any]] = []

    def remove(entries: dict[str, dict[str, Any]]) -> bool:
        if name in entries:
            removed.append(entries.pop(name))
        return bool(removed)

    if persist and user_registry_path().is_file():
        _edit_user_registry(remove)
    with _lock:
        if name in _registered:
            removed.append(_registered.pop(name))
        for key in [k for k in _loaded if k[0] == name]:
            del _loaded[key]
    if not removed:
        registry = _registry(warn_if_broken=True)
        yours = sorted(n for n in registry if n not in _shipped_registry())
        close = _closest(name, yours)
        if not persist:
            hint = "; it is in the user registry file: pass persist=True" if name in registry else \
                f"; did you mean {close!r}?" if close else ""
            raise UnknownCheckpointError(f"checkpoint {name!r} is not in this process's registry{hint}")
        path = user_registry_path()  # the CLI's case: the message is read in a shell
        hint = f"did you mean {close!r}?" if close else f"the names you registered: {', '.join(yours)}" if yours else \
            "you have registered none (`latent-transforms list` shows the checkpoints there are)"
        raise UnknownCheckpointError(f"checkpoint {name!r} is not a name you registered (the user registry file "
                                     f"{path} {'does not hold it' if path.is_file() else 'does not exist'}); {hint}")
    return removed[0]


def _closest(name: str, names: Iterable[str]) -> str | None:
    """The name of ``names`` nearest to ``name`` ("Glow-CIFAR10" is near "glow-cifar10"), or None."""
    return next(iter(close_names(name, names)), None)


def _entry(name: str, paths: bool = True) -> dict[str, Any]:
    """The registry entry of ``name``; ``UnknownCheckpointError`` listing the known names otherwise (``paths``: the
    caller also takes a file path, as ``load`` does and ``fetch`` does not, and the message says so)."""
    with _lock:
        if name in _registered:
            return _registered[name]
    shipped = _shipped_registry()
    if name in shipped:  # the user registry may not redefine it: a broken user registry does not block it
        return shipped[name]
    registry = _registry()
    if name not in registry:
        known = ", ".join(sorted(registry)) or "none"
        close = _closest(name, registry)
        raise UnknownCheckpointError(
            f"unknown checkpoint {name!r} ("
            + ("not a registered name nor an existing .safetensors file)" if paths else "not a registered name)")
            + (f"; did you mean {close!r}? Known checkpoints: " if close else "; known checkpoints: ") + known
        )
    return registry[name]


def list_checkpoints() -> list[dict[str, Any]]:
    """Every registered checkpoint: its registry entry plus ``name``, ``cached``, ``shipped`` and ``remote``.

    ``cached``/``shipped``: a file of that name (and of the registered size, when known) is in the
    cache dir / the package; its sha256 is checked when it is used. ``remote``: ``$LATENT_TRANSFORMS_HUB_URL`` is set,
    so a missing file can be downloaded (unless ``LATENT_TRANSFORMS_OFFLINE`` is set). A user registry file that
    cannot be read is named in a warning and its entries are left out.
    """
    def present(path: Path, size: int | None) -> bool:
        return path.is_file() and (size is None or path.stat().st_size == size)

    rows = []
    for name, entry in sorted(_registry(warn_if_broken=True).items()):
        size = entry.get("size")
        rows.append({"name": name, **entry, "cached": present(cache_dir() / entry["file"], size),
                     "shipped": present(_SHIPPED_DIR / entry["file"], size), "remote": bool(os.environ.get(_HUB_URL))})
    return rows


def registry_for_messages(shipped_only: bool = False) -> dict[str, dict[str, Any]]:
    """Every registered name's registry entry (``file``, ``sha256``, ``config``, ...), or the shipped ones alone
    (``shipped_only``); for messages and suggestions, so an unusable user registry (or ``LATENT_TRANSFORMS_HOME``) is
    left out without a warning: ``register`` and ``load`` name it."""
    if not shipped_only:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _registry(warn_if_broken=True)
        except ValueError:  # a bad LATENT_TRANSFORMS_HOME: the shipped checkpoints are still there
            pass
    return _shipped_registry()


def names_for_images(image_shape: tuple[int, ...]) -> list[str]:
    """The registered checkpoints whose codec takes images of ``image_shape`` (C, H, W); for error messages
    (``registry_for_messages``)."""
    return sorted(n for n, e in registry_for_messages().items()
                  if tuple(e["config"].get("image_shape") or ()) == tuple(image_shape))


# -- resolution and download ------------------------------------------------------------------------
_OFFLINE, _ONLINE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")  # LATENT_TRANSFORMS_OFFLINE's values


def offline() -> bool:
    """Whether ``LATENT_TRANSFORMS_OFFLINE`` forbids downloads (``1``, ``true``, ``yes`` or ``on``, any case; ``0``,
    ``false``, ``no``, ``off`` or empty allow them; another value is a ``ValueError``): of checkpoints here, of
    CIFAR-10 in ``data``."""
    raw = os.environ.get("LATENT_TRANSFORMS_OFFLINE", "")
    value = raw.strip().lower()
    if value not in (*_OFFLINE, *_ONLINE):  # "y" read as online: downloads
        raise ValueError(f"LATENT_TRANSFORMS_OFFLINE must be 1, true, yes or on (offline) or 0, false, no, off or "
                         f"empty (online), got {raw!r}")
    return value in _OFFLINE


def _timeout() -> float:
    raw = os.environ.get("LATENT_TRANSFORMS_HUB_TIMEOUT")
    if not raw:
        return _DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < math.inf:
        raise ValueError(f"LATENT_TRANSFORMS_HUB_TIMEOUT must be a positive, finite number of seconds, got {raw!r}")
    return value


def _without_userinfo(url: str) -> str:
    """``url`` with the ``user:password@`` (or ``token@``) of its host replaced by ``***@``: what a message may name of
    it (a message ends up in a log)."""
    found = _NETLOC.match(url)
    if found is None or "@" not in found[2]:
        return url
    return f"{found[1] or ''}//***@{found[2].rpartition('@')[2]}{url[found.end():]}"


def _remote_url(file: str) -> str | None:
    base = os.environ.get(_HUB_URL)
    if not base:
        return None
    shown = _without_userinfo(base)
    try:
        parts = urllib.parse.urlsplit(base)
    except ValueError as e:  # e.g. "http://[::1" (an unclosed IPv6 bracket)
        raise ValueError(f"LATENT_TRANSFORMS_HUB_URL={shown!r} is not a valid URL ({e})") from None
    if any(not c.isprintable() for c in base):  # a space is printable: file:///my checkpoints works
        raise ValueError(f"LATENT_TRANSFORMS_HUB_URL={shown!r} holds a control character (a stray newline?)")
    scheme = parts.scheme.lower()
    if scheme not in _URL_SCHEMES:
        windows = PureWindowsPath(base)  # C:\ckpts: its drive letter reads as a scheme
        local = windows.as_uri() if len(scheme) == 1 and windows.is_absolute() else "file:///absolute/path"
        raise ValueError(f"LATENT_TRANSFORMS_HUB_URL={shown!r} has unsupported scheme {scheme!r}; use one of "
                         f"{list(_URL_SCHEMES)} (a local directory: {local})")
    if scheme != "file" and ("?" in base or "#" in base):  # the file name went after it: ...?token=x/a.safetensors
        cut = len(shown) - len(re.split(r"[?#]", shown, maxsplit=1)[1])  # up to the "?" or "#": no token shown
        raise ValueError(f"LATENT_TRANSFORMS_HUB_URL={shown[:cut] + '...'!r} has a query or "
                         f"fragment ('?' or '#'), which the file name would follow; it is the folder that holds the "
                         f"files (a '?' or '#' in a folder name is %3F or %23)")
    if shown != base:  # urllib sends no credentials from a URL: it looked up "user:password@host" as the host name
        raise ValueError(f"LATENT_TRANSFORMS_HUB_URL={shown!r} holds a user name or password before its host, which "
                         f"downloads do not send; serve the files where they can be downloaded without them, or copy "
                         f"them into the cache dir")
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise ValueError(f"LATENT_TRANSFORMS_HUB_URL={shown!r} reads {parts.netloc!r} as a host name; a local "
                         f"directory is file:///absolute/path (three slashes), a Windows network share "
                         f"file:////{parts.netloc}{parts.path} (four; Path.as_uri() writes two)")
    if scheme != "file":  # http sends the path as ASCII: a space or an "é" in it is percent-encoded, as a browser does
        base = urllib.parse.urlunsplit(parts._replace(path=urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=~")))
    return base.rstrip("/") + "/" + urllib.parse.quote(file)


def _one_line(reason: object) -> str:
    return " ".join(str(reason).split())


def _why(error: BaseException) -> str:
    """A network error's reason on one line, without a user name or password it quotes (http.client's for a redirect
    to ``http://user:password@host/``: "nonnumeric port: 'password@host'"; urllib's refusal of a redirect to
    ``gopher://user:password@host/?signature``, the URL, named as ``_shown_url`` names it); a timeout's says which
    setting to raise."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, TimeoutError):
        return (f"timed out (no answer within LATENT_TRANSFORMS_HUB_TIMEOUT={_timeout():g} seconds; raise it for a "
                f"slow server or connection)")
    # EOFError() has no words (an ftp:// server a redirect led to that closed at once): its type says what happened
    why = _one_line(reason) or type(reason).__name__
    if isinstance(error, urllib.error.HTTPError) and error.filename:  # the URL of the answer, or of a refused redirect
        why = why.replace(error.filename, _shown_url(error.filename))
    return _QUOTED_USERINFO.sub(r"\1***@", why)


def _status_hint(status: int, file: str) -> str:
    """What to do about an HTTP error status, or ""."""
    if status in (404, 410):
        return f"; the server has no {file}: is {_HUB_URL} the address of the folder that holds it?"
    if status == 429 or status >= 500:
        return "; an error on the server's side, often passing: try again later"
    return ""


def _shown_url(url: str) -> str:
    """A URL a server redirected to, as a message names it: without its query, which may hold a signature
    (``?X-Amz-Signature=...``), nor its user name and password."""
    return _without_userinfo(urllib.parse.urlsplit(url)._replace(query="", fragment="").geturl())


def _as_fetched(url: str, final: str) -> str:
    """``url`` as a message names it: with the URL an http(s) server redirected it to, ``final``, where that differs
    (a release page to its CDN), as ``_shown_url`` names it. A ``file://`` URL is never redirected (urllib may give it
    back rewritten: ``file://localhost/x`` as ``file:///x``)."""
    if final == url or urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        return url
    return f"{url} (redirected to {_shown_url(final)})"


class _NotServed(HubError):
    """No answer from the hub URL (no network, an unreachable host, a missing ``file://`` file) or the server has no
    such file (404, 410): the file is not to be had from there, so copying it into the cache dir is a way out."""


def _malformed_chunk(error: http.client.IncompleteRead) -> bool:
    """Whether http.client raised ``error`` for a chunk-size line that is not a hexadecimal number (it turns the
    ``ValueError`` of ``int(line, 16)`` into an ``IncompleteRead``), not for a connection closed where that line
    should be (the line is then ``b''``)."""
    cause = error.__context__
    return isinstance(cause, ValueError) and not str(cause).endswith("b''")


class _Copy(enum.Enum):
    """What a copy of a checkpoint file is, against its registered sha256."""
    VERIFIED = enum.auto()
    MISSING = enum.auto()
    MISMATCH = enum.auto()   # there, but not the registered bytes
    UNUSABLE = enum.auto()   # a directory, or unreadable: the reason says which


def _check_copy(path: Path, sha256: str) -> tuple[_Copy, str]:
    """``(state, reason)`` of ``path`` as the verified file of sha256 ``sha256``; ``reason`` is what the user should
    be told of an ``UNUSABLE`` copy ("is a directory, not the file", "cannot be read (Permission denied)"), else ""."""
    if path.is_dir():
        return _Copy.UNUSABLE, "is a directory, not the file"
    if not path.is_file():
        return _Copy.MISSING, ""
    try:
        return (_Copy.VERIFIED if sha256_file(path) == sha256 else _Copy.MISMATCH), ""
    except OSError as e:  # no read permission
        return _Copy.UNUSABLE, f"cannot be read ({e.strerror or e})"


def remove_abandoned_parts(dest: Path, min_age_s: float | None = None) -> None:
    """Delete temp files of writes of ``dest`` that a killed process left: those untouched for ``min_age_s`` seconds,
    by default an hour and twice the read timeout (a live download writes what arrives, so at least once per
    timeout); 0 where no writer of ``dest`` can be alive (a train run holding its lock)."""
    cutoff = time.time() - (max(3600.0, 2 * _timeout()) if min_age_s is None else min_age_s)
    for part in dest.parent.glob(f".{glob.escape(dest.name)}.*.part"):
        with contextlib.suppress(OSError):
            if part.stat().st_mtime <= cutoff:
                part.unlink()


def _download(url: str, dest: Path, sha256: str, size: int | None = None) -> None:
    """Stream ``url`` to a unique temp file next to ``dest``, verify length (the ``Content-Length`` header and the
    registry's ``size``, which also stops a body that runs past it) and sha256, then rename into place (``dest``'s
    folder exists: ``fetch`` holds its lock)."""
    with _writing_cache_dir(dest.parent):
        remove_abandoned_parts(dest)
    page = False  # the server answered with a web page (a login page, a page about the file)
    needs = size  # the file's size, once known (the registry's, else Content-Length): what a full disk is told

    def writing() -> contextlib.AbstractContextManager[None]:
        return _writing_cache_dir(dest.parent, dest.name, needs)

    try:
        with _atomic_file(dest, writing) as (out, _):
            try:  # without Accept-Encoding a server may compress the file, and the sha256 is of the file as is
                response = urllib.request.urlopen(urllib.request.Request(url, headers={"Accept-Encoding": "identity"}),
                                                  timeout=_timeout())
            except urllib.error.HTTPError as e:  # one line: a redirect loop's reason spans three
                # closed here: the error holds the server's answer, open; left to the garbage collector, its
                # "unclosed socket" ResourceWarning came at a moment of the collector's choosing, anywhere later
                e.close()
                error = _NotServed if e.code in (404, 410) else HubError
                raise error(f"downloading {_as_fetched(url, e.filename)} failed: HTTP {e.code} {_why(e)}"
                            f"{_status_hint(e.code, dest.name)}") from None
            # URLError (refused, no such host, no file), a timeout, the connection closed before any status line
            # (RemoteDisconnected, an HTTPException too): no answer
            except OSError as e:
                raise _NotServed(f"cannot download {url}: {_why(e)}") from None
            except http.client.HTTPException as e:  # a malformed status line or header: the server answered
                raise HubError(f"cannot download {url}: {_why(e)}") from None
            url = _as_fetched(url, response.geturl())  # what the messages below name
            with response:
                page = response.headers.get_content_type() == "text/html"
                encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
                if encoding != "identity":
                    raise HubError(f"the server sent {dest.name} from {url} compressed (Content-Encoding: {encoding}), "
                                   f"although asked for it as is; have it serve .safetensors files uncompressed, or "
                                   f"download the file yourself into {dest.parent}")
                length = (response.headers.get("Content-Length") or "").strip()
                # ASCII digits only ("²".isdigit()), and short: int() refuses more than 4,300 digits
                expected = int(length) if length.isascii() and length.isdigit() and len(length) < 30 else None
                if None not in (expected, size) and expected != size:
                    raise HubError(f"download of {dest.name} from {url} has the wrong length: Content-Length is "
                                   f"{expected} bytes, the registry's size is {size} (not the registered file)")
                needs = expected if size is None else size
                digest, received = hashlib.sha256(), 0
                with tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                    try:
                        while chunk := response.read1(_CHUNK):  # what has arrived: read() waits for a whole _CHUNK
                            received += len(chunk)
                            if size is not None and received > size:  # an endless body must not fill the disk
                                raise HubError(f"download of {dest.name} from {url} is too long: the registry's size "
                                               f"is {size} bytes, got at least {received}")
                            with writing():  # a full disk is not a network failure
                                out.write(chunk)
                                out.flush()  # the .part file grows (and its mtime moves) as the data arrives
                            digest.update(chunk)
                            bar.update(len(chunk))
                    except http.client.IncompleteRead as e:  # e.partial is never the file's: read1 raises it with
                        # b"" (no data), _get_chunk_left with the part of a chunk's closing CRLF that came
                        if _malformed_chunk(e):
                            raise HubError(f"download of {dest.name} from {url} failed after {received} bytes: the "
                                           f"server sent a malformed response (a chunk size in its chunked transfer "
                                           f"encoding is not a hexadecimal number)") from None
                        raise HubError(f"download of {dest.name} from {url} is truncated: the connection closed "
                                       f"after {received} bytes") from None
                    except (OSError, http.client.HTTPException) as e:
                        raise HubError(f"downloading {url} failed after {received} bytes: {_why(e)}") from None
            for source, want in (("Content-Length", expected), ("the registry's size", size)):
                if want is not None and received != want:
                    raise HubError(f"download of {dest.name} from {url} is truncated or too long: {source} is {want} "
                                   f"bytes, got {received}")
            if digest.hexdigest() != sha256:
                raise HubError(f"download of {dest.name} from {url} has the wrong sha256: expected {sha256}, got "
                               f"{digest.hexdigest()}")
    except _CacheDirError as e:  # a PermissionError at the rename, on Windows, where no lock keeps processes apart:
        # another one put the file there first and has it open, reading it
        if not (isinstance(e.__context__, PermissionError) and _check_copy(dest, sha256)[0] is _Copy.VERIFIED):
            raise
    except HubError as e:
        if not page:
            raise
        raise HubError(f"{e}; the server sent a web page (Content-Type: text/html), not the file: is {_HUB_URL} the "
                       f"address the files themselves are downloaded from (a raw download URL, not a page about them)?"
                       ) from None


def fetch(name: str) -> Path:
    """Path of a verified copy of checkpoint ``name`` (cache dir or shipped), downloading it if needed."""
    if name == "":  # not the path '' (the current directory, to _is_path)
        raise ValueError("the checkpoint name is empty: give a registered checkpoint name (`latent-transforms list` or "
                         "hub.list_checkpoints() lists them)")
    if isinstance(name, str) and _is_path(name):  # a file has no registry entry to verify it against
        raise UnknownCheckpointError(
            f"fetch takes a registered checkpoint name, got the path {name!r}; load a file with hub.load(path), or "
            f"register the run that wrote it (latent-transforms register RUN.json) to fetch it by name")
    entry = _entry(name, paths=False)
    file: str
    file, sha256 = entry["file"], entry["sha256"]
    cached, shipped = cache_dir() / file, _SHIPPED_DIR / file
    notes = []
    cached_state, reason = _check_copy(cached, sha256)
    if cached_state is _Copy.VERIFIED:
        remove_abandoned_parts(cached)  # of a download killed before another one finished
        return cached
    if cached_state is _Copy.MISMATCH:
        # not deleted here: another process may have just put a good copy there; a verified download replaces it
        notes.append(f"cached {cached} does not match the registry (sha256 mismatch: corrupted, or an older "
                     f"version)")
    elif cached_state is _Copy.UNUSABLE:
        notes.append(f"cached {cached} {reason}")
    shipped_state, reason = _check_copy(shipped, sha256)
    if shipped_state is _Copy.VERIFIED:
        return shipped
    if shipped_state is _Copy.UNUSABLE:
        notes.append(f"shipped {shipped} {reason}")
    elif shipped_state is _Copy.MISMATCH:
        if any(e["file"] == file and e["sha256"] != sha256 for e in _shipped_registry().values()):
            notes.append(f"shipped {shipped} is another file than {name!r}'s entry names (the shipped registry gives "
                         f"it another sha256: was {name!r} registered again, with overwrite=True?)")
        else:
            notes.append(f"shipped {shipped} is corrupted (sha256 mismatch)")
    hints = []  # how a name of the user's own comes to lack its file
    if name not in _shipped_registry() and cached_state in (_Copy.MISMATCH, _Copy.MISSING):
        hints.append("saved again after it was registered? register it again with the new file's sha256 "
                     "(hub.register(..., overwrite=True), or `latent-transforms register RUN.json --overwrite`)"
                     if cached_state is _Copy.MISMATCH else  # there, but not the registered bytes
                     f"registered from a training run? `latent-transforms register RUN.json` copies its file back; "
                     f"registered from Python (hub.register)? it does not copy the file: copy {file} into "
                     f"{cache_dir()}")
    looked = "; ".join([f"looked in {cached} and {shipped}", *notes, *hints])
    if cached.is_dir():  # a download could not take its place
        raise HubError(f"checkpoint {name!r} cannot be fetched: {looked}; remove that directory")
    if offline():  # a cluster's compute node: the login node has the network, and the cache dir is shared
        source = "" if os.environ.get(_HUB_URL) else f" and {_HUB_URL} set to the URL that serves {file}"
        raise HubError(f"checkpoint {name!r} is not available offline (LATENT_TRANSFORMS_OFFLINE is set); {looked}; "
                       f"fetch it beforehand where the network is reachable (on a cluster, the login node): "
                       f"`latent-transforms fetch {shlex.quote(name)}` with "
                       f"LATENT_TRANSFORMS_HOME={shlex.quote(str(cache_dir()))}{source}")
    url = _remote_url(file)
    if url is None:
        raise HubError(
            f"checkpoint {name!r} not found: {looked}; set LATENT_TRANSFORMS_HUB_URL to a base URL "
            f"(http://, https:// or file://) that serves {file}"
        )
    try:
        _make_cache_dir(cached.parent)
        with _cache_dir_lock(cached.parent):  # DDP ranks loading one name at once: one downloads, the others wait
            if _check_copy(cached, sha256)[0] is _Copy.VERIFIED:  # downloaded meanwhile by another process
                return cached
            _download(url, cached, sha256, entry.get("size"))
    except HubError as e:  # a failed download is why a bad cached or shipped copy could not be replaced: say both
        if isinstance(e, _CacheDirError):  # the hints say to copy the file into it, which cannot be written
            hints = []
        elif cached_state is _Copy.MISSING and not isinstance(e, _NotServed):  # the server answered, and the
            hints = []  # download failed (a 5xx, a cut, wrong or malformed body): the failure is the news, not a copy
        if not notes and not hints:
            raise
        raise HubError("; ".join([str(e), *([f"and {'; '.join(notes)}"] if notes else []), *hints])) from None
    return cached


def _is_path(name_or_path: str) -> bool:
    """Whether ``load`` reads its argument as a path (``~`` expanded): an existing file or directory, or what looks
    like a file path (a path separator or the ``.safetensors`` suffix, so that a missing file is reported as one, not
    as an unknown name), unless it is a registered name (a file in the cwd called ``glow-digits`` does not replace
    the verified checkpoint: ``./glow-digits`` reads it; a name may look like a path: ``team/vae``)."""
    looks_like_a_path = name_or_path.endswith(".safetensors") or any(s in name_or_path for s in _SEPARATORS)
    try:
        path = Path(name_or_path).expanduser()
        if not (path.is_file() or path.is_dir() or looks_like_a_path):
            return False
    except OSError:  # e.g. a name too long for a path: not a file, so a registry name
        return False
    except RuntimeError:  # a ~ that names no home directory: a path if it looks like one (load_checkpoint names it)
        if not looks_like_a_path:
            return False
    return name_or_path not in _registry(warn_if_broken=True)


@torch.inference_mode(False)  # the in-process cache's copy too: made inside inference_mode it was an inference one
def load(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> "Codec":
    """A frozen codec from ``name_or_path``, a checkpoint file path or a registry name (``fetch``-ed, then cached
    in-process), on ``device`` (default ``"cpu"``: a transform given a name loads it there too; move it, or the
    transform, with ``.to(device)``).

    An existing file is read as safetensors whatever its suffix (a pickled ``.pt`` is refused, never run); ``~`` is
    expanded, and a path (with a separator or the ``.safetensors`` suffix) that is neither on disk nor a registered
    name is a ``MissingFileError`` (a directory: ``NotAFileError``, also an ``IsADirectoryError``). A name is read
    and verified once per process, device and registered sha256 (a name registered again by another process,
    ``latent-transforms register --overwrite``, is read again); every call returns its own copy, so moving or casting
    one codec (``.to``, ``.double()``, a transform's ``.cuda()``) leaves the others alone.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise WrongTypeError(f"name_or_path must be a checkpoint name or a .safetensors path, got "
                             f"{type(name_or_path).__name__}; hub.list_checkpoints() lists the names")
    if not str(name_or_path):
        raise ValueError("name_or_path is empty: give a checkpoint name or a .safetensors path")
    device = _load_device(device)
    if isinstance(name_or_path, os.PathLike) or _is_path(name_or_path):
        return load_checkpoint(name_or_path, device)
    name = str(name_or_path)
    entry = _entry(name)  # looked up on every call: another process may have registered the name again meanwhile
    key = (name, str(device), entry["sha256"])
    with _lock:
        if key in _loaded:
            return copy.deepcopy(_loaded[key])
        lock = _load_locks.setdefault(key, threading.Lock())
    with lock:  # one build per (name, device), even when threads race
        with _lock:
            if key in _loaded:
                return copy.deepcopy(_loaded[key])
        codec = load_checkpoint(fetch(name), device, sha256=entry["sha256"])
        differ = _config_differences(entry["config"], codec.config)
        if differ:
            raise HubError(f"checkpoint {name!r}: the file's config differs from the registry's "
                           f"(key: (registry, file)): {differ}")
        with _lock:
            for old in [k for k in _loaded if k[:2] == key[:2]]:  # the name's earlier checkpoint
                del _loaded[old]
            _loaded[key] = codec
    return copy.deepcopy(codec)


__all__ = ["FORMAT", "HubError", "UnknownCheckpointError", "cache_dir", "fetch", "list_checkpoints", "load",
           "load_checkpoint", "RegisteredRun", "register", "register_run", "save_checkpoint", "sha256_file",
           "unregister", "user_registry_path"]
