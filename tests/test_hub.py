"""Checkpoint format, registry and download cache: a local HTTP server, no network."""
from __future__ import annotations

import errno
import gc
import gzip
import hashlib
import json
import multiprocessing
import os
import pickle
import random
import re
import shlex
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_bytes
from safetensors.torch import save_file

from latent_transforms import LatentNoise, hub
from latent_transforms.cli import main
from latent_transforms.codecs import Codec, build_codec
from latent_transforms.validation import MissingFileError

from conftest import ROOT, needs_source_tree

# entries registered here on purpose without their file (register warns a user about that; tested below)
pytestmark = pytest.mark.filterwarnings("ignore:registered .*, but its file")

CONFIG = {"kind": "vae", "image_shape": [1, 8, 8], "latent_dim": 4, "hidden": 8}
GOOD = random.Random(0).randbytes(3000)  # the same in spawned child processes
BAD = random.Random(1).randbytes(3000)
SHA_GOOD = hashlib.sha256(GOOD).hexdigest()
# what follows the one chunk of 1000 bytes of these files before the server closes the connection
_CHUNK_ENDS = {"chunked-cut-between.safetensors": b"\r\n", "chunked-cut-in-crlf.safetensors": b"\r",
               "bad-chunk.safetensors": b"\r\nzz\r\n"}
_ERROR_STATUS = {"error.safetensors": 500, "gone.safetensors": 410, "busy.safetensors": 429,
                 "forbidden.safetensors": 403}
SLOW_SECONDS = 5.0  # far beyond the 0.2 s timeout: the elapsed-time check holds on a loaded machine
STALL_SECONDS = 10.0  # longer than the tests' hub timeout (5 s): a client that waits for the body's end times out


class _Handler(BaseHTTPRequestHandler):
    """Serves /good, /bad-hash, /truncated, /chunked-cut (inside a chunk), /chunked-cut-between (before a chunk-size
    line), /chunked-cut-in-crlf (inside the CRLF that ends a chunk), /bad-chunk (a chunk-size line that is not hex),
    /bad-status (a status line that is not HTTP's), /closed (the connection closed, no status line), /no-length, /slow
    (sleeps before the body), /error (500), /gone (410), /busy (429), /forbidden (403), /gzip (GOOD compressed,
    whatever was asked), /identity (GOOD with "Content-Encoding: Identity"), /page (an HTML page), the ``stalled``
    files (the first part of the body, then nothing until ``release`` is set), /moved-<file> (a redirect to
    /cdn/<file>?X-Signature=..., which serves <file>), /signed-in-<scheme> (a redirect to a <scheme> URL with a
    password and a signed query); 404 otherwise."""

    counts: dict[str, int] = {}
    accept_encoding: dict[str, str | None] = {}  # name -> the Accept-Encoding header of its last request
    files: dict[str, bytes] = {}
    stalled: dict[str, tuple[int | None, bytes, bytes]] = {}  # name -> (Content-Length or None, first part, rest)
    release = threading.Event()

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: bytes, length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        if name.startswith("cdn/"):  # where /moved-<file> redirects, with a query after the file name
            name = name[len("cdn/"):].split("?")[0]
        self.counts[name] = self.counts.get(name, 0) + 1
        self.accept_encoding[name] = self.headers.get("Accept-Encoding")
        try:
            if name in _ERROR_STATUS:
                self.send_error(_ERROR_STATUS[name])
            elif name == "bad-status.safetensors":
                self.wfile.write(b"garbled\r\n")
                self.close_connection = True
            elif name == "closed.safetensors":
                self.close_connection = True
            elif name in ("gzip.safetensors", "page.safetensors"):
                body = gzip.compress(GOOD) if name == "gzip.safetensors" else b"<!DOCTYPE html><html>Sign in</html>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                if name == "gzip.safetensors":
                    self.send_header("Content-Encoding", "gzip")
                else:
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(body)
            elif name == "truncated.safetensors":
                self._send(GOOD[:1000], length=len(GOOD))
                self.close_connection = True
            elif name == "chunked-cut.safetensors":  # a chunk of 1000 bytes announced, 500 sent, then the close
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"3e8\r\n" + GOOD[:500])
                self.close_connection = True
            elif name in _CHUNK_ENDS:  # one chunk of 1000 bytes, then the close (after its CRLF, or half of it),
                self.send_response(200)  # or a chunk-size line that is not hex
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.write(b"3e8\r\n" + GOOD[:1000] + _CHUNK_ENDS[name])
                self.close_connection = True
            elif name == "no-length.safetensors":  # a short body without Content-Length (HTTP/1.0: until close)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(GOOD[:1000])
                self.close_connection = True
            elif name == "slow.safetensors":
                self.send_response(200)
                self.send_header("Content-Length", str(len(GOOD)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(SLOW_SECONDS)
                self.wfile.write(GOOD)
            elif name in self.stalled:
                length, first, rest = self.stalled[name]
                self.send_response(200)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(first)
                self.wfile.flush()
                self.release.wait(STALL_SECONDS)
                self.wfile.write(rest)
                self.close_connection = True
            elif name == "identity.safetensors":  # GOOD, labelled with the (redundant) encoding "as is", capitalised
                self.send_response(200)
                self.send_header("Content-Length", str(len(GOOD)))
                self.send_header("Content-Encoding", "Identity")
                self.end_headers()
                self.wfile.write(GOOD)
            elif name == "loop.safetensors":  # redirects to itself: urllib gives up after 10 with a 3-line reason
                self.send_response(302)
                self.send_header("Location", "/loop.safetensors")
                self.end_headers()
            elif name.startswith("moved-"):  # redirects to /cdn/<the rest>, as a release page to its CDN, signed
                self.send_response(302)
                self.send_header("Location", f"/cdn/{name[len('moved-'):]}?X-Signature=s3cr3t")
                self.end_headers()
            elif name.startswith("signed-in-"):  # redirects to a URL with a password: http's, urllib reads as a
                self.send_response(302)         # port; gopher's, urllib refuses, quoting it
                scheme = name[len("signed-in-"):-len(".safetensors")]
                signed = "cdn/good.safetensors?X-Amz-Signature=s3cr3t"
                self.send_header("Location", f"{scheme}://bob:s3cr3t@localhost/{signed}")
                self.end_headers()
            elif name.startswith("length-"):  # Content-Length "²" or 5,000 digits: int() refuses both
                self.send_response(200)
                self.send_header("Content-Length", "\u00b2" if name == "length-unicode.safetensors" else "9" * 5000)
                self.end_headers()
                self.wfile.write(GOOD)
                self.close_connection = True
            elif name in self.files:
                self._send(self.files[name])
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture(scope="module")
def server():
    _Handler.files = {"good.safetensors": GOOD, "bad-hash.safetensors": BAD}
    _Handler.stalled = {
        "trickle.safetensors": (len(GOOD), GOOD[:1000], GOOD[1000:]),
        "endless.safetensors": (None, GOOD + GOOD, b""),  # past the registered size, then no end
        "long.safetensors": (2 * len(GOOD), GOOD, GOOD),  # announces twice the registered size
    }
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """Empty cache in tmp_path, the local server as hub URL, an empty runtime registry and codec cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(cache))
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", server)
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_TIMEOUT", "5")
    monkeypatch.delenv("LATENT_TRANSFORMS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_loaded", {})
    monkeypatch.setattr(hub, "_SHIPPED_DIR", tmp_path / "shipped")
    _Handler.counts.clear()
    return cache


@pytest.fixture
def release():
    """The event that lets the stalled responses go on; set when the test ends, so no server thread is left waiting."""
    _Handler.release.clear()
    yield _Handler.release
    _Handler.release.set()


def _register(name: str, file: str, sha256: str = SHA_GOOD, config=CONFIG, **kw) -> None:
    hub.register(name, file=file, sha256=sha256, config=config, trained_on="test", quality={"mse": 0.01}, **kw)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".part")) if directory.exists() else []


def _codec(seed: int = 0):
    torch.manual_seed(seed)
    return build_codec(CONFIG)


def _outputs(codec) -> torch.Tensor:
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return codec.decode(codec.encode(x))


# -- checkpoint format ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["config", "format", 1])
def test_extra_metadata_may_not_replace_the_config_or_format_nor_use_a_key_other_than_str(tmp_path, key):
    path = tmp_path / "vae.safetensors"
    with pytest.raises(ValueError, match=f"extra_metadata keys must be str other than 'config' and 'format', got "
                                         f"{key!r}$") as e:
        hub.save_checkpoint(_codec(), path, extra_metadata={key: "mine"})
    assert isinstance(e.value, TypeError) == (key == 1)  # a key of the wrong type: a WrongTypeError, as an option's
    assert not path.exists()


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_sha256_file_of_a_missing_file_or_a_directory_is_a_missing_file_named_by_its_path(tmp_path, what):
    # mutation round, audit 368: without the check, open() raised a plain FileNotFoundError or IsADirectoryError
    path = tmp_path / "none.safetensors" if what == "missing" else tmp_path
    with pytest.raises(MissingFileError, match=rf"^no file at {re.escape(str(path))}$"):
        hub.sha256_file(path)


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    codec = _codec()
    path = tmp_path / "vae.safetensors"
    digest = hub.save_checkpoint(codec, path, extra_metadata={"epochs": 3})
    assert digest == hub.sha256_file(path)
    assert _leftovers(tmp_path) == []
    loaded = hub.load_checkpoint(path)
    assert loaded.config == codec.config and loaded.frozen and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(_outputs(loaded), _outputs(codec.eval()))
    assert torch.equal(_outputs(hub.load(str(path))), _outputs(loaded))


def test_the_same_weights_give_the_same_file_and_sha256(tmp_path):
    # safetensors writes its metadata in a per-process hash order: without the sorted header, six metadata keys
    # (720 orders) came out in different orders from save to save, so retraining gave another registry sha256
    codec = _codec()
    meta = {f"key{i}": str(i) for i in range(4)}
    digests = {hub.save_checkpoint(codec, tmp_path / f"c{i}.safetensors", extra_metadata=meta) for i in range(8)}
    assert len(digests) == 1
    assert {hub.sha256_file(tmp_path / f"c{i}.safetensors") for i in range(8)} == digests
    metadata, tensors = hub.read_safetensors(tmp_path / "c0.safetensors")
    assert metadata == {**meta, "config": json.dumps(codec.config, sort_keys=True), "format": hub.FORMAT}
    assert set(tensors) == set(codec.state_dict()) and all(torch.equal(tensors[k], v) for k, v in codec.state_dict().items())


def test_the_config_a_file_holds_is_read_from_its_header_and_none_for_other_files(tmp_path):
    """register_run and register read a checkpoint's codec config (audit 302) from its safetensors header: a
    checkpoint's config; None for a safetensors file without one and for any other bytes (too short, a header longer
    than the file, not JSON, JSON too deep), whose sha256 is still every byte's."""
    path = tmp_path / "c.safetensors"
    codec = _codec()
    hub.save_checkpoint(codec, path, extra_metadata={"epochs": 3})
    assert hub._held_config(path) == json.loads(json.dumps(codec.config))
    save_file({"w": torch.zeros(2)}, path)  # a safetensors header without "__metadata__"
    assert hub._held_config(path) is None
    for data in (b"", b"abc", (2**40).to_bytes(8, "little") + b"x", (64).to_bytes(8, "little") + b"{no json",
                 (2).to_bytes(8, "little") + b"[]" + bytes(5000), (10**5).to_bytes(8, "little") + b"[" * 10**5):
        path.write_bytes(data)
        assert hub._held_config(path) is None
        assert hub.sha256_file(path) == hashlib.sha256(data).hexdigest()
    path.unlink()  # gone after register's is_file() (another process), or a folder: None, not safe_open's OSError
    assert hub._held_config(path) is None and hub._held_config(tmp_path) is None


def test_a_run_whose_checkpoint_holds_an_empty_config_is_told_each_key_that_differs(tmp_path):
    """Mutation round 44: a checkpoint's config of no keys is a config the run's differs from (each key named), not
    a file that holds none."""
    source = tmp_path / "c.safetensors"
    save_file({"w": torch.zeros(2)}, source, metadata={"format": hub.FORMAT, "config": "{}"})
    with pytest.raises(ValueError, match=r"c.json does not describe .*c.safetensors: .* \(key: \(run JSON, file\)\): "
                                         r"\{'kind': \('vae', None\)\}"):
        hub._check_run_config(tmp_path / "c.json", source, {"kind": "vae"})


def test_checkpoint_functions_refuse_a_codec_path_or_sha256_they_cannot_use(tmp_path):
    """Audit 271's fuzzing: save_checkpoint(nn.Linear) was "'Linear' object has no attribute 'config'", a path of 3
    pathlib's TypeError, and a sha256 that is no hash ("", upper case) "does not have the expected sha256 ... (replaced
    while it was read ...)"; a well-formed hash of another file now names that cause first."""
    path = tmp_path / "c.safetensors"
    sha = hub.save_checkpoint(_codec(), path)
    with pytest.raises(TypeError, match=r"^codec must be a Codec \(a Glow, a ConvVAE or a codec of your own\), got "
                                        r"Linear$"):
        hub.save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "d.safetensors")
    with pytest.raises(TypeError, match=r"^path must be a .safetensors checkpoint's path, got int$"):
        hub.load_checkpoint(3)
    for bad in ("", sha.upper(), sha[:-1], sha + "0", 0):  # one digit more: mutation round 38
        with pytest.raises(ValueError, match=rf"^sha256 must be 64 lowercase hex digits .* or None, got {bad!r}$") as e:
            hub.load_checkpoint(path, sha256=bad)
        assert isinstance(e.value, TypeError) == (bad == 0)  # a WrongTypeError for a wrong type (mutation round 38)
    other = "0" * 64  # a well-formed hash of another file: the message said only "replaced while it was read"
    with pytest.raises(hub.HubError, match=rf"expected sha256 {other}, got {sha}: the sha256 given is another file's, "
                                           r"or the file was replaced while it was read"):
        hub.load_checkpoint(path, sha256=other)
    hub.load_checkpoint(path, sha256=sha)


def test_writing_a_large_file_copies_none_of_its_bytes(tmp_path):
    """A 50,000-image latent cache is ~600 MB: the tensors' bytes go to the file from views of their memory (the
    header rewrite once concatenated the file anew, three copies at once; then safetensors' save() held two)."""
    import tracemalloc

    size = 16 * 2**20
    tensors = {"latents": torch.arange(size // 4, dtype=torch.float32)}
    tracemalloc.start()
    try:
        digest = hub.write_safetensors(tmp_path / "big.safetensors", tensors, {"b": "2", "a": "1"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.1 * size, f"peak {peak / size:.2f}x the file"  # safetensors' save() held two copies
    assert digest == hub.sha256_file(tmp_path / "big.safetensors")
    metadata, back = hub.read_safetensors(tmp_path / "big.safetensors")
    assert metadata == {"a": "1", "b": "2"} and torch.equal(back["latents"], tensors["latents"])


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool]


def _safetensors_reference(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """What write_safetensors wrote before it streamed: safetensors' bytes, the header's metadata keys sorted."""
    data = safetensors_bytes(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + data[8 + n:]


@settings(max_examples=40)
@given(st.dictionaries(st.text(min_size=1, max_size=6), st.tuples(st.sampled_from(_DTYPES),
       st.lists(st.integers(0, 3), max_size=3)), min_size=1, max_size=5),
       st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=4))
def test_files_are_safetensors_own_bytes_with_sorted_metadata(specs, metadata):
    """Any names (unicode included), dtypes (bfloat16, bool), shapes (0-d, empty) and metadata: the same bytes as
    safetensors' own writer with the metadata sorted, so files and registry sha256s written before stay valid."""
    gen = torch.Generator().manual_seed(0)
    tensors = {name: (torch.randint(0, 2, shape, generator=gen) if dtype == torch.bool else
                      torch.randn(shape, generator=gen) * 50).to(dtype) for name, (dtype, shape) in specs.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.safetensors"
        digest = hub.write_safetensors(path, tensors, metadata)
        data = path.read_bytes()
        assert data == _safetensors_reference(tensors, metadata)
        assert digest == hashlib.sha256(data).hexdigest()
        back_metadata, back = hub.read_safetensors(path)
    assert back_metadata == metadata and back.keys() == tensors.keys()
    assert all(torch.equal(back[k], v) for k, v in tensors.items())


def test_a_file_of_no_tensors_is_valid(tmp_path):
    """safetensors' own writer gives no tensors and empty metadata an invalid header ('{},"__metadata__":{}}')."""
    for metadata in ({}, {"a": "1"}):
        hub.write_safetensors(tmp_path / "f.safetensors", {}, metadata)
        assert hub.read_safetensors(tmp_path / "f.safetensors") == (metadata, {})


def test_metadata_that_is_not_str_to_str_is_refused_by_key(tmp_path):
    with pytest.raises(TypeError, match=r"metadata maps str to str; not so at key\(s\) 'n'"):
        hub.write_safetensors(tmp_path / "f.safetensors", {"w": torch.zeros(1)}, {"a": "1", "n": 2})
    assert list(tmp_path.iterdir()) == []


def test_a_tensor_that_cannot_be_written_from_its_memory_is_refused_by_name(tmp_path):
    for bad, why in [(torch.zeros(3, 4).t(), "not contiguous"), (torch.zeros(3).to_sparse(), "sparse")]:
        with pytest.raises(ValueError, match=rf"cannot save tensor 'w': it must be a dense, contiguous CPU tensor.*{why}"):
            hub.write_safetensors(tmp_path / "f.safetensors", {"w": bad}, {})
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_the_tensors_checksum_reads_every_dtype():
    """sha256_tensors copied each tensor through numpy, which has no bfloat16: a bfloat16 tensor raised TypeError."""
    x = torch.randn(5, 3)
    assert hub.sha256_tensors(x.bfloat16()) == hashlib.sha256(x.bfloat16().view(torch.int16).numpy().tobytes()).hexdigest()
    assert hub.sha256_tensors(x, x.t()) == hashlib.sha256(x.numpy().tobytes() + x.t().contiguous().numpy().tobytes()).hexdigest()
    assert hub.checksum_metadata({"b": x.bfloat16(), "a": x}) != hub.checksum_metadata({"b": x.half(), "a": x})


def test_float16_storage_loads_as_float32(tmp_path):
    codec = _codec()
    path = tmp_path / "half.safetensors"
    hub.save_checkpoint(codec, path, dtype=torch.float16)
    loaded = hub.load_checkpoint(path)
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(v, codec.state_dict()[k].half().float())


def test_weights_that_do_not_fit_float16_are_refused_not_stored_as_inf(tmp_path):
    codec = _codec()
    with torch.no_grad():
        next(iter(codec.parameters())).view(-1)[0] = 1e5  # above float16's largest number, 65504
    name = next(iter(codec.state_dict()))
    with pytest.raises(ValueError, match=rf"weights \['{name}'\] do not fit in torch.float16"):
        hub.save_checkpoint(codec, tmp_path / "half.safetensors", dtype=torch.float16)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="the directory .*no-such-dir does not exist") as e:
        hub.save_checkpoint(codec, tmp_path / "no-such-dir" / "x.safetensors")
    assert isinstance(e.value, ValueError)  # a MissingFileError, a ValueError as it was
    (tmp_path / "a-file").write_text("")
    for inside in ("", "d/"):  # a file further up: audit 305 found "the directory .../a-file/d does not exist"
        with pytest.raises(ValueError, match=r"a-file is a file, not a directory$") as e:  # was "does not exist"
            hub.save_checkpoint(codec, tmp_path / "a-file" / f"{inside}x.safetensors")
        assert not isinstance(e.value, FileNotFoundError)


def test_beyond_range_finds_one_finite_value_the_dtype_stores_as_inf_and_not_nan_or_inf():
    # mutation round 22 (audit 201): one entry among ordinary ones is enough; NaN and inf are no range problem (a
    # diverged codec was not to be told "do not fit in torch.float16 ...; save as float32")
    assert hub.beyond_range(torch.tensor([0.5, 1e5, -2.0]), torch.float16)
    assert hub.beyond_range(torch.tensor([0.5, -1e300], dtype=torch.float64), torch.float32)
    assert not hub.beyond_range(torch.tensor([0.5, 65504.0]), torch.float16)
    assert not hub.beyond_range(torch.tensor([float("inf"), float("nan"), 0.5]), torch.float16)
    codec = _codec()
    with torch.no_grad():
        next(iter(codec.parameters())).view(-1)[0] = float("nan")
    assert hub.weights_beyond(codec, torch.float16) == []


def test_integer_buffers_are_not_weights_beyond_a_float_dtype():
    # mutation round 22 (audit 201): saved as they are, never cast: a BatchNorm's num_batches_tracked past float16's
    # 65504 (a codec of one's own trained that long) does not stop a float16 save
    codec = _codec()
    codec.norm = torch.nn.BatchNorm1d(4)
    codec.norm.num_batches_tracked.fill_(100_000)
    assert hub.weights_beyond(codec, torch.float16) == []
    with torch.no_grad():
        codec.norm.weight[1] = 1e5
    assert hub.weights_beyond(codec, torch.float16) == ["norm.weight"]


def _write_raw(path: Path, tensors: dict, metadata: dict | None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def test_unexpected_and_missing_keys_are_named(tmp_path):
    sd = dict(_codec().state_dict())
    meta = {"config": json.dumps(CONFIG), "format": hub.FORMAT}
    first = next(iter(sd))
    extra = _write_raw(tmp_path / "extra.safetensors", {**sd, "bogus.weight": torch.zeros(2)}, meta)
    with pytest.raises(ValueError, match=r"codec built from its config: 1 key unexpected \(bogus.weight\) \(a "
                                         r"corrupted or hand-edited file\)"):
        hub.load_checkpoint(extra)
    missing = _write_raw(tmp_path / "missing.safetensors", {k: v for k, v in sd.items() if k != first}, meta)
    with pytest.raises(ValueError, match=rf": 1 key missing \({first}\) \("):
        hub.load_checkpoint(missing)
    names = list(sd)[:3]
    reshaped = _write_raw(tmp_path / "reshaped.safetensors", {**sd, **{k: sd[k][..., :1] for k in names}}, meta)
    shapes = [(tuple(sd[k][..., :1].shape), tuple(sd[k].shape)) for k in names[:2]]
    with pytest.raises(ValueError, match=re.escape(
            f": 3 keys of another shape ({names[0]}: {shapes[0][0]} given, {shapes[0][1]} expected; "
            f"{names[1]}: {shapes[1][0]} given, {shapes[1][1]} expected; 1 more) (")):
        hub.load_checkpoint(reshaped)


def test_non_finite_weights_are_refused(tmp_path):
    sd = dict(_codec().state_dict())
    first = next(iter(sd))
    sd[first] = sd[first].clone().fill_(float("nan"))
    path = _write_raw(tmp_path / "nan.safetensors", sd, {"config": json.dumps(CONFIG), "format": hub.FORMAT})
    with pytest.raises(ValueError, match=rf"tensor {first} holds NaN or inf weights"):
        hub.load_checkpoint(path)


def test_float64_weights_beyond_float32_are_refused_not_loaded_as_inf(tmp_path):
    """Finite float64 weights of 1e300 passed the finiteness check, then became inf in the codec's float32."""
    sd = {k: v.double() for k, v in _codec().state_dict().items()}
    first = next(iter(sd))
    sd[first] = sd[first].clone().fill_(1e300)
    path = _write_raw(tmp_path / "f64.safetensors", sd, {"config": json.dumps(CONFIG), "format": hub.FORMAT})
    with pytest.raises(ValueError, match=rf"tensor {first} holds NaN or inf weights \(stored as torch.float64, "
                                         rf"beyond torch.float32's range\)"):
        hub.load_checkpoint(path)
    sd[first].fill_(0.5)  # float64 weights within float32's range still load, cast to float32
    path = _write_raw(tmp_path / "f64.safetensors", sd, {"config": json.dumps(CONFIG), "format": hub.FORMAT})
    assert hub.load_checkpoint(path).state_dict()[first].dtype == torch.float32


def test_nan_float64_weights_are_not_said_to_be_beyond_float32s_range(tmp_path):
    """The range note is for finite weights that overflow in the cast; NaN stored as float64 is corrupted as stored."""
    sd = {k: v.double() for k, v in _codec().state_dict().items()}
    first = next(iter(sd))
    sd[first] = sd[first].clone().fill_(float("nan"))
    path = _write_raw(tmp_path / "nan64.safetensors", sd, {"config": json.dumps(CONFIG), "format": hub.FORMAT})
    with pytest.raises(ValueError, match=rf"tensor {first} holds NaN or inf weights \(a corrupted or diverged "):
        hub.load_checkpoint(path)


@pytest.mark.parametrize("file", ["D:evil.safetensors", "c:x.safetensors", "a:b.safetensors"])
def test_a_registry_file_name_with_a_colon_is_refused(env, file):
    """On Windows "D:evil.safetensors" joined to the cache dir is a file in drive D:'s current folder (pathlib:
    PureWindowsPath("C:/cache") / "D:evil.safetensors" is "D:evil.safetensors"), outside the cache dir; "a:b...", a data
    stream of the file "a"."""
    with pytest.raises(ValueError, match=r"is not a plain file name \(no path separators, ':', '\.\.' or"):
        _register("evil", file)
    with pytest.raises(ValueError, match=r"cannot be a file name \(no path separators, ':'"):
        hub.check_file_stem(file.removesuffix(".safetensors"))


def test_a_registry_file_name_with_a_nul_is_refused_as_not_plain(env):
    """A NUL byte is no file name (open() refuses it): named at registration, not when the file is first looked for."""
    with pytest.raises(ValueError, match=r"'a\\x00b.safetensors' is not a plain file name"):
        _register("nul", "a\0b.safetensors")


@pytest.mark.parametrize("file", ["a\nb.safetensors", "a\rb.safetensors", "\x1b[2Jx.safetensors", "a\tb.safetensors",
                                  "a\u200bb.safetensors"])
def test_a_registry_file_name_with_a_control_character_is_refused(env, file, tmp_path):
    """Audit 429: a newline, a carriage return or a terminal escape in an entry's file name was accepted (names were
    refused them, files not), in hub.register and in a run JSON's or the user registry's entries, and printed as is
    by `latent-transforms list -v` and in messages (an escape sequence clears or rewrites the terminal)."""
    with pytest.raises(ValueError, match=r"is not a plain file name \(no path separators, ':', '\.\.' or leading '\.'; "
                                         r"printable characters only\)$"):
        _register("ctl", file)
    registry = tmp_path / "cache" / "registry.json"
    registry.parent.mkdir()
    registry.write_text(json.dumps({"checkpoints": {"ctl": {"file": file, "sha256": SHA_GOOD, "config": CONFIG}}}))
    with pytest.raises(ValueError, match=r"entry 'ctl': checkpoint file name .* is not a plain file name"):
        hub.load("ctl")


def test_wrong_shape_is_named(tmp_path):
    sd = dict(_codec().state_dict())
    first = next(iter(sd))
    sd[first] = torch.zeros(*sd[first].shape[:-1], sd[first].shape[-1] + 1)
    path = _write_raw(tmp_path / "shape.safetensors", sd, {"config": json.dumps(CONFIG), "format": hub.FORMAT})
    with pytest.raises(ValueError, match=rf"1 key of another shape \({first}: \(.*\) given, \(.*\) expected\)"):
        hub.load_checkpoint(path)


def test_missing_format_metadata_is_refused(tmp_path):
    path = _write_raw(tmp_path / "plain.safetensors", dict(_codec().state_dict()), None)
    with pytest.raises(ValueError, match="not a latent-transforms checkpoint"):
        hub.load_checkpoint(path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_loading_a_checkpoint_leaves_the_global_rng_alone(env, tmp_path):
    # building the codec before its weights are loaded drew its random init from torch's global generator: the
    # first load of a name (and every load of a path) shifted everything a seeded program drew after it
    path = tmp_path / "c.safetensors"
    hub.save_checkpoint(_codec(), path)
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    hub.load(path)
    assert torch.equal(torch.rand(4), expected)


def test_pickle_checkpoint_is_refused_and_not_executed(env, tmp_path):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Evil(probe))).close()
    assert probe.exists()  # the payload does run when unpickled

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Evil(marker)}, evil)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    for path in (evil, raw):
        with pytest.raises(ValueError, match="not a safetensors file"):
            hub.load(str(path))
        with pytest.raises(ValueError, match="not a safetensors file"):
            hub.load_checkpoint(path)
    # a pickle where a registered checkpoint is expected (its sha256 registered too) is refused as well
    env.mkdir()
    (env / "evil.safetensors").write_bytes(raw.read_bytes())
    _register("evil", "evil.safetensors", sha256=hub.sha256_file(raw))
    with pytest.raises(ValueError, match="not a safetensors file"):
        hub.load("evil")
    assert not marker.exists()


# -- registry ---------------------------------------------------------------------------------------
def test_shipped_registry_is_valid():
    for row in hub.list_checkpoints():
        assert row["file"].endswith(".safetensors")
        if row["shipped"]:
            assert hub.sha256_file(hub._SHIPPED_DIR / row["file"]) == row["sha256"]


def test_shipped_sidecars_match_the_registry_and_load_by_name():
    """Each shipped NAME.json (the training record beside NAME.safetensors) describes the registered file, says to
    load it by name, and names no absolute path (it said /tmp/study/... and /work/shared/...)."""
    registry = json.loads((hub._SHIPPED_DIR / "registry.json").read_text())["checkpoints"]
    sidecars = sorted(p for p in hub._SHIPPED_DIR.glob("*.json") if p.name != "registry.json")
    assert [p.stem for p in sidecars] == sorted(registry)
    for path in sidecars:
        text, entry = path.read_text(), registry[path.stem]
        record = json.loads(text)
        assert (hub._SHIPPED_DIR / entry["file"]).stat().st_size == entry["size"]
        for described in (record, record["registry_entry"]):
            assert {k: described[k] for k in ("file", "sha256", "size", "config")} == \
                {k: entry[k] for k in ("file", "sha256", "size", "config")}, path.name
        assert record["name"] == path.stem and record["load"] == f'latent_transforms.hub.load("{path.stem}")'
        assert not re.search(r'(?:^|[\s:("])/\w', text), f"{path.name} names an absolute path"


def test_shipped_entries_name_the_training_device_and_the_classifier_images():
    """Device-minutes say on what device (they were CPU-minutes), classifier figures on how many test images (fewer
    than the test metrics')."""
    for name, entry in hub._shipped_registry().items():
        quality = entry["quality"]
        assert isinstance(quality["train_device"], str) and quality["train_device_minutes"] > 0, name
        if any(k.startswith("classifier_") for k in quality):
            assert isinstance(quality["classifier_eval_images"], int), name


@pytest.mark.parametrize("quality, message", [
    ({"train_device": ""}, "train_device must name the device"),
    ({"train_device": 45.0}, "train_device must name the device"),
    ({"classifier_eval_images": 0}, "classifier_eval_images must be a positive int"),
    ({"classifier_eval_images": 2000.0}, "classifier_eval_images must be a positive int"),
    ({"classifier_eval_images": True}, "classifier_eval_images must be a positive int"),
])
def test_register_checks_the_training_device_and_the_classifier_images(env, quality, message):
    with pytest.raises(ValueError, match=f"'q' quality {message}"):
        hub.register("q", file="q.safetensors", sha256=SHA_GOOD, config=CONFIG, quality=quality)
    hub.register("q", file="q.safetensors", sha256=SHA_GOOD, config=CONFIG, quality={
        "train_device_minutes": 4.0, "train_device": "cpu (x86_64, 1 thread)", "classifier_eval_images": 540})
    # one image is a positive int (mutation round, audit 373: a bound of 2 went unnoticed)
    hub.register("one", file="one.safetensors", sha256=SHA_GOOD, config=CONFIG, quality={"classifier_eval_images": 1})


@pytest.mark.parametrize("quality", [[], "", 0, None])
def test_a_registry_entry_whose_quality_is_not_a_dict_is_refused(quality):
    entry = {"file": "q.safetensors", "sha256": SHA_GOOD, "config": CONFIG, "quality": quality}
    with pytest.raises(ValueError, match="'q' quality must be a dict of figures"):
        hub._check_entry("q", entry, "registry.json")


def test_unknown_name_lists_known_ones(env):
    _register("digits-a", "good.safetensors")
    with pytest.raises(KeyError, match="known checkpoints: digits-a") as e:
        hub.load("no-such-codec")
    assert "no-such-codec" in str(e.value)
    assert isinstance(e.value, hub.HubError)  # `except hub.HubError` catches every checkpoint that cannot be had
    with pytest.raises(KeyError, match="unknown checkpoint"):  # too long for a path: still a name
        hub.load("x" * 300)


def test_an_unknown_checkpoint_name_is_a_value_error_as_every_unknown_name(env):
    """It was a HubError (a RuntimeError) and a KeyError only, where api.md and the package's other unknown names (a
    codec kind, a data spec) give a ValueError, as torchvision's get_model does: a constructor's codec="typo" was
    missed by `except ValueError`. It stays both of the old types, so that callers catching them keep working."""
    _register("digits-a", "good.safetensors")
    calls = [lambda: hub.load("digits-b"), lambda: hub.fetch("digits-b"), lambda: hub.unregister("digits-b"),
             lambda: hub.fetch("runs/a.safetensors"), lambda: LatentNoise(codec="digits-b")]
    for call in calls:
        with pytest.raises(ValueError) as e:
            call()
        assert type(e.value) is hub.UnknownCheckpointError
    assert issubclass(hub.UnknownCheckpointError, hub.HubError) and issubclass(hub.UnknownCheckpointError, KeyError)


def test_load_expands_home_and_reports_a_missing_path_as_a_file(env, tmp_path, monkeypatch):
    # "~/x.safetensors" was not expanded, and a missing path was "unknown checkpoint '...'", as if it were a name
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    hub.save_checkpoint(_codec(), "~/vae.safetensors")  # written there, not into a folder named "~" (it refused)
    assert hub.load("~/vae.safetensors").config == _codec().config and not (tmp_path / "~").exists()
    for missing, path in [("~/gone.safetensors", tmp_path / "gone.safetensors"), ("runs/gone", "runs/gone"),
                          ("gone.safetensors", "gone.safetensors")]:
        with pytest.raises(FileNotFoundError, match=f"no checkpoint file at {re.escape(str(path))}$"):
            hub.load(missing)
    with pytest.raises(hub.UnknownCheckpointError, match="unknown checkpoint 'gone'"):
        hub.load("gone")
    env.mkdir()
    sha = hub.save_checkpoint(_codec(), env / "team-vae.safetensors")
    _register("team/vae.safetensors", "team-vae.safetensors", sha256=sha)  # a name that looks like a path is a name
    assert hub.load("team/vae.safetensors").config == _codec().config


def test_a_file_in_the_cwd_named_like_a_registered_checkpoint_does_not_replace_it(env, tmp_path, monkeypatch):
    # hub.load("glow-digits") read ./glow-digits, unverified, when the current directory held such a file
    monkeypatch.chdir(tmp_path)
    env.mkdir()
    sha = hub.save_checkpoint(_codec(), env / "vae.safetensors")
    _register("vae", "vae.safetensors", sha256=sha)
    torch.manual_seed(1)
    hub.save_checkpoint(build_codec({**CONFIG, "latent_dim": 8}), tmp_path / "other.safetensors")
    (tmp_path / "other.safetensors").rename(tmp_path / "vae")  # another codec, in a file named "vae"
    assert hub.load("vae").config == _codec().config  # the registered, verified one
    assert hub.load("./vae").config["latent_dim"] == 8  # the file, asked for as a path
    assert hub.load(str(tmp_path / "vae")).config["latent_dim"] == 8


def test_a_file_registered_from_python_loads_from_the_cache_dir_and_elsewhere_is_named_to_copy(env, tmp_path,
                                                                                                  monkeypatch):
    """docs/hub.md's Python registration: saved into the cache dir, it loads by name; saved elsewhere, the load's
    error says to copy it there (it named `latent-transforms register RUN.json` only, which a Python user had not run)."""
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    env.mkdir()
    sha = hub.save_checkpoint(_codec(), env / "mine.safetensors")
    _register("mine", "mine.safetensors", sha256=sha)
    assert hub.load("mine").config == _codec().config
    sha = hub.save_checkpoint(_codec(), tmp_path / "elsewhere.safetensors")
    _register("elsewhere", "elsewhere.safetensors", sha256=sha)
    with pytest.raises(hub.HubError, match=f"registered from Python \\(hub.register\\)\\? it does not copy the "
                                           f"file: copy elsewhere.safetensors into {re.escape(str(env))}"):
        hub.load("elsewhere")
    monkeypatch.delenv("LATENT_TRANSFORMS_OFFLINE")  # the hub URL's server has no such file: its 404, and the hint
    with pytest.raises(hub.HubError, match="elsewhere.safetensors failed: HTTP 404.*; registered from Python "
                                           "\\(hub.register\\)\\? it does not copy the file: copy "
                                           "elsewhere.safetensors into"):
        hub.load("elsewhere")
    _register("gone", "gone.safetensors")  # its 410 too (mutation round 41: the hint was tested after a 404 only)
    with pytest.raises(hub.HubError, match="gone.safetensors failed: HTTP 410.*; registered from Python "
                                           "\\(hub.register\\)\\? it does not copy the file: copy gone.safetensors "
                                           "into"):
        hub.load("gone")


@pytest.mark.parametrize("file", ["error.safetensors", "truncated.safetensors", "bad-hash.safetensors",
                                  "bad-chunk.safetensors", "bad-status.safetensors"])
def test_a_download_the_server_answered_but_that_failed_gets_no_copy_hint(env, file):
    """The server was reached and answered (a 500, a cut, wrong or malformed body; mutation round 41: a garbled status
    line): "registered with hub.register? ... copy FILE into <cache dir>" after the failure was noise (audit 283); the
    error is the failure alone."""
    _register("mine", file)
    with pytest.raises(hub.HubError, match=re.escape(file)) as info:
        hub.fetch("mine")
    assert "register" not in str(info.value)


@pytest.mark.parametrize("where", ["a closed port", "a missing folder", "a connection closed unanswered"])
def test_a_hub_url_that_does_not_answer_keeps_the_copy_hint(env, tmp_path, monkeypatch, server, where):
    """No answer (a machine without network, a host that is down, a file:// folder without the file, a connection
    closed before any status line: http.client's RemoteDisconnected, an HTTPException and an OSError, was taken for the
    server's answer): copying the file into the cache dir is how it gets there. The error says why (mutation round,
    audit 374: every reason could be called a timeout, or "None")."""
    file = "closed.safetensors" if where == "a connection closed unanswered" else "mine.safetensors"
    urls = {"a missing folder": (tmp_path / "nowhere").as_uri(), "a connection closed unanswered": server}
    why = {"a closed port": os.strerror(errno.ECONNREFUSED), "a missing folder": os.strerror(errno.ENOENT),
           "a connection closed unanswered": "Remote end closed connection without response"}[where]
    with socket.socket() as s:  # bound, never listening: a connection to it is refused at once
        s.bind(("127.0.0.1", 0))
        url = urls.get(where, f"http://127.0.0.1:{s.getsockname()[1]}")
        monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", url)
        _register("mine", file)
        with pytest.raises(hub.HubError, match=rf"^cannot download {re.escape(url)}/{file}: [^;]*{why}[^;]*; .*"
                                               rf"registered from Python \(hub.register\)\? it does not copy the "
                                               rf"file: copy {file} into {re.escape(str(env))}$"):
            hub.fetch("mine")


@pytest.mark.parametrize("where", ["cache", "shipped"])
def test_register_refuses_a_config_its_file_at_hand_does_not_hold(env, tmp_path, where):
    """A config saying "glow" for a VAE's file was registered (persisted too), listed as a glow, and refused only by
    hub.load (audit 302); a file that is not the registered one (an older copy) or is only remote is not held
    against it."""
    folder = env if where == "cache" else tmp_path / "shipped"
    folder.mkdir()
    sha = hub.save_checkpoint(_codec(), folder / "mine.safetensors")
    glow = {**CONFIG, "kind": "glow"}
    path = re.escape(str(folder / "mine.safetensors"))
    with pytest.raises(ValueError, match=rf"^register\(\): 'mine'\'s config differs from the one its file {path} "
                                         rf"holds \(key: \(given, file\)\): {{'kind': \('glow', 'vae'\)}}; hub.load "
                                         rf"would refuse it"):
        _register("mine", "mine.safetensors", sha256=sha, config=glow, persist=True)
    assert "mine" not in hub._registry() and not (env / "registry.json").exists()
    _register("mine", "mine.safetensors", sha256=sha, persist=True)  # the file's own config
    _register("older", "mine.safetensors", sha256=SHA_GOOD, config=glow)  # another version than the file at hand
    _register("remote", "good.safetensors", config=glow)  # only at the hub URL: not read
    assert {n: e["config"]["kind"] for n, e in hub._registry().items() if n in ("mine", "older", "remote")} == \
        {"mine": "vae", "older": "glow", "remote": "glow"}
    if where == "shipped":  # a cached copy that is no safetensors file does not hide the shipped file's config
        (env / "mine.safetensors").write_bytes(b"damaged")  # env holds the registry file by now
        with pytest.raises(ValueError, match=rf"file {path} holds"):
            _register("mine", "mine.safetensors", sha256=sha, config=glow, overwrite=True)
    save_file({"w": torch.zeros(2)}, folder / "plain.safetensors")  # no codec config: load_checkpoint says why
    _register("plain", "plain.safetensors", sha256=hub.sha256_file(folder / "plain.safetensors"))


def test_a_codec_config_is_read_only_from_a_checkpoints_metadata():
    """_file_config: None for metadata of another format, a config that is not JSON or not an object; a key of the
    registered config the file lacks is a difference (as hub.load reads it)."""
    assert hub._file_config({"format": hub.FORMAT, "config": '{"kind": "vae"}'}) == {"kind": "vae"}
    for metadata in (None, {}, {"format": "other", "config": "{}"}, {"format": hub.FORMAT, "config": "{no json"},
                     {"format": hub.FORMAT, "config": "[1]"}, {"format": hub.FORMAT}):
        assert hub._file_config(metadata) is None, metadata
    assert hub._config_differences({"kind": "vae", "hidden": 8}, {"kind": "vae", "extra": 1}) == {"hidden": (8, None)}


def test_register_warns_when_its_file_is_nowhere_load_looks(env, tmp_path, monkeypatch, server):
    """register() does not copy the file: said at once, not only at the first hub.load."""
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_URL")
    env.mkdir()
    sha = hub.save_checkpoint(_codec(), tmp_path / "elsewhere.safetensors")
    with pytest.warns(UserWarning, match=rf"^registered 'elsewhere', but its file elsewhere.safetensors is not in "
                                         rf"{re.escape(str(env))} \(nor shipped, and LATENT_TRANSFORMS_HUB_URL is not "
                                         rf"set\): copy it there before hub.load\('elsewhere'\)$"):
        _register("elsewhere", "elsewhere.safetensors", sha256=sha)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _register("cached", "cached.safetensors", sha256=hub.save_checkpoint(_codec(), env / "cached.safetensors"))
        (tmp_path / "shipped").mkdir()
        _register("shipped", "shipped.safetensors",
                  sha256=hub.save_checkpoint(_codec(), tmp_path / "shipped" / "shipped.safetensors"))
        monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", server)  # a hub URL may serve it
        _register("remote", "remote.safetensors", sha256=sha)
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")  # but not offline
    with pytest.warns(UserWarning, match=r"^registered 'offline', .*\(nor shipped, and LATENT_TRANSFORMS_OFFLINE is "
                                         r"set\): copy it there"):
        _register("offline", "offline.safetensors", sha256=sha)


def test_register_warning_without_a_hub_url_names_the_url_even_offline(env, tmp_path, monkeypatch):
    """No hub URL: setting one is the fix, whether or not LATENT_TRANSFORMS_OFFLINE is also set; the warning points
    at the caller's line (mutation round, audit 374: the file alone held with stacklevel=3, through _register)."""
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_URL")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    sha = hub.save_checkpoint(_codec(), tmp_path / "elsewhere.safetensors")
    with pytest.warns(UserWarning, match=r"^registered 'elsewhere', .*\(nor shipped, and LATENT_TRANSFORMS_HUB_URL is "
                                         r"not set\): copy it there") as caught:
        line = sys._getframe().f_lineno + 1
        hub.register("elsewhere", file="elsewhere.safetensors", sha256=sha, config=CONFIG)
    assert [(Path(w.filename), w.lineno) for w in caught] == [(Path(__file__), line)]


@needs_source_tree
def test_hub_md_python_registration_runs_on_a_machine_without_a_cache_dir(env, monkeypatch):
    """docs/hub.md's snippet, as a reader runs it: the cache dir does not exist before the first download."""
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    assert not env.exists()
    text = (ROOT / "docs" / "hub.md").read_text()
    snippet = next(s for s in re.findall(r"```python\n(.*?)```", text, re.S) if "hub.register(" in s)
    codec = _codec()
    exec(snippet, {"codec": codec})
    assert hub.load("my-vae").config == codec.config


def test_a_registered_file_saved_again_is_named_to_register_again_not_to_copy(env, monkeypatch):
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    env.mkdir()
    sha = hub.save_checkpoint(_codec(), env / "mine.safetensors")
    _register("mine", "mine.safetensors", sha256=sha)
    hub.save_checkpoint(_codec(seed=1), env / "mine.safetensors")  # trained on, saved again: another sha256
    with pytest.raises(hub.HubError, match=r"does not match the registry .*register it again with the new file's "
                                           r"sha256") as info:
        hub.load("mine")
    assert "copy mine.safetensors into" not in str(info.value)  # it is there


@pytest.mark.parametrize("name", ["", " vae", "vae ", "va\ne", "\ud800", "x" * 201, 5, None])
def test_register_refuses_names_that_could_not_be_typed_back(env, name):
    with pytest.raises(ValueError, match="checkpoint names must be non-empty str of printable characters, without "
                                         "leading or trailing space, at most 200 characters") as e:
        _register(name, "vae.safetensors")
    assert isinstance(e.value, TypeError) == (not isinstance(name, str))  # a WrongTypeError for a name not a str


def test_register_takes_a_name_of_as_many_characters_as_it_allows(env):
    # mutation round, audit 373: the refusal says "at most 200 characters"; nothing showed that 200 are taken
    _register("x" * 200, "vae.safetensors")
    assert hub._entry("x" * 200)["file"] == "vae.safetensors"


def test_a_file_whose_config_differs_from_the_registry_is_refused(env, tmp_path):
    sha = hub.save_checkpoint(_codec(), tmp_path / "vae.safetensors")
    _Handler.files["vae.safetensors"] = (tmp_path / "vae.safetensors").read_bytes()
    try:
        hub.register("mislabelled", file="vae.safetensors", sha256=sha, config={**CONFIG, "latent_dim": 8},
                     trained_on="test", quality={})
        with pytest.raises(hub.HubError, match="config differs from the registry's .*'latent_dim': \\(8, 4\\)"):
            hub.load("mislabelled")
    finally:
        del _Handler.files["vae.safetensors"]


@pytest.mark.parametrize("file", ["../escape.safetensors", "sub/x.safetensors", "..\\x.safetensors", "x.pt", ".hidden.safetensors"])
def test_file_names_that_escape_the_cache_are_refused(env, file):
    with pytest.raises(ValueError, match="file name"):
        _register("bad", file)


@pytest.mark.parametrize("file", ["", 123, None])
def test_a_registry_file_name_that_is_not_a_non_empty_str_is_named(env, file):
    # mutation round, audit 368: without the check, 123 was "argument of type 'int' is not iterable", "" the
    # misleading "must end in .safetensors"
    with pytest.raises(ValueError, match=rf"^register\(\): entry 'bad': checkpoint file name must be a non-empty str, "
                                         rf"got {re.escape(repr(file))}$"):
        _register("bad", file)


def test_register_refuses_duplicates_and_bad_hashes(env):
    _register("a", "good.safetensors")
    with pytest.raises(ValueError, match="already registered"):
        _register("a", "good.safetensors")
    _register("a", "good.safetensors", overwrite=True)
    with pytest.raises(ValueError, match="sha256"):
        _register("b", "good.safetensors", sha256="abc")


def test_register_keeps_the_json_form_so_a_tuple_image_shape_loads(env):
    # the runtime entry kept the caller's tuple, the file's config has a list: "the file's config differs" in the
    # registering process only (a new process read the JSON of the user registry and loaded it)
    env.mkdir()
    sha = hub.save_checkpoint(_codec(), env / "vae.safetensors")
    hub.register("vae", file="vae.safetensors", sha256=sha, config={**CONFIG, "image_shape": (1, 8, 8)}, persist=True)
    assert hub.load("vae").config == _codec().config
    assert hub._entry("vae") == json.loads((env / "registry.json").read_text())["checkpoints"]["vae"]
    with pytest.raises(ValueError, match="entry 'bad' is not JSON data"):  # refused with or without persist
        _register("bad", "bad.safetensors", notes=torch.tensor(1.0))


def _python(code: str, cache: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter with ``cache`` as its LATENT_TRANSFORMS_HOME (and no downloads)."""
    env = {**os.environ, "LATENT_TRANSFORMS_HOME": str(cache), "LATENT_TRANSFORMS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


def test_register_persist_lasts_across_processes(env):
    env.mkdir()
    sha = hub.save_checkpoint(_codec(3), env / "zz-mine.safetensors")
    # registered here, read by a fresh process (a process to register it imported torch again: 2-2.5 s)
    hub.register("zz-mine", file="zz-mine.safetensors", sha256=sha, config=CONFIG, trained_on="test", persist=True)
    assert "zz-mine" in json.loads((env / "registry.json").read_text())["checkpoints"]
    proc = _python("import torch\nfrom latent_transforms import hub\n"
                   "assert 'zz-mine' in [r['name'] for r in hub.list_checkpoints()]\n"
                   "a, b = hub.load('zz-mine'), hub.load(hub.cache_dir() / 'zz-mine.safetensors')\n"
                   "assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))\n"
                   "print('ok')", env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]


def test_register_persist_keeps_other_entries_and_overwrite_semantics(env, monkeypatch):
    _register("a", "good.safetensors", persist=True)  # creates the cache dir
    _register("b", "b.safetensors", sha256="b" * 64, persist=True)
    _register("runtime-only", "good.safetensors")
    path = env / "registry.json"
    assert list(json.loads(path.read_text())["checkpoints"]) == ["a", "b"]
    monkeypatch.setattr(hub, "_registered", {})  # as in a new process: the file alone
    assert {"a", "b"} <= set(hub._registry()) and "runtime-only" not in hub._registry()
    with pytest.raises(ValueError, match="'a' is already registered.*overwrite=True"):
        _register("a", "good.safetensors", sha256="c" * 64, persist=True)
    _register("a", "good.safetensors", sha256="c" * 64, persist=True, overwrite=True)
    entries = json.loads(path.read_text())["checkpoints"]
    assert entries["a"]["sha256"] == "c" * 64 and entries["b"]["sha256"] == "b" * 64
    assert _leftovers(env) == []


def test_a_registry_edit_that_changes_nothing_leaves_the_file_as_it_was(env):
    """unregister(persist=True) of a name the user registry file does not hold (registered in this process only, or
    nowhere) does not rewrite the file: a hand-written one keeps its bytes."""
    env.mkdir()
    path = env / "registry.json"
    entry = {"file": "good.safetensors", "sha256": SHA_GOOD, "config": CONFIG}
    path.write_text(json.dumps({"checkpoints": {"a": entry}}, separators=(",", ":")))  # as written by hand
    before = path.read_bytes()
    _register("runtime-only", "good.safetensors")
    assert hub.unregister("runtime-only", persist=True)["file"] == "good.safetensors"
    with pytest.raises(hub.UnknownCheckpointError):
        hub.unregister("nowhere", persist=True)
    assert path.read_bytes() == before


def test_a_persisted_registration_waits_for_the_cache_dir_lock(env):
    """register(persist=True) reads, edits and replaces the user registry under the cache dir's lock: it waits for
    another writer (here a thread of this process holding the lock) instead of dropping that writer's entry; also
    after this thread has taken and left the lock once (its mark of holding it is cleared on leaving)."""
    env.mkdir()
    _register("earlier", "good.safetensors", persist=True)  # this thread takes the lock and leaves it
    order, inside, release = [], threading.Event(), threading.Event()

    def other():
        with hub._cache_dir_lock(env):
            order.append("other in")
            inside.set()
            release.wait(timeout=0.5)  # holds the lock a while; the registration must wait for it
            order.append("other out")

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert inside.wait(timeout=30)
        _register("a", "good.safetensors", persist=True)
        order.append("registered")
    finally:
        release.set()
        thread.join()
    assert order == ["other in", "other out", "registered"]
    assert list(json.loads((env / "registry.json").read_text())["checkpoints"]) == ["earlier", "a"]


def test_a_shipped_name_whose_download_fails_gets_the_download_error_as_raised(env):
    """No note on a copy and no hint for a name of one's own: the download's error itself, its traceback ending where
    the download failed (coverage audit 188: this re-raise never ran)."""
    hub._SHIPPED_DIR.mkdir()
    entry = {"file": "absent.safetensors", "sha256": SHA_GOOD, "size": len(GOOD), "config": CONFIG}
    (hub._SHIPPED_DIR / "registry.json").write_text(json.dumps({"checkpoints": {"shipped": entry}}))
    with pytest.raises(hub.HubError, match=r"^downloading http://.*/absent.safetensors failed: HTTP 404 Not Found; the "
                                           r"server has no absent.safetensors") as e:
        hub.fetch("shipped")
    assert "register" not in str(e.value) and e.traceback[-1].name == "_download"


def test_user_registry_may_not_redefine_a_shipped_name(env, tmp_path):
    hub._SHIPPED_DIR.mkdir()
    entry = {"file": "shipped.safetensors", "sha256": SHA_GOOD, "size": len(GOOD), "config": CONFIG}
    (hub._SHIPPED_DIR / "registry.json").write_text(json.dumps({"checkpoints": {"shipped": entry}}))
    with pytest.raises(ValueError, match=f"{env / 'registry.json'}.*'shipped'.*shipped checkpoint"):
        _register("shipped", "mine.safetensors", persist=True, overwrite=True)
    assert not (env / "registry.json").exists()
    env.mkdir()
    (env / "registry.json").write_text(json.dumps({"checkpoints": {"shipped": {**entry, "file": "mine.safetensors"},
                                                                   "mine": {**entry, "file": "mine.safetensors"}}}))
    with pytest.warns(UserWarning, match=f"{env / 'registry.json'}.*'shipped'.*shipped checkpoint.*left out"):
        assert [r["name"] for r in hub.list_checkpoints()] == ["shipped"]
    with pytest.raises(ValueError, match=f"{env / 'registry.json'}.*'shipped'"):
        hub.load("mine")
    assert hub._entry("shipped")["file"] == "shipped.safetensors"  # the shipped entry, never the file's


@pytest.mark.parametrize("text, message", [
    ("{not json", "is not valid JSON"),
    ('{"checkpoints": []}', "must hold an object"),
    ('{"checkpoints": {"x": {"file": "x.safetensors", "sha256": "abc", "config": {"kind": "vae"}}}}', "sha256"),
    ('{"checkpoints": {"x": {"file": "../x.safetensors", "sha256": "%s", "config": {"kind": "vae"}}}}' % SHA_GOOD,
     "file name"),
    ('{"checkpoints": {"x": {"file": "x.safetensors", "sha256": "%s", "config": {"kind": "vae"}, "quality": [1]}}}'
     % SHA_GOOD, "quality must be a dict"),
    ('{"checkpoints": {"x": ["x.safetensors"]}}', "entry 'x' must be a dict, got list"),
    ('{"checkpoints": {"x": {"file": "x.safetensors", "config": {"kind": "vae"}}}}', "entry 'x' has no 'sha256'"),
    ('{"checkpoints": {"x": {"file": "x.safetensors", "sha256": "%s", "config": {"hidden": 8}}}}' % SHA_GOOD,
     "entry 'x' config must be a dict with a 'kind'"),
    ('{"checkpoints": {"x": {"file": 5, "sha256": "%s", "config": {"kind": "vae"}}}}' % SHA_GOOD,
     "entry 'x': checkpoint file name must be a non-empty str, got 5"),
])
def test_a_corrupt_user_registry_is_named_in_the_error(env, text, message):
    env.mkdir()
    path = env / "registry.json"
    path.write_text(text)
    for call in (lambda: hub.load("x"), lambda: _register("y", "y.safetensors", persist=True),
                 lambda: hub.unregister("x", persist=True)):
        with pytest.raises(ValueError, match=message) as e:
            call()
        assert str(path) in str(e.value) and "fix or delete it" in str(e.value)  # the file alone did not say what to do
    with pytest.warns(UserWarning, match=message) as w:  # listing still shows the other registries
        assert hub.list_checkpoints() == []
    assert str(path) in str(w[0].message)
    assert path.read_text() == text  # never rewritten over


def test_a_broken_user_registry_does_not_block_shipped_or_runtime_names(env, tmp_path):
    # it did: any lookup by name read the user registry first, so one bad edit there broke hub.load("glow-cifar10")
    hub._SHIPPED_DIR.mkdir()
    (hub._SHIPPED_DIR / "shipped.safetensors").write_bytes(GOOD)
    (hub._SHIPPED_DIR / "registry.json").write_text(json.dumps({"checkpoints": {
        "shipped": {"file": "shipped.safetensors", "sha256": SHA_GOOD, "size": len(GOOD), "config": CONFIG}}}))
    _register("runtime", "good.safetensors")
    env.mkdir()
    (env / "registry.json").write_text("{not json")
    assert hub.fetch("shipped") == hub._SHIPPED_DIR / "shipped.safetensors"
    assert hub.fetch("runtime") == env / "good.safetensors"
    with pytest.raises(ValueError, match="is not valid JSON"):
        hub.fetch("mine")  # a name only the user registry could hold: the broken file is named
    hub.save_checkpoint(_codec(), tmp_path / "mine.safetensors")  # nor a file by its path (mutation round, audit 383)
    with pytest.warns(UserWarning, match="is not valid JSON"):
        assert torch.equal(_outputs(hub.load(str(tmp_path / "mine.safetensors"))), _outputs(_codec()))
    # registering a new name in this process works too (it raised the file's error), with a warning naming it
    with pytest.warns(UserWarning, match="is not valid JSON"):
        _register("new", "good.safetensors")
    assert hub.fetch("new") == env / "good.safetensors"
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="'runtime' is already registered"):
        _register("runtime", "good.safetensors")
    with pytest.warns(UserWarning), pytest.raises(hub.UnknownCheckpointError, match="'gone' is not in this process"):
        hub.unregister("gone")
    with pytest.raises(ValueError, match="is not valid JSON"):  # persisting still refuses to touch the file
        _register("kept", "good.safetensors", persist=True)
    assert (env / "registry.json").read_text() == "{not json"


def test_unregister_removes_a_name_from_the_process_and_the_user_registry(env, monkeypatch):
    _register("a", "good.safetensors", persist=True)
    _register("b", "b.safetensors", sha256="b" * 64, persist=True)
    _register("runtime-only", "good.safetensors")
    assert hub.unregister("runtime-only")["file"] == "good.safetensors"
    assert "runtime-only" not in hub._registry()
    with pytest.raises(hub.UnknownCheckpointError, match="'runtime-only' is not in this process's registry"):
        hub.unregister("runtime-only")
    monkeypatch.setattr(hub, "_registered", {})  # a new process: "a" only in the file
    with pytest.raises(hub.UnknownCheckpointError, match="'a'.*in the user registry file: pass persist=True"):
        hub.unregister("a")
    assert hub.unregister("a", persist=True)["sha256"] == SHA_GOOD
    assert list(json.loads((env / "registry.json").read_text())["checkpoints"]) == ["b"]
    assert "a" not in hub._registry() and "b" in hub._registry()
    _register("0-process", "good.safetensors")  # registered after "b": listed in name order, every one
    mine = rf"'a' is not a name you registered \(the user registry file {re.escape(str(env))}.* does not hold it\); "
    with pytest.raises(hub.UnknownCheckpointError, match=mine + "the names you registered: 0-process, b$"):  # was "not in this
        # process's registry nor the user registry file": meaningless from the shell (latent-transforms unregister)
        hub.unregister("a", persist=True)
    with pytest.raises(hub.UnknownCheckpointError, match=r"'B' is not a name you registered .*; did you mean 'b'\?$"):  # no hint before
        hub.unregister("B", persist=True)
    assert _leftovers(env) == []


def test_unregister_refuses_shipped_names_and_drops_the_loaded_codec(env):
    hub._SHIPPED_DIR.mkdir()
    (hub._SHIPPED_DIR / "registry.json").write_text(json.dumps({"checkpoints": {
        "shipped": {"file": "shipped.safetensors", "sha256": SHA_GOOD, "config": CONFIG}}}))
    with pytest.raises(ValueError, match="'shipped' is a shipped checkpoint"):
        hub.unregister("shipped", persist=True)
    with pytest.raises(hub.UnknownCheckpointError, match="'shippd' is not a name you registered .*; you have "
                                                         "registered none"):  # no shipped name offered
        hub.unregister("shippd", persist=True)
    env.mkdir()
    sha = hub.save_checkpoint(_codec(3), env / "mine.safetensors")
    _register("mine", "mine.safetensors", sha256=sha)
    hub.load("mine")
    hub.unregister("mine")
    assert not any(key[0] == "mine" for key in hub._loaded)
    with pytest.raises(hub.UnknownCheckpointError, match="unknown checkpoint 'mine'"):
        hub.load("mine")


def test_list_checkpoints_reports_cached_and_shipped(env, tmp_path):
    _register("remote", "good.safetensors", size=len(GOOD))
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    (shipped_dir / "shipped.safetensors").write_bytes(GOOD)
    (shipped_dir / "registry.json").write_text(json.dumps({"checkpoints": {
        "shipped": {"file": "shipped.safetensors", "sha256": SHA_GOOD, "size": len(GOOD), "config": CONFIG}}}))
    rows = {r["name"]: r for r in hub.list_checkpoints()}
    assert (rows["remote"]["cached"], rows["remote"]["shipped"]) == (False, False)
    assert (rows["shipped"]["cached"], rows["shipped"]["shipped"]) == (False, True)
    hub.fetch("remote")
    assert hub.list_checkpoints()[0]["cached"] is True
    assert hub.fetch("shipped") == shipped_dir / "shipped.safetensors"  # no download needed
    assert "shipped.safetensors" not in _Handler.counts


# -- download cache ---------------------------------------------------------------------------------
def test_fetch_downloads_verifies_then_uses_the_cache(env):
    _register("good", "good.safetensors")
    path = hub.fetch("good")
    assert path == env / "good.safetensors" and path.read_bytes() == GOOD
    assert hub.fetch("good") == path
    assert _Handler.counts["good.safetensors"] == 1
    assert _leftovers(env) == []


def test_wrong_hash_is_refused_and_never_replaces_a_good_copy(env):
    _register("bad", "bad-hash.safetensors")
    with pytest.raises(hub.HubError, match=rf"bad-hash.safetensors.*expected {SHA_GOOD}, got {hashlib.sha256(BAD).hexdigest()}"):
        hub.fetch("bad")
    assert not (env / "bad-hash.safetensors").exists() and _leftovers(env) == []
    # a good cached copy is used as is, the (bad) remote is not consulted
    (env / "bad-hash.safetensors").write_bytes(GOOD)
    assert hub.fetch("bad").read_bytes() == GOOD
    assert _Handler.counts["bad-hash.safetensors"] == 1


def test_truncated_download_is_refused(env):
    _register("trunc", "truncated.safetensors")
    with pytest.raises(hub.HubError, match=rf"truncated.safetensors.*truncated or too long: Content-Length is {len(GOOD)} bytes, got 1000"):
        hub.fetch("trunc")
    assert list(env.iterdir()) == []


@pytest.mark.parametrize("file, received", [("chunked-cut.safetensors", 500),
                                            ("chunked-cut-between.safetensors", 1000),
                                            ("chunked-cut-in-crlf.safetensors", 1000)])
def test_a_chunked_download_cut_inside_or_between_chunks_is_refused_as_truncated(env, file, received):
    _register("cut", file)
    with pytest.raises(hub.HubError, match=rf"^download of {file} from .* is truncated: the connection "
                                           rf"closed after {received} bytes$"):
        hub.fetch("cut")
    assert list(env.iterdir()) == []


def test_a_garbled_chunk_size_line_is_a_malformed_response_not_a_closed_connection(env, server):
    """http.client reports a chunk-size line that is not hex as an IncompleteRead, as if the connection had closed."""
    _register("garbled", "bad-chunk.safetensors")
    with pytest.raises(hub.HubError, match=rf"^download of bad-chunk.safetensors from {server}/bad-chunk.safetensors "
                                           rf"failed after 1000 bytes: the server sent a malformed response \(a chunk "
                                           rf"size in its chunked transfer encoding is not a hexadecimal number\)$"):
        hub.fetch("garbled")
    assert list(env.iterdir()) == []


def test_short_download_without_content_length_is_named_by_the_registry_size(env):
    _register("short", "no-length.safetensors", size=len(GOOD))
    with pytest.raises(hub.HubError, match=rf"truncated or too long: the registry's size is {len(GOOD)} bytes, got 1000"):
        hub.fetch("short")
    assert list(env.iterdir()) == []


@pytest.mark.parametrize("file, message", [
    ("endless.safetensors", rf"is too long: the registry's size is {len(GOOD)} bytes, got at least \d+"),
    ("long.safetensors",
     rf"has the wrong length: Content-Length is {2 * len(GOOD)} bytes, the registry's size is {len(GOOD)}"),
])
def test_a_body_longer_than_the_registered_size_is_refused_before_it_ends(env, release, file, message):
    # the size was compared only once the body had ended: an endless one filled the cache dir's disk. These servers
    # stall after part of the body (past the size, or short of a Content-Length larger than it): a client that
    # waits for the end times out instead
    _register("long", file, size=len(GOOD))
    with pytest.raises(hub.HubError, match=f"{file} .* {message}"):
        hub.fetch("long")
    assert list(env.iterdir()) == []


def test_a_download_writes_what_has_arrived(env, release):
    # read(1 MiB) waited for a whole MiB: the .part file (whose mtime tells a live download from an abandoned one)
    # and the progress bar stood still until a small or slow download had ended
    _register("trickle", "trickle.safetensors", size=len(GOOD))
    sizes, deadline = [], time.monotonic() + 30  # a bound for a failing run only: a loaded CI machine may be slow
    with ThreadPoolExecutor(1) as pool:
        download = pool.submit(hub.fetch, "trickle")
        try:
            while sizes != [1000] and time.monotonic() < deadline:  # the server holds back all but 1000 bytes
                time.sleep(0.02)
                sizes = [part.stat().st_size for part in env.glob(".trickle.safetensors.*.part")]
        finally:
            release.set()
        assert download.result(timeout=30).read_bytes() == GOOD
    assert sizes == [1000]


def test_parts_abandoned_by_killed_downloads_are_cleaned_up(env):
    env.mkdir()
    old, live = env / ".good.safetensors.k1ll3d.part", env / ".good.safetensors.l1v3.part"
    for part in (old, live):
        part.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))  # untouched for two hours: its writer is gone
    _register("good", "good.safetensors")
    assert hub.fetch("good").read_bytes() == GOOD
    assert not old.exists() and live.exists()  # a recent part may belong to a download in progress


def test_a_part_left_by_a_killed_download_is_removed_when_the_cached_copy_is_used(env):
    # the cleanup ran only before a download: once a retry had cached the file, no later fetch downloaded again,
    # and the killed download's .part stayed in the cache dir for good
    _register("good", "good.safetensors")
    hub.fetch("good")
    old = env / ".good.safetensors.k1ll3d.part"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert hub.fetch("good").read_bytes() == GOOD and _Handler.counts["good.safetensors"] == 1
    assert not old.exists()


def test_a_directory_where_the_cached_file_should_be_is_named_and_left_alone(env):
    # it went on to download, and the rename over the directory raised a raw IsADirectoryError naming a temp file
    (env / "good.safetensors").mkdir(parents=True)
    _register("good", "good.safetensors")
    with pytest.raises(hub.HubError, match=r"good.safetensors is a directory, not the file; remove that directory$"):
        hub.fetch("good")
    assert (env / "good.safetensors").is_dir() and "good.safetensors" not in _Handler.counts


def test_an_unreadable_cached_copy_is_named_and_replaced_by_a_download(env, monkeypatch):
    # reading it raised a raw PermissionError (simulated: as root, chmod 000 leaves a file readable)
    _register("good", "good.safetensors")
    cached = hub.fetch("good")
    read = hub.sha256_file

    def unreadable(path):
        if Path(path) == cached and cached.stat().st_ino == inode:
            raise PermissionError(13, "Permission denied", str(path))
        return read(path)

    inode = cached.stat().st_ino
    monkeypatch.setattr(hub, "sha256_file", unreadable)
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"cached \S+good.safetensors cannot be read \(Permission denied\)"):
        hub.fetch("good")
    monkeypatch.delenv("LATENT_TRANSFORMS_OFFLINE")
    assert hub.fetch("good").read_bytes() == GOOD and _Handler.counts["good.safetensors"] == 2


def test_a_part_left_by_a_killed_registry_writer_is_removed_by_the_next_one(env):
    # atomic_path removes its temp file on an error, not when the process is killed: they stayed for good
    env.mkdir()
    old, live = env / ".registry.json.k1ll3d.part", env / ".registry.json.l1v3.part"
    for part in (old, live):
        part.write_text("{")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    _register("a", "good.safetensors", persist=True)
    assert not old.exists() and live.exists()


@pytest.mark.parametrize("file", ["length-unicode.safetensors", "length-huge.safetensors"])
def test_a_malformed_content_length_is_ignored_and_the_registry_size_decides(env, file):
    # "²".isdigit() is True and int() refuses 5,000 digits: both escaped as a raw ValueError naming no URL
    _register("x", file, size=len(GOOD))
    assert hub.fetch("x").read_bytes() == GOOD


def test_a_redirect_loop_is_reported_on_one_line(env, server):
    _register("x", "loop.safetensors")
    with pytest.raises(hub.HubError, match=rf"{server}/loop.safetensors failed: HTTP 302") as e:
        hub.fetch("x")
    assert "\n" not in str(e.value)
    assert _leftovers(env) == []


def test_a_network_error_without_words_is_named_by_its_type(env, server, monkeypatch):
    """Audit 429: a redirect to an ftp:// server (urllib follows those) that closed the connection at once failed
    with URLError(EOFError()), whose text is empty: the message ended in "cannot download URL: " and said nothing."""
    def closed_at_once(request, timeout):
        raise urllib.error.URLError(EOFError())

    monkeypatch.setattr(hub.urllib.request, "urlopen", closed_at_once)
    _register("x", "good.safetensors")
    with pytest.raises(hub.HubError, match=rf"^cannot download {server}/good\.safetensors: EOFError; "):
        hub.fetch("x")


@pytest.mark.parametrize("file, message", [
    ("moved-missing.safetensors", "failed: HTTP 404 Not Found"),
    ("moved-truncated.safetensors", f"is truncated or too long: Content-Length is {len(GOOD)} bytes, got 1000"),
])
def test_a_download_that_fails_after_a_redirect_names_where_it_was_redirected(env, server, file, message):
    """A hub URL that redirects (a release page to its CDN): an error there named the hub URL alone (a 404 at the
    CDN read as the hub's), never the redirect. Its target is named without its query, which may hold a signature;
    a redirect to the file itself is followed."""
    _register("moved", file)
    target = f"{server}/cdn/{file.removeprefix('moved-')}"
    with pytest.raises(hub.HubError, match=rf"{server}/{file} \(redirected to {target}\) {message}") as e:
        hub.fetch("moved")
    assert "s3cr3t" not in str(e.value) and list(env.iterdir()) == []
    _register("good", "moved-good.safetensors")
    assert hub.fetch("good").read_bytes() == GOOD
    assert sorted(p.name for p in env.iterdir()) == ["moved-good.safetensors"]


@pytest.mark.parametrize("userinfo", ["alice:s3cr3t@", "ghp_s3cr3t@", "a:b@s3cr3t@"])
@pytest.mark.parametrize("base", ["http://{}127.0.0.1:9/ckpt", "ftp://{}host/x", "http://{}[::1", "http://{}h/\n",
                                  "file://{}host/x", "//{}host/x"])  # (audit 420) no scheme: None//*** had it one
def test_a_hub_url_with_credentials_is_refused_without_naming_them(env, monkeypatch, base, userinfo):
    """urllib sends no user name or password from a URL: it looked "alice:s3cr3t@127.0.0.1" up as a host name, and the
    error ("Name or service not known") printed the password; no message names it."""
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", base.format(userinfo))
    _register("x", "good.safetensors")
    with pytest.raises(ValueError, match=r"LATENT_TRANSFORMS_HUB_URL='([a-z]+:)?//\*\*\*@") as e:
        hub.fetch("x")
    assert "s3cr3t" not in str(e.value)
    if base.startswith("http://{}127"):
        assert "holds a user name or password" in str(e.value)


def test_a_redirect_is_named_without_its_user_name_and_password():
    assert hub._as_fetched("https://hub/x.safetensors", "https://bob:s3cr3t@cdn:8/x.safetensors?sig=s3cr3t#f") == \
        "https://hub/x.safetensors (redirected to https://***@cdn:8/x.safetensors)"


@pytest.mark.parametrize("scheme, why", [
    ("http", ": nonnumeric port: '***@localhost'"),
    # (audit 419) urllib's refusal quotes the URL: its password was in the message, only the redirect's URL masked;
    # (audit 424) and its signed query (?X-Amz-Signature=...), which the redirect's URL drops
    ("gopher", " (redirected to gopher://***@localhost/cdn/good.safetensors) failed: HTTP 302 Found - Redirection to "
               "url 'gopher://***@localhost/cdn/good.safetensors' is not allowed"),
])
def test_a_redirect_to_a_url_with_a_password_is_refused_without_naming_it(env, server, scheme, why):
    _register("x", f"signed-in-{scheme}.safetensors")
    with pytest.raises(hub.HubError, match=re.escape(f"{server}/signed-in-{scheme}.safetensors{why}") + "$") as e:
        hub.fetch("x")
    assert "s3cr3t" not in str(e.value) and list(env.iterdir()) == []


def test_a_file_url_folder_with_an_at_sign_is_named_as_it_is(env, tmp_path, monkeypatch):
    """(audit 419) An "@" in a network error's reason was taken for a password's end: a missing file under
    .../GoogleDrive-me@example.com/ (macOS's Google Drive folder) was named .../***@example.com/."""
    folder = tmp_path / "GoogleDrive-me@example.com" / "ckpts"
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", folder.as_uri())
    _register("x", "good.safetensors")
    with pytest.raises(hub.HubError, match=re.escape(f"{os.strerror(errno.ENOENT)}: '{folder / 'good.safetensors'}'")
                       ) as e:
        hub.fetch("x")
    assert "***" not in str(e.value)


def test_an_at_sign_a_network_error_quotes_outside_a_urls_user_name_is_kept():
    """(audit 420) Only a URL's "user:password@" is masked: an "@" in its path, query or fragment, or after it (an
    address in the message), is the reason's own."""
    reason = ("Redirection to url 'https://h/me@x/y', 'https://h?to=me@x', 'https://h#me@x' or https://h from "
              "admin@example.com")
    assert hub._why(urllib.error.URLError(reason)) == reason
    assert hub._why(urllib.error.URLError("to url 'gopher://u:s3cr3t@h?to=me@x'")) == "to url 'gopher://***@h?to=me@x'"


@pytest.mark.parametrize("url", ["https://h/ckpts?token=abc", "http://h/ckpts#x", "https://h?token=me@x", "http://h/?",
                                 "https://h/ckpts?token=abc#x"])  # cut at the first of both: no token shown
def test_an_http_hub_url_with_a_query_or_fragment_is_refused(env, monkeypatch, url):
    """(audit 420) The file's name was appended after the query: https://h/ckpts?token=abc/good.safetensors asked the
    folder for a query naming the file (a fragment: the folder itself); the refusal names neither (a token)."""
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", url)
    _register("x", "good.safetensors")
    cut = re.match(r"[^?#]*[?#]", url)[0]  # https://h/ckpts? (the host's part only: "me@" is no password)
    with pytest.raises(ValueError, match=rf"^LATENT_TRANSFORMS_HUB_URL='{re.escape(cut)}\.\.\.' has a query or "
                                         r"fragment \('\?' or '#'\)") as e:
        hub.fetch("x")
    assert "abc" not in str(e.value) and "me@" not in str(e.value)


def test_a_file_url_given_back_rewritten_is_not_called_redirected():
    assert hub._as_fetched("file://localhost/c/x.safetensors", "file:///c/x.safetensors") == \
        "file://localhost/c/x.safetensors"


@pytest.mark.parametrize("file", ["loop.safetensors", "missing.safetensors", "error.safetensors"])
def test_an_http_error_leaves_no_connection_open(env, file):
    # the HTTPError's response was left open for the garbage collector, whose "unclosed socket" ResourceWarning came
    # at a moment of its choosing, in a later test (seen in test_a_malformed_hub_url_is_named): one that records every
    # warning (recwarn, simplefilter("always")) and expects none, or one, would fail when a collection fell inside it
    _register("x", file)

    def fetch_refused() -> None:  # e holds the error, whose traceback holds this frame: only a collection frees them
        with pytest.raises(hub.HubError, match="failed: HTTP") as e:
            hub.fetch("x")
        assert e.value.__context__ is not None  # the HTTPError, kept as the refusal's context

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fetch_refused()
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.parametrize("url, why", [("http://[::1", "is not a valid URL"),
                                      ("http://127.0.0.1:9/\n", "control character")])
def test_a_malformed_hub_url_is_named(env, monkeypatch, url, why):
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", url)
    _register("x", "good.safetensors")
    with pytest.raises(ValueError, match=rf"LATENT_TRANSFORMS_HUB_URL=.*{why}"):
        hub.fetch("x")


def _full_disk(monkeypatch, fails_at: str, code: int = errno.ENOSPC) -> Callable[[], None]:
    """Make the disk refuse a download's file at ``fails_at`` ("write", "close", "fsync" or "replace") with ``code``;
    returns what gives it room again."""
    real_fdopen, real_fsync, real_replace = os.fdopen, os.fsync, os.replace

    def fails(step: str, real):
        def call(*args):
            if fails_at == step:
                raise OSError(code, os.strerror(code))
            return real(*args)
        return call

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            return fails("write", self.f.write)(data)

        def close(self):
            closed, _ = self.f.closed, self.f.close()
            if fails_at == "close" and not closed:
                raise OSError(code, os.strerror(code))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    monkeypatch.setattr(os, "fsync", fails("fsync", real_fsync))
    monkeypatch.setattr(os, "replace", fails("replace", real_replace))

    def room() -> None:
        for name, real in (("fdopen", real_fdopen), ("fsync", real_fsync), ("replace", real_replace)):
            monkeypatch.setattr(os, name, real)
    return room


@pytest.mark.parametrize("fails_at", ["write", "close", "fsync", "replace"])
def test_a_full_disk_while_downloading_is_not_reported_as_a_network_failure(env, monkeypatch, fails_at):
    # NFS or a quota may report the full disk only at the close (or the fsync): that was a raw OSError naming nothing;
    # and the error told to copy the file into that full cache dir (the hint for a name registered without its file);
    # at the rename it was a raw OSError naming the hidden temp file; none said how much room the file needs
    room = _full_disk(monkeypatch, fails_at)
    _register("good", "good.safetensors")  # no size: Content-Length gives it
    with pytest.raises(hub.HubError, match=rf"^cannot write to the cache dir {re.escape(str(env))} \(No space left on "
                                           rf"device\): good.safetensors needs {len(GOOD)} bytes; free space there or "
                                           rf"set LATENT_TRANSFORMS_HOME to a directory with room$"):
        hub.fetch("good")
    assert _leftovers(env) == [] and not (env / "good.safetensors").exists()
    room()  # a retry downloads
    assert hub.fetch("good").read_bytes() == GOOD and _leftovers(env) == []


@pytest.mark.parametrize("size, needs", [(len(GOOD), f": no-length.safetensors needs {len(GOOD)} bytes"), (None, "")])
def test_a_full_disk_says_what_the_file_needs_where_the_registry_gives_its_size(env, monkeypatch, size, needs):
    """Without Content-Length the registry's size is the file's; without either, the message says no size."""
    _full_disk(monkeypatch, "write", errno.EDQUOT)
    _register("quota", "no-length.safetensors", size=size)
    with pytest.raises(hub.HubError, match=rf"^cannot write to the cache dir {re.escape(str(env))} "
                                           rf"\({os.strerror(errno.EDQUOT)}\){re.escape(needs)}; free space there or "
                                           rf"set LATENT_TRANSFORMS_HOME to a directory with room$"):
        hub.fetch("quota")
    assert list(env.iterdir()) == []


def test_a_full_disk_before_the_download_starts_says_what_the_registry_size_needs(env, monkeypatch):
    """Mutation round 48: the temp file cannot be made (no inodes left: ENOSPC) before any answer; the registry's
    size is known then and was not checked to be said."""
    def no_room(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(hub.tempfile, "mkstemp", no_room)
    _register("good", "good.safetensors", size=len(GOOD))
    with pytest.raises(hub.HubError, match=rf"\): good.safetensors needs {len(GOOD)} bytes; free space there"):
        hub.fetch("good")


def _rename_refused(code: int) -> Callable[[str, str], None]:
    """An ``os.replace`` that refuses with ``code``, naming both files as the real one does."""
    def refused(src, dst):
        raise OSError(code, os.strerror(code), src, None, dst)
    return refused


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_a_download_whose_rename_is_refused_names_the_cache_dir_and_what_to_do(env, monkeypatch, code):
    """A read-only mount, or a folder whose files may be written but not replaced, refuses the rename at the end (as
    root chmod does not bite: simulated): that was the raw PermissionError or OSError naming the hidden temp file."""
    monkeypatch.setattr(hub.os, "replace", _rename_refused(code))
    _register("good", "good.safetensors")
    with pytest.raises(hub.HubError, match=rf"^cannot write to the cache dir {re.escape(str(env))} "
                                           rf"\({os.strerror(code)}\); set LATENT_TRANSFORMS_HOME to a writable "
                                           rf"directory$"):
        hub.fetch("good")
    assert list(env.iterdir()) == []


def test_ctrl_c_during_a_download_leaves_nothing_and_the_next_call_downloads_afresh(env, monkeypatch):
    real_read1 = hub.http.client.HTTPResponse.read1

    def interrupted(self, n=-1):
        monkeypatch.setattr(hub.http.client.HTTPResponse, "read1", real_read1)  # once
        real_read1(self, 1000)  # part of the body has arrived and been written
        raise KeyboardInterrupt

    monkeypatch.setattr(hub.http.client.HTTPResponse, "read1", interrupted)
    _register("good", "good.safetensors")
    with pytest.raises(KeyboardInterrupt):
        hub.fetch("good")
    assert list(env.iterdir()) == []
    assert hub.fetch("good").read_bytes() == GOOD and sorted(p.name for p in env.iterdir()) == ["good.safetensors"]
    assert _Handler.counts["good.safetensors"] == 2


def test_load_uses_the_bytes_it_verified(env, monkeypatch):
    # load hashed the file (in fetch), then opened it again by path: a file replaced in between (by a process
    # whose registry gives another version) was loaded unverified
    codec, other = _codec(0), _codec(1)
    sha = hub.save_checkpoint(codec, env.parent / "vae.safetensors")
    hub.save_checkpoint(other, env.parent / "other.safetensors")
    env.mkdir()
    (env / "vae.safetensors").write_bytes((env.parent / "vae.safetensors").read_bytes())
    hub.register("vae", file="vae.safetensors", sha256=sha, config=codec.config, trained_on="test",
                 quality={"mse": 0.01})
    fetch = hub.fetch

    def fetch_then_replace(name):
        path = fetch(name)
        os.replace(env.parent / "other.safetensors", path)  # another process's complete, atomic replacement
        return path

    monkeypatch.setattr(hub, "fetch", fetch_then_replace)
    with pytest.raises(hub.HubError, match=rf"does not have the expected sha256 {sha}.*replaced while it was read"):
        hub.load("vae")
    monkeypatch.setattr(hub, "fetch", fetch)
    (env / "vae.safetensors").write_bytes((env.parent / "vae.safetensors").read_bytes())
    assert torch.equal(_outputs(hub.load("vae")), _outputs(codec.eval()))


@pytest.mark.parametrize("folder, file, host", [
    ("my checkpoints", "good.safetensors", ""),  # a space in the folder
    ("remote", "a#1.safetensors", "localhost"),  # a "#" in the file name (unquoted: a fragment), file://localhost/
    ("a?b", "good.safetensors", ""),  # (audit 420) a "?" in the folder: a file URL has no query, http's is refused
])
def test_a_file_url_with_a_space_a_hash_or_localhost_works(env, tmp_path, monkeypatch, folder, file, host):
    folder = tmp_path / folder
    folder.mkdir()
    (folder / file).write_bytes(GOOD)
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", f"file://{host}{folder}")
    _register("good", file)
    assert hub.fetch("good").read_bytes() == GOOD


def test_a_file_name_too_long_for_the_cache_dir_is_refused_when_registered(env):
    # 240 characters registered fine; fetch then failed with "cannot write to the cache dir" (the temp name was
    # over 255 bytes), and a name over 255 bytes broke `latent-transforms list` for every checkpoint
    with pytest.raises(ValueError, match=r"is 252 bytes long; at most 240"):
        _register("long", "x" * 240 + ".safetensors")
    fits = "x" * 228 + ".safetensors"  # 240 bytes
    _register("fits", fits)
    _Handler.files[fits] = GOOD
    try:
        assert hub.fetch("fits").name == fits  # its download's temp name, 255 bytes, fits too
    finally:
        del _Handler.files[fits]
    with pytest.raises(ValueError, match=r"name 'y{40}'\.\.\. cannot be a file name \(it is too long"):
        hub.check_file_stem("y" * 230)
    with pytest.raises(ValueError, match=r"name 'a{50}/x' cannot be a file name \(no path separators"):
        hub.check_file_stem("a" * 50 + "/x")  # not cut short: the separator shows
    # a 240-byte file name is not too long: its ':' is what is wrong (mutation round, audit 373: it was "too long")
    with pytest.raises(ValueError, match=r"name 'a{226}:x' cannot be a file name \(no path separators, ':'"):
        hub.check_file_stem("a" * 226 + ":x")


@pytest.mark.parametrize("make", ["directory", "deep", "digits"])
def test_an_unusable_user_registry_is_a_warning_in_list(env, make):
    # a directory named registry.json gave a raw IsADirectoryError, arrays nested 100,000 deep a RecursionError, an
    # int of 5,000 digits Python's ValueError "Exceeds the limit (4300 digits)", naming no file
    env.mkdir()
    _register("digits-a", "good.safetensors")  # registered otherwise: still listed
    registry = env / "registry.json"
    if make == "directory":
        registry.mkdir()
    else:
        registry.write_text("[" * 100_000 + "]" * 100_000 if make == "deep" else '{"checkpoints": ' + "9" * 5000 + "}")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(registry))} (cannot be read|is not valid JSON).*left out"):
        names = hub.list_checkpoints()
    assert [row["name"] for row in names] == ["digits-a"]


@pytest.mark.parametrize("file, status, hint", [
    ("missing.safetensors", 404, "; the server has no missing.safetensors: is LATENT_TRANSFORMS_HUB_URL the address of "
                                 "the folder that holds it?"),
    ("gone.safetensors", 410, "; the server has no gone.safetensors: is LATENT_TRANSFORMS_HUB_URL the address of the "
                              "folder that holds it?"),
    ("error.safetensors", 500, "; an error on the server's side, often passing: try again later"),
    ("busy.safetensors", 429, "; an error on the server's side, often passing: try again later"),
    ("forbidden.safetensors", 403, ""),  # nothing to suggest
])
def test_http_errors_name_url_and_status_and_what_to_do(env, server, file, status, hint):
    """Each status its hint and no other (mutation round, audit 374: 410's, 429's and none were untested); a 404 or
    410 (nothing there to have) is followed by where else the file may come from."""
    _register("x", file)
    reason = _Handler.responses[status][0]
    with pytest.raises(hub.HubError, match=rf"{server}/{file} failed: HTTP {status} {reason}{re.escape(hint)}"
                                           rf"(; registered .*)?$"):
        hub.fetch("x")
    assert list(env.iterdir()) == []


@pytest.mark.parametrize("size", [None, len(GOOD)])
def test_a_compressed_answer_is_refused_as_such_not_as_another_file(env, size):
    # urllib asked for no encoding, which allows any; the gzip bytes were reported as "the wrong sha256" or, with a
    # size, "not the registered file"
    _register("z", "gzip.safetensors", size=size)
    with pytest.raises(hub.HubError, match=r"the server sent gzip.safetensors from \S+ compressed \(Content-Encoding: "
                                           r"gzip\), although asked for it as is; have it serve .safetensors files "
                                           r"uncompressed, or download the file yourself into"):
        hub.fetch("z")
    assert _Handler.accept_encoding["gzip.safetensors"] == "identity" and list(env.iterdir()) == []


def test_an_answer_labelled_identity_encoded_in_any_case_is_the_file_as_is(env):
    """Content-Encoding names are case-insensitive: "Identity" is no compression, and the file is taken."""
    _register("i", "identity.safetensors", size=len(GOOD))
    assert hub.fetch("i").read_bytes() == GOOD


@pytest.mark.parametrize("size, why", [(None, "has the wrong sha256"), (len(GOOD), "has the wrong length")])
def test_a_web_page_instead_of_the_file_is_named(env, size, why):
    # a login page, or a repository's page about the file: only "the wrong sha256" was said
    _register("p", "page.safetensors", size=size)
    with pytest.raises(hub.HubError, match=rf"{why}.*; the server sent a web page \(Content-Type: text/html\), not the "
                                           rf"file: is LATENT_TRANSFORMS_HUB_URL the address the files themselves"):
        hub.fetch("p")
    assert list(env.iterdir()) == []


def test_an_http_hub_url_with_a_space_and_non_ascii_characters_works(env, server, monkeypatch):
    # http.client sends the path as ASCII: "é" escaped as a raw UnicodeEncodeError naming no URL, and a space was
    # called a control character
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", f"{server}/mod\u00e8les x/")
    _register("good", "good.safetensors")
    _Handler.files["mod%C3%A8les%20x/good.safetensors"] = GOOD
    try:
        assert hub.fetch("good").read_bytes() == GOOD
    finally:
        del _Handler.files["mod%C3%A8les%20x/good.safetensors"]


@pytest.mark.parametrize("make, what", [(lambda p: p.write_text(""), "a file"),
                                        (lambda p: p.symlink_to(p.parent / "gone"),
                                         "a symbolic link to a path that does not exist")])
def test_a_cache_dir_that_is_not_a_directory_is_named_as_such(env, monkeypatch, make, what):
    # mkdir's "File exists" was all it said
    make(env)
    _register("good", "good.safetensors")
    message = rf"cannot write to the cache dir {re.escape(str(env))} \(it is {what}, not a directory\); set " \
              rf"LATENT_TRANSFORMS_HOME to a writable directory$"  # not also told to copy the file into it
    for call in (lambda: hub.fetch("good"), lambda: _register("p", "good.safetensors", persist=True)):
        with pytest.raises(hub.HubError, match=message):
            call()


def test_slow_server_times_out(env, monkeypatch, release):
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_TIMEOUT", "0.2")
    timeout = r"timed out \(no answer within LATENT_TRANSFORMS_HUB_TIMEOUT=0.2 seconds; raise it for a slow server"
    _register("slow", "slow.safetensors")
    start = time.monotonic()
    with pytest.raises(hub.HubError, match=f"slow.safetensors failed after 0 bytes: {timeout}"):
        hub.fetch("slow")
    assert time.monotonic() - start < SLOW_SECONDS
    _register("trickle", "trickle.safetensors")
    with pytest.raises(hub.HubError, match=f"trickle.safetensors failed after 1000 bytes: {timeout}"):
        hub.fetch("trickle")
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes the connection, never answers
        monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        with pytest.raises(hub.HubError, match=f"cannot download .*/slow.safetensors: {timeout}"):
            hub.fetch("slow")
    assert list(env.iterdir()) == []


def test_bad_timeout_setting(env, monkeypatch):
    _register("good", "good.safetensors")
    for bad in ("soon", "inf", "0"):
        monkeypatch.setenv("LATENT_TRANSFORMS_HUB_TIMEOUT", bad)
        with pytest.raises(ValueError, match="LATENT_TRANSFORMS_HUB_TIMEOUT must be a positive, finite number"):
            hub.fetch("good")
    assert _leftovers(env) == []


def test_file_urls(env, tmp_path, monkeypatch):
    remote = tmp_path / "remote dir"
    remote.mkdir()
    (remote / "good.safetensors").write_bytes(GOOD)
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", remote.as_uri())
    _register("good", "good.safetensors")
    _register("absent", "absent.safetensors")
    assert hub.fetch("good").read_bytes() == GOOD
    with pytest.raises(hub.HubError, match="absent.safetensors"):
        hub.fetch("absent")
    assert _leftovers(env) == []


def test_unsupported_scheme_is_refused(env, monkeypatch):
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "ftp://example.com/ckpts")
    _register("good", "good.safetensors")
    with pytest.raises(ValueError, match="unsupported scheme 'ftp'"):
        hub.fetch("good")


def test_a_file_url_with_a_host_suggests_three_slashes(env, monkeypatch):
    # file://tmp/ckpts read "tmp" as a host: "cannot download ...: file not on local host"
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "file://tmp/ckpts")
    _register("good", "good.safetensors")
    with pytest.raises(ValueError, match="reads 'tmp' as a host name; a local directory is file:///absolute/path"):
        hub.fetch("good")
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "/tmp/ckpts")
    with pytest.raises(ValueError, match="unsupported scheme ''.*a local directory: file:///absolute/path"):
        hub.fetch("good")


def test_a_file_url_with_a_host_names_the_four_slash_form_of_a_network_share(env, tmp_path, monkeypatch):
    # Path(r"\\server\share\ckpts").as_uri() is file://server/share/ckpts, which reads "server" as a host; urllib
    # opens file:////server/share/ckpts as \\server\share\ckpts on Windows (a path starting // here)
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "file://server/share/ckpts")
    with pytest.raises(ValueError, match=re.escape("a Windows network share file:////server/share/ckpts (four;")):
        hub.fetch("good")
    (tmp_path / "good.safetensors").write_bytes(GOOD)
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "file:///" + tmp_path.as_posix())  # the four-slash form
    assert hub.fetch("good").read_bytes() == GOOD


def test_a_windows_path_as_the_hub_url_is_answered_with_its_file_url(env, monkeypatch):
    # C:\ckpts read "c" as the scheme, and the message gave file:///absolute/path, which is no Windows path
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", r"C:\Users\Zoë\my ckpts")
    with pytest.raises(ValueError, match=re.escape("unsupported scheme 'c'; use one of ['http', 'https', 'file'] (a "
                                                   "local directory: file:///C:/Users/Zo%C3%AB/my%20ckpts)")):
        hub.fetch("good")
    # (mutation audit 177) a path relative to a drive's current directory has no file URL (as_uri() raised its own
    # "relative path can't be expressed as a file URI"), and a network share's as_uri() is the two-slash form refused
    # above: the general form for both
    for path, scheme in (("C:ckpts", "c"), (r"\\server\share\ckpts", "")):
        monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", path)
        with pytest.raises(ValueError, match=re.escape(f"unsupported scheme {scheme!r}; use one of ['http', 'https', "
                                                       f"'file'] (a local directory: file:///absolute/path)")):
            hub.fetch("good")


def test_no_url_says_where_it_looked(env, monkeypatch):
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_URL")
    _register("good", "good.safetensors")
    with pytest.raises(hub.HubError, match=rf"looked in {env / 'good.safetensors'}.*set LATENT_TRANSFORMS_HUB_URL"):
        hub.fetch("good")


def test_offline_forbids_downloads_but_uses_the_cache(env, monkeypatch):
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="offline"):
        hub.fetch("good")
    assert "good.safetensors" not in _Handler.counts
    monkeypatch.delenv("LATENT_TRANSFORMS_OFFLINE")
    hub.fetch("good")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    assert hub.fetch("good").read_bytes() == GOOD


def test_corrupted_cache_is_replaced_by_a_verified_download(env, monkeypatch):
    _register("good", "good.safetensors")
    path = hub.fetch("good")
    path.write_bytes(b"garbage")
    assert hub.fetch("good").read_bytes() == GOOD
    assert _Handler.counts["good.safetensors"] == 2
    path.write_bytes(b"garbage")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(hub.HubError, match="does not match the registry \\(sha256 mismatch: corrupted, or an older"):
        hub.fetch("good")
    # never deleted by name: another process may have put a good copy there since it was hashed
    assert path.read_bytes() == b"garbage"



def test_read_only_cache_dir(env, monkeypatch):
    env.mkdir()
    if os.access(env, os.W_OK):  # as root chmod leaves the directory writable: refuse the temp file as it would be
        def refused(*args, dir=None, **kwargs):
            raise PermissionError(13, "Permission denied", str(Path(dir) / ".good.safetensors.x1y2.part"))
        monkeypatch.setattr(hub.tempfile, "mkstemp", refused)
    env.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        _register("good", "good.safetensors")
        with pytest.raises(hub.HubError, match=r"cannot write to the cache dir .* \(Permission denied\); set "
                                               r"LATENT_TRANSFORMS_HOME to a writable directory"):
            hub.fetch("good")
    finally:
        env.chmod(stat.S_IRWXU)


def test_a_cache_dir_that_cannot_be_opened_for_its_lock_says_what_to_do(env, monkeypatch):
    """The lock is taken on the cache dir itself, opened for reading: a directory without read permission (simulated:
    as root every directory opens) is named with the way out, not a raw PermissionError."""
    env.mkdir()
    real_open = os.open

    def unreadable_dir(path, flags, *args, **kwargs):
        if Path(path) == env:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(hub.os, "open", unreadable_dir)
    _register("good", "good.safetensors")
    with pytest.raises(hub.HubError, match=rf"cannot write to the cache dir {re.escape(str(env))} \(Permission "
                                           rf"denied\); set LATENT_TRANSFORMS_HOME to a writable directory"):
        hub.fetch("good")


def test_cache_dir_that_cannot_be_created(env, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(blocker / "cache" / "sub"))
    _register("good", "good.safetensors")
    # the file further up is named: "(Not a directory)" was all it said (audit 404)
    cache = re.escape(str(blocker / "cache" / "sub"))
    with pytest.raises(hub.HubError, match=rf"^cannot write to the cache dir {cache} "
                                           rf"\({re.escape(str(blocker))} is a file, not a directory\); set "
                                           rf"LATENT_TRANSFORMS_HOME to a writable directory$"):
        hub.fetch("good")
    # the file gone by the time it is looked for (another process removed it): the system's words, not "None is a
    # file" (mutation round, audit 409)
    monkeypatch.setattr(hub, "file_in_the_way", lambda folder: None)
    with pytest.raises(hub.HubError, match=rf"^cannot write to the cache dir {cache} \(Not a directory\); set "):
        hub.fetch("good")


def test_a_file_further_up_the_cache_dir_is_named_on_windows_too(env, tmp_path, monkeypatch):
    """Windows' mkdir of ``a-file/cache`` fails "path not found", so ``Path.mkdir(parents=True)`` makes the parents
    first and ends at ``a-file``'s "File exists": that was told as the cache dir itself being a file (audit 412)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    real_mkdir = os.mkdir

    def windows_mkdir(path, *args, **kwargs):  # ERROR_PATH_NOT_FOUND below a file, as Windows answers
        if any(p.is_file() for p in Path(path).parents):
            raise FileNotFoundError(errno.ENOENT, "The system cannot find the path specified", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", windows_mkdir)
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(blocker / "cache" / "sub"))
    _register("good", "good.safetensors")
    cache = re.escape(str(blocker / "cache" / "sub"))
    with pytest.raises(hub.HubError, match=rf"^cannot write to the cache dir {cache} "
                                           rf"\({re.escape(str(blocker))} is a file, not a directory\); set "):
        hub.fetch("good")


def test_a_cache_dir_whose_parents_are_missing_is_made_with_them(env, tmp_path, monkeypatch):
    """A fresh machine has no ~/.cache: the default cache dir's parent is missing too (mutation round, audit 364)."""
    cache = tmp_path / "home" / ".cache" / "latent-transforms"
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(cache))
    _register("good", "good.safetensors")
    assert hub.fetch("good") == cache / "good.safetensors" and _leftovers(cache) == []


def test_registering_into_a_cache_dir_that_cannot_be_written_says_so(env, tmp_path, monkeypatch):
    # it gave the raw OSError, which named a hidden temp file: "Permission denied: '.../.registry.json.x1y2.part'"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(blocker / "cache"))
    message = "cannot write to the cache dir {} .*; set LATENT_TRANSFORMS_HOME to a writable directory"
    with pytest.raises(hub.HubError, match=message.format(re.escape(str(blocker / "cache")))):
        _register("a", "good.safetensors", persist=True)
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(env))
    _register("a", "good.safetensors", persist=True)

    def read_only_dir(*args, **kwargs):  # as root (CI), chmod does not make a directory read-only
        raise PermissionError(13, "Permission denied", str(env / ".registry.json.x1y2.part"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only_dir)
    for call in (lambda: _register("b", "good.safetensors", persist=True), lambda: hub.unregister("a", persist=True)):
        with pytest.raises(hub.HubError, match=message.format(re.escape(str(env)))) as e:
            call()
        assert ".part" not in str(e.value)
    assert list(json.loads((env / "registry.json").read_text())["checkpoints"]) == ["a"]


def test_a_relative_cache_dir_is_refused_and_a_relative_xdg_cache_home_ignored(env, tmp_path, monkeypatch, capsys,
                                                                               recwarn):
    # a relative LATENT_TRANSFORMS_HOME moved with the current directory: a name registered "for every later process"
    # was unknown to a process started elsewhere
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", "~/lt")
    assert hub.cache_dir() == tmp_path / "lt"
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", "lt-home")
    with pytest.raises(ValueError, match="LATENT_TRANSFORMS_HOME='lt-home' is a relative path.*give an absolute path"):
        hub.cache_dir()
    for argv in (["list"], ["fetch", "good"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.count("\n") == 1 and "LATENT_TRANSFORMS_HOME='lt-home' is a relative" in err
    assert recwarn.list == [] and list(tmp_path.iterdir()) == []  # no "left out until fixed" warning, nothing written
    monkeypatch.delenv("LATENT_TRANSFORMS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", "rel-cache")
    assert hub.cache_dir() == tmp_path / ".cache" / "latent-transforms"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.cache_dir() == tmp_path / "xdg" / "latent-transforms"


def test_a_tilde_that_names_no_home_is_refused_by_the_variable_that_holds_it(env, monkeypatch, capsys):
    # was pathlib's RuntimeError "Could not determine home directory.", naming no variable (the CLI: a traceback);
    # registry_for_messages, which leaves a bad LATENT_TRANSFORMS_HOME out of a message, let it through
    import pwd
    hub._SHIPPED_DIR.mkdir()
    shipped = {"shipped": {"file": "shipped.safetensors", "sha256": SHA_GOOD, "config": CONFIG}}
    (hub._SHIPPED_DIR / "registry.json").write_text(json.dumps({"checkpoints": shipped}))
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", "~no-such-user-h354/lt")
    with pytest.raises(ValueError, match=r"^LATENT_TRANSFORMS_HOME='~no-such-user-h354/lt': its ~ names no home "
                                         r"directory .*; set LATENT_TRANSFORMS_HOME to an absolute path$"):
        hub.cache_dir()
    with pytest.raises(SystemExit) as e:
        main(["list"])
    assert e.value.code == 2 and "LATENT_TRANSFORMS_HOME='~no-such-user-h354/lt': its ~" in capsys.readouterr().err
    assert hub.registry_for_messages() == shipped
    monkeypatch.delenv("LATENT_TRANSFORMS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", "~no-such-user-h354")
    with pytest.raises(ValueError, match=r"^XDG_CACHE_HOME='~no-such-user-h354': its ~ names no home directory"):
        hub.cache_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: {}[uid])  # no password entry either: KeyError
    with pytest.raises(ValueError, match=r"^the default cache dir ~/\.cache/latent-transforms: its ~ names no home"):
        hub.cache_dir()


def test_a_tilde_that_names_no_home_in_a_name_or_path_is_read_as_one(env):
    # was pathlib's RuntimeError from _is_path; without a separator it is a name, with one a path (load names it:
    # test_cli's test_a_tilde_that_names_no_home_directory_is_refused_naming_the_argument)
    with pytest.raises(hub.UnknownCheckpointError, match=r"^unknown checkpoint '~no-such-user-h357' \(not a "):
        hub.load("~no-such-user-h357")
    with pytest.raises(hub.UnknownCheckpointError, match=r"^fetch takes a registered checkpoint name, got the path "
                                                         r"'~no-such-user-h357/c\.safetensors'; "):
        hub.fetch("~no-such-user-h357/c.safetensors")


def test_concurrent_threads_fetch_one_good_file(env):
    _register("good", "good.safetensors")
    barrier = threading.Barrier(4)
    results, errors = [], []

    def worker():
        barrier.wait()
        try:
            results.append(hub.fetch("good"))
        except Exception as e:  # collected for the assertion below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(results)) == 1
    assert results[0].read_bytes() == GOOD and sorted(p.name for p in env.iterdir()) == ["good.safetensors"]
    assert _Handler.counts["good.safetensors"] == 1  # one downloads, the others wait and use its file


def _fetch_in_child(barrier, results) -> None:
    hub.register("good", file="good.safetensors", sha256=SHA_GOOD, config=CONFIG, overwrite=True)
    barrier.wait()
    try:
        results.put(str(hub.fetch("good")))
    except Exception as e:  # reported to the parent's assertion
        results.put(f"error: {e}")


def test_concurrent_processes_fetch_one_good_file(env):
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    # children inherit the environment (cache dir, hub URL)
    procs = [ctx.Process(target=_fetch_in_child, args=(barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    paths = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(set(paths)) == 1 and Path(paths[0]).read_bytes() == GOOD
    assert sorted(p.name for p in env.iterdir()) == ["good.safetensors"]
    assert _Handler.counts["good.safetensors"] == 1  # DDP ranks loading one name download it once


def _run_json(folder: Path, sha256: str | None = None) -> Path:
    """The run JSON ``folder/zz-run.json`` as ``latent-transforms train`` writes it, of a codec saved beside it as
    zz-run.safetensors (``sha256`` None), or of a checkpoint of that sha256 not there."""
    if sha256 is None:
        sha256 = hub.save_checkpoint(_codec(), folder / "zz-run.safetensors")
    run = folder / "zz-run.json"
    run.write_text(json.dumps({"name": "zz-run", "registry_entry": {"file": "zz-run.safetensors", "sha256": sha256,
                                                                    "config": CONFIG}}))
    return run


def _register_runs_in_child(run, names, barrier, results) -> None:
    for name in names:
        barrier.wait()
        try:
            results.put(hub.register_run(run, name=name).changed)
        except Exception as e:  # reported to the parent's assertion
            results.put(f"error: {e}")


def test_a_run_whose_checkpoint_is_gone_is_a_missing_file(env, tmp_path):
    """The run's JSON without its .safetensors beside it was a plain ValueError, where every other file that is not
    there is a MissingFileError (a FileNotFoundError, and still a ValueError)."""
    run = _run_json(tmp_path, SHA_GOOD)
    # no hint of a renamed run (audit 421's), whose checkpoint, the run's name, is the one not there
    with pytest.raises(FileNotFoundError,
                       match=r"no checkpoint file \S*zz-run\.safetensors beside \S*zz-run\.json$") as e:
        hub.register_run(run)
    assert isinstance(e.value, ValueError)


def test_a_run_renamed_with_its_checkpoint_is_told_the_name_its_json_gives(env, tmp_path):
    """Audit 421: a run whose JSON and checkpoint were both renamed (zz-run.* to mine.*) was refused as "no checkpoint
    file zz-run.safetensors", with mine.safetensors beside it and no word of why: the JSON names its checkpoint."""
    run = _run_json(tmp_path)
    renamed = run.rename(tmp_path / "mine.json")
    (tmp_path / "zz-run.safetensors").rename(tmp_path / "mine.safetensors")
    with pytest.raises(FileNotFoundError, match=r"zz-run\.safetensors beside .*mine\.json; mine\.safetensors is there: "
                                                r"mine\.json names its checkpoint zz-run\.safetensors, give it that name "
                                                r"again \(to register it as mine: --name mine, Python: name='mine'\)$"):
        hub.register_run(renamed)
    assert not (hub.cache_dir() / "zz-run.safetensors").exists()


def test_a_checkpoint_that_changes_while_it_is_copied_is_not_registered(env, tmp_path, monkeypatch):
    """The copy is hashed again (mutation round, audit 374: that check was untested): a file rewritten between its
    check and its copy (training still saving) is refused, leaving neither the entry nor the copy."""
    run = _run_json(tmp_path)
    real_copy = hub.shutil.copyfile

    def copy_of_a_changing_file(source, dest):
        real_copy(source, dest)
        with open(dest, "ab") as f:
            f.write(b"more")

    monkeypatch.setattr(hub.shutil, "copyfile", copy_of_a_changing_file)
    with pytest.raises(ValueError, match=r"zz-run.safetensors changed while it was copied; nothing registered$"):
        hub.register_run(run)
    assert "zz-run" not in hub._registry() and list(env.iterdir()) == []


def test_concurrent_processes_register_one_run(env, tmp_path):
    """DDP ranks each registering the run at start: the rank that persisted second raised "already registered;
    pass overwrite=True" (the check that the run is already there ran before either rank had written it)."""
    run = _run_json(tmp_path)
    sha = hub.sha256_file(tmp_path / "zz-run.safetensors")
    names = [f"zz-run-{i}" for i in range(4)]  # four rounds: the race was lost in most of them
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_register_runs_in_child, args=(run, names, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(2 * len(names))]
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0] and all(isinstance(o, bool) for o in outcomes), outcomes
    assert set(json.loads((env / "registry.json").read_text())["checkpoints"]) == set(names)
    assert all(hub.sha256_file(env / f"{name}.safetensors") == sha for name in names)
    assert _leftovers(env) == []

    # one True per name: exactly one process registered it
    assert sorted(o for o in outcomes) == [False] * len(names) + [True] * len(names)


def test_a_run_registered_between_its_entry_and_its_file_is_waited_for(env, tmp_path, monkeypatch):
    """A process checking while another had written the registry entry but not yet put the file in place saw a
    registered name without its copy and asked for --overwrite: the check, the copy and the entry are one step."""
    run = _run_json(tmp_path)
    sha = hub.sha256_file(tmp_path / "zz-run.safetensors")
    entry_written, real_add = threading.Event(), hub._add_entry

    def add_then_pause(*args, **kwargs):  # the first registrant, between its registry edit and the file's rename
        real_add(*args, **kwargs)
        if threading.current_thread().name == "first":
            entry_written.set()
            time.sleep(0.5)

    monkeypatch.setattr(hub, "_add_entry", add_then_pause)
    outcomes = {}

    def register(who):
        try:
            outcomes[who] = hub.register_run(run).changed
        except Exception as e:  # reported to the assertion below
            outcomes[who] = f"error: {e}"

    first = threading.Thread(target=register, args=("first",), name="first")
    first.start()
    assert entry_written.wait(timeout=30)
    register("second")
    first.join()
    assert outcomes == {"first": True, "second": False}
    assert hub.sha256_file(env / "zz-run.safetensors") == sha


def test_without_fcntl_threads_still_fetch_one_good_file(env, monkeypatch):
    """Where there is no fcntl (Windows) the cache dir's lock is the in-process one alone: threads of one process
    loading a name at once still download it once."""
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl raises ImportError
    test_concurrent_threads_fetch_one_good_file(env)


@pytest.mark.parametrize("error", [errno.EBADF, errno.ENOLCK, errno.ENOSYS])
def test_a_file_system_refusing_flock_still_fetches_and_registers(env, monkeypatch, error):
    """A cache dir on a cluster's shared home: NFSv4 refuses an exclusive flock on a descriptor not open for writing
    (EBADF; a directory opens for reading only), some NFS and FUSE mounts answer ENOLCK, Lustre mounted without
    flock ENOSYS. Downloads and registry writes raised that raw OSError: nothing could be fetched or registered
    there. Without the lock they go on as where there is no fcntl (threads of one process still download once)."""
    import fcntl

    def refused(fd, operation):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(fcntl, "flock", refused)
    test_concurrent_threads_fetch_one_good_file(env)  # downloads (once)
    _register("mine", "good.safetensors", persist=True)
    assert list(json.loads((env / "registry.json").read_text())["checkpoints"]) == ["mine"]
    assert hub.fetch("mine").read_bytes() == GOOD
    hub.unregister("mine", persist=True)
    assert json.loads((env / "registry.json").read_text())["checkpoints"] == {}


def test_load_by_name_reads_once_and_returns_copies(env, tmp_path):
    codec = _codec()
    sha = hub.save_checkpoint(codec, tmp_path / "vae.safetensors")
    _Handler.files["vae.safetensors"] = (tmp_path / "vae.safetensors").read_bytes()
    try:
        _register("vae", "vae.safetensors", sha256=sha)
        first = hub.load("vae")
        second = hub.load("vae")
        assert torch.equal(_outputs(first), _outputs(codec.eval())) and torch.equal(_outputs(second), _outputs(first))
        assert _Handler.counts["vae.safetensors"] == 1  # downloaded and verified once
        first.double()  # each load is its own copy: casting (or moving) one leaves the others alone
        assert second.dtype == torch.float32 and hub.load("vae").dtype == torch.float32
    finally:
        del _Handler.files["vae.safetensors"]


def test_threads_loading_one_name_build_it_once(env, tmp_path, monkeypatch):
    # the second thread waits on the per-name lock while the first builds, then must take the first's codec
    codec = _codec()
    sha = hub.save_checkpoint(codec, tmp_path / "vae.safetensors")
    _Handler.files["vae.safetensors"] = (tmp_path / "vae.safetensors").read_bytes()
    load_checkpoint, builds, barrier, both_past = hub.load_checkpoint, [], threading.Barrier(2), threading.Event()

    class Locks(dict):  # the per-name locks, noting when both threads have passed the first cache check
        def setdefault(self, key, default):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:
                both_past.set()
            return super().setdefault(key, default)

    def slow_load_checkpoint(path, device, **kwargs):
        builds.append(path)
        # the other thread queues on the lock (a fixed sleep was too short on a loaded machine: mutation round, audit
        # 383, the second cache check removed survived once)
        assert both_past.wait(30)
        return load_checkpoint(path, device, **kwargs)

    monkeypatch.setattr(hub, "load_checkpoint", slow_load_checkpoint)
    monkeypatch.setattr(hub, "_load_locks", Locks())
    results = []

    def worker():
        barrier.wait()
        results.append(hub.load("vae"))

    try:
        _register("vae", "vae.safetensors", sha256=sha)
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del _Handler.files["vae.safetensors"]
    assert len(builds) == 1 and len(results) == 2 and results[0] is not results[1]
    assert torch.equal(_outputs(results[0]), _outputs(codec.eval()))
    assert torch.equal(_outputs(results[1]), _outputs(results[0]))


# -- CLI --------------------------------------------------------------------------------------------
def test_cli_list_and_fetch(env, capsys):
    _register("digits-vae", "good.safetensors", size=len(GOOD))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "digits-vae" in out and "vae" in out and "3.0 KB" in out and "mse=0.01" in out and "remote" in out
    assert main(["fetch", "digits-vae"]) == 0
    assert capsys.readouterr().out.strip() == str(env / "good.safetensors")
    main(["list"])
    assert "cached" in capsys.readouterr().out


def test_cli_errors_are_one_line(env, capsys):
    _register("digits-vae", "good.safetensors")
    with pytest.raises(SystemExit) as e:
        main(["fetch", "nope"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown checkpoint 'nope'" in err and "digits-vae" in err
    assert "Traceback" not in err


def test_cli_list_empty(env, capsys):
    assert main(["list"]) == 0
    assert "no checkpoints registered" in capsys.readouterr().out


def test_saved_files_get_the_umask_permissions_without_touching_the_umask(tmp_path, monkeypatch):
    # _chmod_default once set the umask to 0 to read it: files other threads created meanwhile came out world-writable
    def no_umask(mask):
        raise AssertionError("os.umask called after import")

    monkeypatch.setattr(os, "umask", no_umask)
    path = tmp_path / "glow.safetensors"
    hub.save_checkpoint(_codec(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~hub._UMASK


def test_reading_the_umask_leaves_it_as_it_was():
    # mutation round, audit 373: without the second os.umask, importing hub left the process's umask at 0, so every
    # file the user's program created afterwards came out world-writable
    before = os.umask(0o027)
    try:
        assert hub._read_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(before)


def test_register_overwrite_drops_the_loaded_codec_of_that_name(env):
    env.mkdir()
    sha_a = hub.save_checkpoint(_codec(0), env / "a.safetensors")
    sha_b = hub.save_checkpoint(_codec(1), env / "b.safetensors")
    _register("vae", "a.safetensors", sha256=sha_a)
    _register("other", "b.safetensors", sha256=sha_b)
    assert torch.equal(_outputs(hub.load("vae")), _outputs(_codec(0).eval()))
    hub.load("other")
    _register("vae", "b.safetensors", sha256=sha_b, overwrite=True)
    # its old codec no longer held, the other name's kept (mutation round, audit 374: the outputs alone held with the
    # old codec kept and the other one dropped: the cache key holds the sha256)
    assert [key[0] for key in hub._loaded] == ["other"]
    assert torch.equal(_outputs(hub.load("vae")), _outputs(_codec(1).eval()))  # the new file, not the loaded old one


def test_every_load_by_name_is_a_distinct_copy_with_equal_weights(env):
    env.mkdir()
    sha = hub.save_checkpoint(_codec(), env / "vae.safetensors")
    _register("vae", "vae.safetensors", sha256=sha)
    codecs = [hub.load("vae") for _ in range(3)]
    assert len({id(c) for c in codecs}) == 3
    for c in codecs[1:]:
        assert c.state_dict().keys() == codecs[0].state_dict().keys()
        assert all(torch.equal(v, c.state_dict()[k]) for k, v in codecs[0].state_dict().items())
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(c.parameters(), codecs[0].parameters()))
    with torch.no_grad():  # changing one in place (or casting, moving it) leaves the later loads alone
        for c in codecs:
            for p in c.parameters():
                p.zero_()
    assert torch.equal(_outputs(hub.load("vae")), _outputs(_codec().eval()))


def test_a_corrupted_shipped_file_is_not_used(env, monkeypatch):
    shipped = hub._SHIPPED_DIR
    shipped.mkdir()
    (shipped / "good.safetensors").write_bytes(GOOD[:-1] + bytes([GOOD[-1] ^ 1]))  # one bit flipped
    # the shipped registry's other entries (other files, other sha256s) do not make it "another file than ...'s"
    other = {"file": "other.safetensors", "sha256": "1" * 64, "size": len(GOOD), "config": CONFIG}
    (shipped / "registry.json").write_text(json.dumps({"checkpoints": {"other": other}}))
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"shipped .*good.safetensors is corrupted \(sha256 mismatch\)"):
        hub.fetch("good")
    monkeypatch.delenv("LATENT_TRANSFORMS_OFFLINE")
    path = hub.fetch("good")  # a verified download instead
    assert path == env / "good.safetensors" and path.read_bytes() == GOOD
    assert _Handler.counts["good.safetensors"] == 1


def test_an_unusable_shipped_copy_is_named_in_the_error(env, monkeypatch):
    """A directory where the shipped file should be is said, as for the cached copy (the message said only where
    it had looked)."""
    (hub._SHIPPED_DIR / "good.safetensors").mkdir(parents=True)
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"; shipped \S+good.safetensors is a directory, not the file"):
        hub.fetch("good")


def test_a_shipped_name_registered_again_with_another_sha256_is_not_called_a_corrupted_shipped_file(env, monkeypatch):
    hub._SHIPPED_DIR.mkdir()
    (hub._SHIPPED_DIR / "good.safetensors").write_bytes(GOOD)  # intact
    entry = {"file": "good.safetensors", "sha256": SHA_GOOD, "size": len(GOOD), "config": CONFIG}
    (hub._SHIPPED_DIR / "registry.json").write_text(json.dumps({"checkpoints": {"good": entry}}))
    assert hub.fetch("good") == hub._SHIPPED_DIR / "good.safetensors"
    _register("good", "good.safetensors", sha256="0" * 64, overwrite=True)  # in-process: allowed
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    with pytest.raises(hub.HubError, match=r"shipped .*good.safetensors is another file than 'good''s entry names "
                                           r"\(the shipped registry gives it another sha256: was 'good' registered "
                                           r"again, with overwrite=True\?\); "):  # was "is corrupted"
        hub.fetch("good")
    assert hub.unregister("good")["sha256"] == "0" * 64  # undone (was refused: "a shipped checkpoint")
    assert hub.fetch("good") == hub._SHIPPED_DIR / "good.safetensors"
    with pytest.raises(ValueError, match="'good' is a shipped checkpoint; only names you registered can be removed"):
        hub.unregister("good")
    assert set(hub.__all__) >= {"register", "unregister", "fetch", "load"}


def test_downloaded_files_get_the_umask_permissions(env):
    _register("good", "good.safetensors")
    path = hub.fetch("good")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~hub._UMASK  # not mkstemp's 0600


def _record_fsync_and_replace(monkeypatch) -> list[tuple[str, object]]:
    """The ``("fsync", size of the file)`` and ``("replace", destination name)`` calls hub makes, in order."""
    events, real_fsync, real_replace = [], os.fsync, os.replace
    monkeypatch.setattr(hub.os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_size)) or real_fsync(fd))
    monkeypatch.setattr(hub.os, "replace", lambda a, b: events.append(("replace", Path(b).name)) or real_replace(a, b))
    return events


def test_an_atomic_write_is_on_disk_before_its_rename(tmp_path, monkeypatch):
    """A crash between an unsynced write and its rename could leave an empty checkpoint or training state."""
    events = _record_fsync_and_replace(monkeypatch)
    with hub.atomic_path(tmp_path / "a.json") as tmp:
        Path(tmp).write_text("{}")
    assert events == [("fsync", 2), ("replace", "a.json")] and (tmp_path / "a.json").read_text() == "{}"


@pytest.mark.skipif(os.name == "nt", reason="a symbolic link takes a privilege on Windows")
@pytest.mark.parametrize("when", ["in the block", "in the block, by a file", "during the flush"])
def test_a_temp_file_swapped_for_a_link_does_not_chmod_the_links_target(tmp_path, monkeypatch, when):
    """Audit 429: the temp file was flushed and given its permissions by name, after its descriptor was closed. Someone
    who can write the folder (a shared output folder, a cache dir they made) could swap it for a link to a file of
    yours meanwhile (inotify tells them when the .part appears): its target was made 0666 minus the umask (a private
    key, 0600, readable by all) and the link renamed into place. The file made is now held open to the end, so its
    name must still be it (not a link, nor another file: its inode cannot be reused meanwhile), and it is flushed and
    given its permissions through that descriptor."""
    secret = tmp_path / "id_rsa"
    secret.write_text("KEY")
    secret.chmod(0o400)
    dest = tmp_path / "run.json"

    def swap() -> None:
        (part,) = tmp_path.glob(".run.json.*.part")
        part.unlink()
        if when.endswith("by a file"):  # theirs, renamed into place as yours
            part.write_text("theirs")
        else:
            part.symlink_to(secret)

    if when == "during the flush":  # the race after the temp file is opened again: too late to refuse
        real_fsync = os.fsync
        monkeypatch.setattr(hub.os, "fsync", lambda fd: swap() or real_fsync(fd))
        with hub.atomic_path(dest) as tmp:
            Path(tmp).write_text("{}")
    else:
        with pytest.raises(OSError, match=rf"^\[Errno \d+\] its temporary file was replaced by another file or a "
                                          rf"link: by the block \(.*\) or by someone else \(can others write to "
                                          rf"{re.escape(str(tmp_path))}\?\): {re.escape(repr(str(dest)))}$"):
            with hub.atomic_path(dest) as tmp:
                Path(tmp).write_text("{}")
                swap()
        assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["id_rsa"]  # the swapped one too
    assert secret.stat().st_mode & 0o777 == 0o400 and secret.read_text() == "KEY"


@pytest.mark.skipif(os.name == "nt", reason="a symbolic link takes a privilege on Windows")
def test_a_temp_file_swapped_for_a_link_to_itself_is_refused(tmp_path):
    """Mutation round (audit 433): the name is checked without following a link. Followed, a link to the file made
    itself (through another name of it, or /proc/PID/fd/N, which is the file in the process that reads the link) was
    found to be the file made, and the link was renamed into place: ``path`` a link of theirs."""
    dest = tmp_path / "run.json"
    with pytest.raises(OSError, match=r"^\[Errno \d+\] its temporary file was replaced by another file or a link: "):
        with hub.atomic_path(dest) as tmp:
            Path(tmp).write_text("{}")
            os.link(tmp, tmp_path / "other")
            os.unlink(tmp)
            os.symlink(tmp_path / "other", tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]  # neither run.json nor the link


def test_a_block_that_renames_a_file_over_the_temp_file_is_refused_naming_that(tmp_path):
    """Audit 433: safetensors' save_file (0.8) writes a file of its own beside the path it is given and renames it
    over it, as do other atomic writers: the temp file replaced, the error said only that others may write the folder.
    It names the block's writer too."""
    def renaming_writer(path: str) -> None:  # as save_file writes
        Path(f"{path}.new").write_text("{}")
        os.replace(f"{path}.new", path)

    dest = tmp_path / "w.json"
    with pytest.raises(OSError, match=r"replaced by another file or a link: by the block \(write it in place; a writer "
                                      r"that renames a file of its own over it, as safetensors' save_file does, is "
                                      r"refused\) or by someone else"):
        with hub.atomic_path(dest) as tmp:
            renaming_writer(tmp)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd to count open descriptors")
def test_an_atomic_write_closes_the_descriptors_it_opened(tmp_path):
    """Mutation round (audit 433): the temp file is held open to the end (audit 429); that second descriptor was not
    checked to be closed, written or refused (a process writing its registry or checkpoints for long would run out)."""
    open_before = len(os.listdir("/proc/self/fd"))
    with hub.atomic_path(tmp_path / "a.json") as tmp:
        Path(tmp).write_text("{}")
    with pytest.raises(OSError, match="replaced by another file"):
        with hub.atomic_path(tmp_path / "b.json") as tmp:
            os.unlink(tmp)
            Path(tmp).write_text("{}")
    assert len(os.listdir("/proc/self/fd")) == open_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_download_is_on_disk_before_its_rename(env, monkeypatch):
    # it was renamed unsynced: after a power loss the cached name could hold an empty file (offline: unusable)
    events = _record_fsync_and_replace(monkeypatch)
    _register("good", "good.safetensors")
    assert hub.fetch("good").read_bytes() == GOOD
    assert events == [("fsync", len(GOOD)), ("replace", "good.safetensors")]


def test_a_failed_atomic_write_leaves_neither_the_file_nor_a_part(tmp_path, monkeypatch):
    # the block fails: nothing at the destination and no hidden .part beside it
    with pytest.raises(RuntimeError, match="disk full"):
        with hub.atomic_path(tmp_path / "a.safetensors") as tmp:
            Path(tmp).write_bytes(b"half a file")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    # the same through save_checkpoint, failing at the rename
    torch.manual_seed(0)
    codec = build_codec(CONFIG)

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub.os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        hub.save_checkpoint(codec, tmp_path / "b.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_that_fails_names_the_folder_or_the_file_not_its_temp_file(tmp_path, monkeypatch):
    # the temp file could not be made (its folder is a file; as root a read-only folder would not refuse it): the
    # error named the random ".run.json.XXXXXXXX.part" in it, as did a refused rename
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(NotADirectoryError) as e:
        with hub.atomic_path(blocker / "run.json"):
            pass
    assert str(e.value) == f"[Errno {errno.ENOTDIR}] {os.strerror(errno.ENOTDIR)}: {str(blocker)!r}"
    monkeypatch.setattr(hub.os, "replace", _rename_refused(errno.EROFS))
    with pytest.raises(OSError) as e:
        with hub.atomic_path(tmp_path / "run.json") as tmp:
            Path(tmp).write_text("{}")
    assert str(e.value) == f"[Errno {errno.EROFS}] {os.strerror(errno.EROFS)}: {str(tmp_path / 'run.json')!r}"
    assert list(tmp_path.iterdir()) == [blocker]


def test_an_atomic_write_on_a_full_disk_names_its_file(tmp_path, monkeypatch):
    # NFS may report the full disk only at the flush, whose OSError names no file: "[Errno 28] No space left on device"
    _full_disk(monkeypatch, "fsync")
    with pytest.raises(OSError) as e:
        with hub.atomic_path(tmp_path / "run.json") as tmp:
            Path(tmp).write_text("{}")
    assert str(e.value) == f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}: {str(tmp_path / 'run.json')!r}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, names_temp", [(errno.ENOSPC, False), (errno.EDQUOT, False), (errno.EACCES, True)])
def test_an_atomic_write_whose_block_fails_names_its_file_not_the_temp_file(tmp_path, code, names_temp):
    # the caller's own write: a full disk named no file ("[Errno 28] No space left on device"), a refused open of
    # the temp file (a PNG saved to it by name) named the hidden ".run.json.XXXXXXXX.part"
    dest = tmp_path / "run.json"
    with pytest.raises(OSError) as e:
        with hub.atomic_path(dest) as tmp:
            Path(tmp).write_text("{")
            raise OSError(code, os.strerror(code), *([tmp] if names_temp else []))
    assert str(e.value) == f"[Errno {code}] {os.strerror(code)}: {str(dest)!r}" and list(tmp_path.iterdir()) == []
    # an error about another file, or naming none and not about room, is the block's as it was raised
    for other in (OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(tmp_path / "source")),
                  OSError(errno.EIO, os.strerror(errno.EIO))):
        before = str(other)
        with pytest.raises(OSError) as e:
            with hub.atomic_path(dest):
                raise other
        assert e.value is other and str(other) == before
    assert list(tmp_path.iterdir()) == []


def test_a_safetensors_write_on_a_full_disk_says_how_many_bytes_it_needs(tmp_path, monkeypatch):
    # a training state or latent cache on a full disk said "cannot write PATH (No space left on device)" alone, where
    # a download into the cache dir says what the file needs
    tensors, metadata = {"w": torch.zeros(3, 5), "b": torch.ones(7, dtype=torch.int64)}, {"format": "x"}
    hub.write_safetensors(tmp_path / "room.safetensors", tensors, metadata)
    size = (tmp_path / "room.safetensors").stat().st_size
    _full_disk(monkeypatch, "write", errno.EDQUOT)
    with pytest.raises(OSError) as e:
        hub.write_safetensors(tmp_path / "full.safetensors", tensors, metadata)
    assert str(e.value) == (f"[Errno {errno.EDQUOT}] cannot write {tmp_path / 'full.safetensors'} "
                            f"({os.strerror(errno.EDQUOT)}): full.safetensors needs {size} bytes")
    assert [p.name for p in tmp_path.iterdir()] == ["room.safetensors"]


def test_the_temp_file_of_an_atomic_write_is_what_the_sweep_of_abandoned_parts_removes(tmp_path):
    """A process killed mid-write (SIGKILL, an unhandled SIGTERM) leaves its temp file: downloads and the registry's
    writes share atomic_path's, whose name the sweep must match, within 15 bytes more than the file's name."""
    dest = tmp_path / "good.safetensors"
    with pytest.raises(FileNotFoundError):  # the rename of the removed temp file
        with hub.atomic_path(dest) as tmp:
            assert len(Path(tmp).name.encode()) == len(dest.name.encode()) + 15  # _MAX_FILENAME_BYTES counts on it
            hub.remove_abandoned_parts(dest)
            assert Path(tmp).exists()  # a write in progress
            os.utime(tmp, (time.time() - 7200, time.time() - 7200))  # as one abandoned two hours ago
            hub.remove_abandoned_parts(dest)
            assert not Path(tmp).exists()
    assert list(tmp_path.iterdir()) == []


def test_a_part_younger_than_twice_a_long_timeout_is_kept(tmp_path, monkeypatch):
    # with a 2-hour read timeout a live download may be silent for 2 hours: its 2-hour-old .part must stay
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_TIMEOUT", "7200")
    dest = tmp_path / "good.safetensors"
    live, old = tmp_path / ".good.safetensors.l1v3.part", tmp_path / ".good.safetensors.k1ll3d.part"
    for part, age in ((live, 7200), (old, 5 * 3600)):
        part.write_bytes(b"partial")
        os.utime(part, (time.time() - age, time.time() - age))
    hub.remove_abandoned_parts(dest)
    assert live.exists() and not old.exists()


def test_a_part_younger_than_an_hour_is_kept_under_the_default_timeout(tmp_path, monkeypatch):
    """A download may stall for a while and go on: an abandoned part is one untouched for an hour at least, even
    with a read timeout of a minute, and not much longer (mutation round, audit 374: 2 hours held with a 2-hour-old
    part)."""
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_TIMEOUT", raising=False)
    dest = tmp_path / "good.safetensors"
    recent, old = tmp_path / ".good.safetensors.r3c3nt.part", tmp_path / ".good.safetensors.k1ll3d.part"
    for part, age in ((recent, 1800), (old, 5400)):
        part.write_bytes(b"partial")
        os.utime(part, (time.time() - age, time.time() - age))
    hub.remove_abandoned_parts(dest)
    assert recent.exists() and not old.exists()


def test_a_part_of_any_age_is_removed_where_no_writer_can_be_alive(tmp_path, monkeypatch):
    """``min_age_s=0`` (a train run holding its lock): a part written this very moment is abandoned too, on a file
    system whose clock ticks in whole seconds (mutation round, audit 409: one as old as the cutoff was kept)."""
    dest = tmp_path / "glow.state.safetensors"
    part = tmp_path / ".glow.state.safetensors.k1ll3d.part"
    part.write_bytes(b"half")
    os.utime(part, (1e9, 1e9))
    monkeypatch.setattr(time, "time", lambda: 1e9)  # now, to the second
    hub.remove_abandoned_parts(dest, min_age_s=3600)
    assert part.exists()
    hub.remove_abandoned_parts(dest, min_age_s=0)
    assert not part.exists()


def test_an_abandoned_part_of_a_file_whose_name_has_glob_characters_is_removed(tmp_path):
    """A registry file name may hold [ ] * ?: its parts are matched by name, not as a pattern."""
    dest = tmp_path / "vae[8x8].safetensors"
    old = tmp_path / ".vae[8x8].safetensors.k1ll3d.part"
    other = tmp_path / ".vae8.safetensors.k1ll3d.part"  # what the unescaped pattern [8x8] matches instead
    for part in (old, other):
        part.write_bytes(b"partial")
        os.utime(part, (time.time() - 7200, time.time() - 7200))
    hub.remove_abandoned_parts(dest)
    assert not old.exists() and other.exists()


def test_a_weight_stored_as_integers_is_refused(tmp_path):
    torch.manual_seed(0)
    sd = {k: v.contiguous() for k, v in build_codec(CONFIG).state_dict().items()}
    first = next(iter(sd))
    sd[first] = sd[first].round().to(torch.int32)
    path = tmp_path / "int.safetensors"
    save_file(sd, str(path), metadata={"config": json.dumps(CONFIG), "format": hub.FORMAT})
    with pytest.raises(ValueError, match=rf"tensor {first} has dtype torch.int32, the codec expects torch.float32"):
        hub.load_checkpoint(path)


def test_list_checkpoints_does_not_call_a_file_of_the_wrong_size_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "_registered", {})
    monkeypatch.setattr(hub, "_SHIPPED_DIR", tmp_path / "shipped")
    hub.register("sized", file="sized.safetensors", sha256="0" * 64, config=CONFIG, size=3000)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "sized.safetensors").write_bytes(b"x" * 1000)  # an interrupted copy
    assert [r["cached"] for r in hub.list_checkpoints() if r["name"] == "sized"] == [False]
    (tmp_path / "cache" / "sized.safetensors").write_bytes(b"x" * 3000)
    assert [r["cached"] for r in hub.list_checkpoints() if r["name"] == "sized"] == [True]


def test_save_checkpoint_refuses_a_path_without_the_safetensors_suffix(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"checkpoint path must end in .safetensors, got '.*codec.pt'"):
        hub.save_checkpoint(build_codec(CONFIG), tmp_path / "codec.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_whose_config_cannot_build_a_codec_is_named(tmp_path):
    """build_codec's error did not say which file: 'hidden must be a positive int, got 0'."""
    g = _codec()
    path = _write_raw(tmp_path / "bad.safetensors", {k: v.clone() for k, v in g.state_dict().items()},
                      {"format": hub.FORMAT, "config": json.dumps({**g.config, "hidden": 0})})
    with pytest.raises(ValueError, match=r"bad.safetensors: its config cannot build a codec \(hidden must be"):
        hub.load_checkpoint(path)


def test_a_checkpoint_whose_config_is_nested_too_deep_is_named(tmp_path):
    """Found by fuzzing (audit 167): JSON arrays nested 100,000 deep in a file's config gave Python's RecursionError
    (the registry files' reader already named it)."""
    g = _codec()
    path = _write_raw(tmp_path / "deep.safetensors", {k: v.clone() for k, v in g.state_dict().items()},
                      {"format": hub.FORMAT, "config": "[" * 100_000 + "]" * 100_000})
    with pytest.raises(ValueError, match=r"deep.safetensors has no valid JSON 'config' in its metadata \(maximum "
                                         r"recursion depth exceeded"):
        hub.load_checkpoint(path)


def test_a_checkpoint_whose_config_holds_a_5000_digit_int_is_named(tmp_path):
    """Python refuses to read an int of over 4,300 digits with a plain ValueError (not a JSONDecodeError): it came out
    without the file's name."""
    path = _write_raw(tmp_path / "digits.safetensors", {k: v.clone() for k, v in _codec().state_dict().items()},
                      {"format": hub.FORMAT, "config": '{"kind": "vae", "hidden": ' + "9" * 5000 + "}"})
    # Python 3.10 says "the limit (4300) for", 3.11 on "the limit (4300 digits) for"
    with pytest.raises(ValueError, match=r"digits.safetensors has no valid JSON 'config' in its metadata \(Exceeds "
                                         r"the limit \(4300[ )]"):
        hub.load_checkpoint(path)


@pytest.mark.parametrize("name, change", [
    ("vae-digits", {"hidden": 512}),  # 60x the file's weights: it was built (~25 MB), then refused for its shapes
    ("glow-digits", {"hidden": 10**6}),  # 10^12 weights: it asked the allocator for 4 TB
    ("glow-digits", {"steps": 10**7}),  # ~10^11 weights: it built blocks until memory ran out
])
def test_a_config_far_larger_than_the_files_weights_is_refused_before_it_is_built(tmp_path, name, change):
    sd = hub.load(name).state_dict()
    config = {**hub.load(name).config, **change}
    path = _write_raw(tmp_path / "big.safetensors", {k: v.clone() for k, v in sd.items()},
                      {"format": hub.FORMAT, "config": json.dumps(config)})
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"big.safetensors: its config describes a codec of more than [\d,]+ weights, "
                                         r"but the file holds [\d,]+: config and tensors do not belong together"):
        hub.load_checkpoint(path)
    assert torch.equal(torch.get_rng_state(), state)


def test_load_names_a_bad_argument_and_suggests_a_near_name(env):
    with pytest.raises(TypeError, match="name_or_path must be a checkpoint name or a .safetensors path, got NoneType"):
        hub.load(None)
    with pytest.raises(ValueError, match="name_or_path is empty"):  # was "IsADirectoryError: . is a directory"
        hub.load("")
    _register("glow-cifar10", "glow-cifar10.safetensors")
    # the second had no suggestion (the match was case-sensitive); the third is difflib's 0.74 of the name, near
    # by hub's cutoff (0.6) but not by the misspelled setting's (0.8): mutation round 33 (audit 239)
    for near in ("glow-cifar", "Glow-CIFAR10", "cifar10"):
        with pytest.raises(hub.UnknownCheckpointError, match="did you mean 'glow-cifar10'"):
            hub.load(near)
    with pytest.raises(hub.UnknownCheckpointError, match="; known checkpoints: glow-cifar10"):
        hub.load("something-else")
    with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N, got 'bogus'"):  # was torch's RuntimeError
        hub.load("glow-cifar10", device="bogus")


def test_loading_on_the_meta_device_is_refused_before_anything_is_read(env, tmp_path):
    # the codec came back with meta weights (the file's were dropped), and its first encode failed in autocast
    path = tmp_path / "vae.safetensors"
    hub.save_checkpoint(_codec(), path)
    _register("vae", "vae.safetensors")  # neither cached nor served: refused before any download
    message = "device 'meta' holds shapes, not values: a checkpoint loaded there would lose its weights; load on cpu"
    for call in (lambda: hub.load(path, device="meta"), lambda: hub.load("vae", device=torch.device("meta")),
                 lambda: hub.load_checkpoint(path, "meta")):
        with pytest.raises(ValueError, match=message):
            call()
    assert "vae.safetensors" not in _Handler.counts


def test_a_user_registry_with_a_byte_order_mark_is_read(env):
    # as some Windows editors save it: "is not valid JSON (Unexpected UTF-8 BOM ...)"
    env.mkdir()
    entry = {"file": "good.safetensors", "sha256": SHA_GOOD, "config": CONFIG}
    (env / "registry.json").write_text("\ufeff" + json.dumps({"checkpoints": {"mine": entry}}), encoding="utf-8")
    assert hub.fetch("mine").read_bytes() == GOOD


def test_register_refuses_flags_that_are_not_bools(env, tmp_path):
    """persist="no" wrote the user registry (any value was taken as true)."""
    for flag in ("persist", "overwrite"):
        with pytest.raises(TypeError, match=f"{flag} must be True or False"):
            _register("x", "x.safetensors", **{flag: "no"})
    with pytest.raises(TypeError, match="config and quality must be dicts"):
        hub.register("x", file="x.safetensors", sha256=SHA_GOOD, config=None)
    # register_run's too (mutation round, audit 374: 0 was taken as False, "no" failed only after the copy)
    with pytest.raises(TypeError, match="overwrite must be True or False, got 0"):
        hub.register_run(_run_json(tmp_path), overwrite=0)
    assert not env.exists()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["glow-digits", "vae-digits"])
def test_a_codec_loaded_under_another_default_dtype_is_float32(monkeypatch, name, dtype):
    # float64: it was built with float64 weights, and hub.load cached that copy for every later call; 16 bits: a
    # Glow could not be built at all ("geqrf_cpu" not implemented for 'BFloat16', in normflows' init)
    from conftest import default_dtype
    monkeypatch.setattr(hub, "_loaded", {})
    with default_dtype(dtype):
        first = hub.load(name)
    later = hub.load(name)
    for codec in (first, later):
        assert {t.dtype for t in [*codec.parameters(), *codec.buffers()] if t.is_floating_point()} == {torch.float32}
    x, ref = torch.rand(4, *first.image_shape), hub.load_checkpoint(hub.fetch(name))
    with torch.no_grad():
        assert torch.equal(first.decode(first.encode(x)), ref.decode(ref.encode(x)))


def _own_kind(monkeypatch, kind: str, init: Callable[[Codec], object]) -> type[Codec]:
    """A codec class of one's own, added to ``CODECS`` as ``kind`` for the test: conftest's ``OwnCodec``, then
    ``init(codec)``, with the config ``{"kind": kind}``."""
    from conftest import OwnCodec
    from latent_transforms import codecs

    class Own(OwnCodec):
        def __init__(self):
            super().__init__()
            init(self)

        @property
        def config(self):
            return {"kind": kind}

    monkeypatch.setitem(codecs.CODECS, kind, Own)
    return Own


def test_a_codec_class_of_ones_own_that_makes_float64_weights_loads_in_float32(tmp_path, monkeypatch):
    # build_codec builds its own kinds in float32; a class added to CODECS may make float64 weights whatever the
    # default dtype: load_checkpoint casts them to float32, the dtype a checkpoint's weights are loaded in
    Float64Codec = _own_kind(monkeypatch, "float64-own", lambda codec: codec.double())
    saved = Float64Codec()
    hub.save_checkpoint(saved, tmp_path / "own.safetensors")
    loaded = hub.load_checkpoint(tmp_path / "own.safetensors")
    assert loaded.dtype == torch.float32 and not any(t.dtype == torch.float64 for t in loaded.state_dict().values())
    assert torch.equal(loaded.enc.weight, saved.enc.weight.float())


def test_a_codec_class_of_ones_own_with_an_integer_buffer_loads_it_as_saved(tmp_path, monkeypatch):
    # the shipped kinds hold float tensors only: an int64 buffer (a step counter) of the dtype the codec expects loads
    CountingCodec = _own_kind(monkeypatch, "counting-own",
                              lambda codec: codec.register_buffer("steps", torch.zeros((), dtype=torch.int64)))
    saved = CountingCodec()
    saved.steps.fill_(1234)
    hub.save_checkpoint(saved, tmp_path / "own.safetensors")
    loaded = hub.load_checkpoint(tmp_path / "own.safetensors")
    assert loaded.steps.dtype == torch.int64 and int(loaded.steps) == 1234
    assert torch.equal(loaded.enc.weight, saved.enc.weight)


def test_a_codec_class_of_ones_own_built_with_a_factory_the_meta_device_refuses_loads(tmp_path, monkeypatch):
    # load_checkpoint sizes each factory call of the build on the meta device first; torch.normal(mean_tensor, std)
    # takes no device there (a TypeError): that call is made as it is, not refused
    NormalInitCodec = _own_kind(monkeypatch, "normal-init-own", lambda codec: setattr(
        codec, "shift", torch.nn.Parameter(torch.normal(torch.zeros(4), 0.02))))
    saved = NormalInitCodec()
    hub.save_checkpoint(saved, tmp_path / "own.safetensors")
    assert torch.equal(hub.load_checkpoint(tmp_path / "own.safetensors").shift, saved.shift)


def test_loading_a_runs_json_says_which_file_to_load(tmp_path):
    # "is not a safetensors file (Error while deserializing header: header too large)" for the JSON beside it
    (tmp_path / "my runs").mkdir()
    run = tmp_path / "my runs" / "my-flow.json"
    run.write_text(json.dumps({"name": "my-flow", "registry_entry": {"file": "my-flow.safetensors"}}))
    beside = re.escape(str(run.with_suffix(".safetensors")))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(run))} is the JSON report of a `latent-transforms train` "
                                         rf"run, not a checkpoint; load {beside} beside it, or `([^`]+)`") as e:
        hub.load(str(run))
    command = re.search(r"beside it, or `([^`]+)`", str(e.value))[1]
    assert shlex.split(command) == ["latent-transforms", "register", str(run)]  # the space quoted for the shell
    other = tmp_path / "other.json"
    for text in ("[1, 2]", "[" * 100_000 + "]" * 100_000):  # nested 100,000 deep: a RecursionError (audit 167)
        other.write_text(text)
        with pytest.raises(ValueError, match="is not a safetensors file"):
            hub.load_checkpoint(other)


@pytest.mark.parametrize("file, status", [("missing.safetensors", 404), ("error.safetensors", 500)])
def test_a_failed_download_still_names_the_bad_cached_copy(env, server, file, status):
    """The 404 of the re-download was reported alone: the corrupted cached copy that made it necessary went unsaid.
    Mutation round 41 (audit 292): after a 500 too, and its "register it again" hint stays (only the copy hint goes
    when the server answered)."""
    _register("x", file)
    env.mkdir()
    (env / file).write_bytes(BAD)
    with pytest.raises(hub.HubError, match=rf"{file} failed: HTTP {status}.*; and cached .*{file} does not match the "
                                           rf"registry .*; saved again after it was registered\? register it again"):
        hub.fetch("x")


def test_a_name_registered_again_by_another_process_is_read_again(env):
    """The in-process codec cache is keyed by the registered sha256 too: a name another process registered again
    (its user registry entry replaced, this process's runtime registry untouched) loads the new file."""
    env.mkdir()
    sha_a = hub.save_checkpoint(_codec(0), env / "a.safetensors")
    sha_b = hub.save_checkpoint(_codec(1), env / "b.safetensors")
    entry = {"file": "a.safetensors", "sha256": sha_a, "size": None, "config": CONFIG, "trained_on": "test",
             "quality": {}, "notes": ""}
    hub._persist("vae", entry, overwrite=False)  # what `register --persist` writes, from another process
    assert torch.equal(_outputs(hub.load("vae")), _outputs(_codec(0).eval()))
    hub._persist("vae", {**entry, "file": "b.safetensors", "sha256": sha_b}, overwrite=True)
    assert torch.equal(_outputs(hub.load("vae")), _outputs(_codec(1).eval()))
    assert [key[2] for key in hub._loaded] == [sha_b]  # the name's earlier codec is not kept for the process's life


def test_a_registry_file_name_with_dot_dot_is_refused(env):
    """A registry file name is a plain name: no path separators, no '..' anywhere, no leading '.'."""
    with pytest.raises(ValueError, match=r"'a\.\.b\.safetensors' is not a plain file name"):
        _register("a", "a..b.safetensors")


@pytest.mark.parametrize("value", ["true", "YES", " on ", "True"])
def test_every_documented_spelling_of_offline_forbids_downloads(env, monkeypatch, value):
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", value)
    with pytest.raises(hub.HubError, match=r"not available offline \(LATENT_TRANSFORMS_OFFLINE is set\)"):
        hub.fetch("good")
    assert "good.safetensors" not in _Handler.counts
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "0")  # 0, false, no, off or empty: downloads allowed
    assert hub.fetch("good").read_bytes() == GOOD


@pytest.mark.parametrize("value", ["y", "2", "enabled", "offline"])
def test_a_value_of_offline_that_is_neither_spelling_is_refused_not_read_as_online(env, monkeypatch, value):
    """docs/hub.md: ``1`` (or true, yes, on) forbids downloads. Any other value read as "online" (audit 388:
    LATENT_TRANSFORMS_OFFLINE=y downloaded on a compute node meant to stay offline); it is refused as
    LATENT_TRANSFORMS_HUB_TIMEOUT's is, and the "online" spellings still download."""
    _register("good", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", value)
    with pytest.raises(ValueError, match=rf"^LATENT_TRANSFORMS_OFFLINE must be 1, true, yes or on \(offline\) or 0, "
                                         rf"false, no, off or empty \(online\), got '{value}'$"):
        hub.fetch("good")
    assert "good.safetensors" not in _Handler.counts
    with pytest.raises(ValueError, match="^LATENT_TRANSFORMS_OFFLINE must be "):  # before anything is registered
        _register("other", "other.safetensors", persist=True)
    assert "other" not in {e["name"] for e in hub.list_checkpoints()} and not hub.user_registry_path().exists()
    for online in ("", "false", " Off ", "NO"):
        monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", online)
        assert hub.fetch("good").read_bytes() == GOOD


def test_the_offline_error_says_how_to_fetch_the_checkpoint_beforehand(env, server, monkeypatch):
    """A compute node without network: the error named the checkpoint and where it looked, not how to get it there
    (fetch it on a node with network, into the same cache dir)."""
    _register("team vae", "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    fetch = r"fetch it beforehand where the network is reachable \(on a cluster, the login node\): `latent-transforms "
    fetch += rf"fetch 'team vae'` with LATENT_TRANSFORMS_HOME={re.escape(str(env))}"
    with pytest.raises(hub.HubError, match=rf"checkpoint 'team vae' is not available offline .*; {fetch}$"):
        hub.fetch("team vae")
    monkeypatch.delenv("LATENT_TRANSFORMS_HUB_URL")  # then that is needed too
    with pytest.raises(hub.HubError, match=rf"{fetch} and LATENT_TRANSFORMS_HUB_URL set to the URL that serves "
                                           rf"good\.safetensors$"):
        hub.load("team vae")
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", server)  # the command it gives, run with network,
    monkeypatch.delenv("LATENT_TRANSFORMS_OFFLINE")
    assert main(["fetch", "team vae"]) == 0
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")  # makes it available offline
    assert hub.fetch("team vae").read_bytes() == GOOD


def test_the_offline_errors_command_is_quoted_for_the_shell_and_names_no_unusable_url(env, monkeypatch):
    """Mutation round 32 (audit 238): a name may hold any printable character; the command the offline error gives is
    quoted as a shell reads it (``repr`` would leave ``$`` to the shell's expansion), and offline, the hub URL is not
    read: a stale one left in the environment does not turn the offline error into one about the URL. The cache dir
    is quoted too: with a space in it, the command that was copied set LATENT_TRANSFORMS_HOME to its first word."""
    name = "bob's $VAE"
    home = env.parent / "my cache"
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(home))
    _register(name, "good.safetensors")
    monkeypatch.setenv("LATENT_TRANSFORMS_OFFLINE", "1")
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "ftp://old-mirror/ckpts")  # a scheme the hub does not serve
    with pytest.raises(hub.HubError, match=r"not available offline .*: `latent-transforms fetch ") as e:
        hub.fetch(name)
    command, setting = re.search(r"`(latent-transforms fetch .*)` with (LATENT_TRANSFORMS_HOME=.*)$",
                                 str(e.value)).groups()
    assert shlex.split(f"{setting} {command}") == [f"LATENT_TRANSFORMS_HOME={home}", "latent-transforms", "fetch", name]


@needs_source_tree
def test_a_shared_cache_and_ones_own_together_as_the_hub_page_says(env, tmp_path, monkeypatch):
    """docs/hub.md (On a cluster): the admin's read-only cache dir as the hub URL, its names copied into one's own
    user registry by the page's script (run twice: the admin added a name since), one's own names kept; every name
    then loads from one's own cache dir, and nothing in the admin's changes."""
    shared = tmp_path / "shared"
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(shared))  # the admin fills it
    shared.mkdir()
    sha = hub.save_checkpoint(_codec(1), shared / "team-vae.safetensors")
    hub.register("team-vae", file="team-vae.safetensors", sha256=sha, config=_codec(1).config, persist=True)
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(env))  # the user's
    monkeypatch.setattr(hub, "_registered", {})
    _register("mine", "good.safetensors", persist=True)
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", shared.as_uri())
    page = (ROOT / "docs" / "hub.md").read_text(encoding="utf-8")
    script = re.search(r"python - <<'EOF'\n(.*?)^EOF$", page, re.S | re.M).group(1)
    script = script.replace("/shared/latent-transforms", str(shared))
    exec(script, {})
    hub.save_checkpoint(_codec(2), shared / "team-vae2.safetensors")  # later, the admin adds a name
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(shared))
    hub.register("team-vae2", file="team-vae2.safetensors", sha256=hub.sha256_file(shared / "team-vae2.safetensors"),
                 config=_codec(2).config, persist=True)
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", str(env))
    admin = {p.name: p.stat().st_mtime_ns for p in shared.iterdir()}
    monkeypatch.setattr(hub, "_registered", {})  # a new process
    exec(script, {})
    assert sorted(json.loads((env / "registry.json").read_text())["checkpoints"]) == ["mine", "team-vae", "team-vae2"]
    for name, seed in (("team-vae", 1), ("team-vae2", 2)):
        assert torch.equal(_outputs(hub.load(name)), _outputs(_codec(seed).eval()))
        assert hub.fetch(name) == env / f"{name}.safetensors"
    assert {p.name: p.stat().st_mtime_ns for p in shared.iterdir()} == admin


def test_an_undecodable_user_registry_is_named_in_the_error(env):
    env.mkdir()
    path = env / "registry.json"
    path.write_bytes(b'{"checkpoints": {"\xff": 1}}')  # a registry saved in Latin-1
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))} is not valid JSON \("):
        hub.load("x")
    with pytest.warns(UserWarning, match=rf"^{re.escape(str(path))} is not valid JSON .*left out"):
        assert hub.list_checkpoints() == []


def test_a_registry_entry_may_have_size_zero_but_not_below(env):
    _register("empty", "empty.safetensors", size=0)  # "a non-negative int (bytes)"
    assert hub._entry("empty")["size"] == 0
    with pytest.raises(ValueError, match="size must be a non-negative int"):
        _register("negative", "negative.safetensors", size=-1)


def test_list_shows_the_entry_this_process_registered_over_a_persisted_one(env):
    _register("a", "good.safetensors", persist=True)
    hub.register("a", file="good.safetensors", sha256="1" * 64, config=CONFIG, overwrite=True)  # this process only
    (row,) = hub.list_checkpoints()
    assert row["sha256"] == "1" * 64 == hub._entry("a")["sha256"]  # what load would verify, as list shows


def test_a_name_another_process_persisted_meanwhile_keeps_its_entry(env, monkeypatch):
    """register checks the name, then takes the cache dir's lock to write the user registry: a process that persisted
    the same name in between keeps its entry (the check made again under the lock), unless overwrite=True."""
    _register("theirs", "good.safetensors", persist=True)
    path = hub.user_registry_path()
    theirs = json.loads(path.read_text())["checkpoints"]["theirs"]
    make_cache_dir = hub._make_cache_dir

    def another_process_meanwhile(directory):
        make_cache_dir(directory)
        path.write_text(json.dumps({"checkpoints": {"theirs": theirs, "zz-both": theirs}}))

    monkeypatch.setattr(hub, "_make_cache_dir", another_process_meanwhile)
    with pytest.raises(ValueError, match=rf"^checkpoint 'zz-both' is already registered in {re.escape(str(path))}; "
                                         rf"pass overwrite=True to replace it$"):
        _register("zz-both", "good.safetensors", sha256="2" * 64, persist=True)
    assert json.loads(path.read_text())["checkpoints"]["zz-both"] == theirs and "zz-both" not in hub._registered
    _register("zz-both", "good.safetensors", sha256="2" * 64, persist=True, overwrite=True)
    assert json.loads(path.read_text())["checkpoints"]["zz-both"]["sha256"] == "2" * 64


def test_an_unknown_name_lists_the_known_ones_sorted(env):
    for name in ("zz-b", "zz-c", "zz-a"):
        _register(name, "good.safetensors")
    with pytest.raises(KeyError, match="known checkpoints: zz-a, zz-b, zz-c"):
        hub.load("nosuch")


def test_names_for_images_quietly_leave_out_an_unusable_user_registry(env, monkeypatch):
    """So does ``registry_for_messages``, which train's closing lines read (they read hub's private ``_registry``)."""
    hub._SHIPPED_DIR.mkdir()
    shipped = {"shipped": {"file": "shipped.safetensors", "sha256": SHA_GOOD, "config": CONFIG}}
    (hub._SHIPPED_DIR / "registry.json").write_text(json.dumps({"checkpoints": shipped}))
    _register("mine", "good.safetensors")  # this process's own: kept beside the shipped ones
    env.mkdir()
    (env / "registry.json").write_text("{not json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # for an error message: no warning of its own, whatever the caller's filters
        assert hub.names_for_images((1, 8, 8)) == ["mine", "shipped"]
        assert sorted(hub.registry_for_messages()) == ["mine", "shipped"]
    assert [str(w.message) for w in caught] == []
    assert hub.registry_for_messages(shipped_only=True) == shipped
    monkeypatch.setenv("LATENT_TRANSFORMS_HOME", "relative/cache")  # cache_dir() raises: the shipped ones still fit
    assert hub.names_for_images((1, 8, 8)) == ["shipped"] and hub.names_for_images((3, 8, 8)) == []
    assert hub.registry_for_messages() == shipped


def test_an_empty_timeout_setting_is_the_default(env, monkeypatch):
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_TIMEOUT", "")  # as `LATENT_TRANSFORMS_HUB_TIMEOUT= cmd` sets it
    _register("good", "good.safetensors")
    assert hub.fetch("good").read_bytes() == GOOD


def test_an_empty_hub_url_is_no_hub_url(env, monkeypatch):
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", "")  # was "unsupported scheme ''"
    _register("good", "good.safetensors")
    with pytest.raises(hub.HubError, match="set LATENT_TRANSFORMS_HUB_URL"):
        hub.fetch("good")


@pytest.mark.parametrize("base, url", [
    ("http://example.com/ckpts/", "http://example.com/ckpts/a%23b%20c.safetensors"),  # no "//" before the file
    ("https://example.com/ckpts", "https://example.com/ckpts/a%23b%20c.safetensors"),
    ("HTTPS://example.com/ckpts", "https://example.com/ckpts/a%23b%20c.safetensors"),
    ("file://localhost/srv/ckpts", "file://localhost/srv/ckpts/a%23b%20c.safetensors"),
])
def test_the_download_url_is_the_hub_url_and_the_quoted_file_name(monkeypatch, base, url):
    monkeypatch.setenv("LATENT_TRANSFORMS_HUB_URL", base)
    assert hub._remote_url("a#b c.safetensors") == url  # "#" unquoted made the rest of the name a fragment


def test_a_download_whose_file_another_process_put_in_place_and_holds_open_uses_that_file(env, monkeypatch):
    # Windows: no fcntl, so no lock keeps processes apart, and os.replace onto a file another process holds open
    # (reading the copy it downloaded first) is "PermissionError: [WinError 5] Access is denied": DDP ranks loading
    # one name at once failed, all but the first
    monkeypatch.setitem(sys.modules, "fcntl", None)  # import fcntl: ImportError, as on Windows
    _register("good", "good.safetensors")
    real_replace, held = os.replace, []

    there = [GOOD]  # what the other process put in place

    def replace_as_on_windows(src, dst):
        if Path(dst) == env / "good.safetensors":
            (env / "good.safetensors").write_bytes(there[0])  # the other process's file, in place first
            held.append(open(env / "good.safetensors", "rb"))  # and being read there
            raise PermissionError(13, "Access is denied", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_as_on_windows)
    try:
        assert hub.fetch("good").read_bytes() == GOOD
        (env / "good.safetensors").unlink()
        there[0] = BAD  # not the registered file: the failure stands, named as the cache dir's (not a raw error)
        with pytest.raises(hub.HubError, match=rf"^cannot write to the cache dir {re.escape(str(env))} \(Access is "
                                               rf"denied\); set LATENT_TRANSFORMS_HOME to a writable directory$"):
            hub.fetch("good")
    finally:
        for f in held:
            f.close()
    assert len(held) == 2 and _leftovers(env) == []
