"""JPEG decoders behind one small interface, and the choice of one per loader.

Each decoder turns a batch of stored JPEG streams (1-D uint8 numpy views into FFCV's batch
buffer) into pixels, on the current CUDA stream of the calling thread:

    decode(streams, sizes, regions, slot) -> list of images, None where a stream is refused

`sizes` is (N, 2) stored (height, width); `regions` is None (whole images) or (N, 4) boxes
(top, left, height, width) that a decoder with `regions = True` decodes exactly (the image it
returns is that box). An image is either a uint8 (3, H, W) tensor on the decoder's device (any
strides: nvImageCodec's HWC buffers come as .permute(2, 0, 1) views) or, for decoders that work on
the host, a uint8 (H, W, 3) numpy array that the caller uploads with its other host pixels.
`slot` names the caller's buffer set: a decoder may reuse the output buffers of a slot, which the
caller only hands back once the GPU has finished reading them. Every decoder has read the stream
bytes when decode() returns (the caller may then let FFCV reuse its buffer).

Backends, in the order 'auto' tries them on a CUDA device -- the order of what fed training
fastest on an H200 (bench/results/gpu_h200_issue21_22: ResNet-50 SGD at 90 % of the GPU-resident
ceiling fed by torchvision's decode + the crop kernel, 75 % fed by nvImageCodec's region decode,
which also took more of the GPU from the model):
- torchvision: torchvision's batched nvJPEG decode on the hardware JPEG engine (whole images;
  deprecated from 0.29 on in favour of TorchCodec, its warning silenced around our own call only).
- torchcodec: TorchCodec's batched nvJPEG decode (whole images), its successor (not measured yet).
- nvimgcodec: NVIDIA nvImageCodec (`pip install -e .[gpu]`), batched, on our stream, the hardware
  JPEG engines of A100/H100/H200 where the stream allows, region-of-interest decode of exactly the
  crop, output buffers reused per slot, zero-copy into torch (__cuda_array_interface__); chosen
  with --data.jpeg_decoder=nvimgcodec.
On a CPU device: 'cpu', FFCV's libjpeg-turbo (`ffcv.libffcv.imdecode`), which decodes a region
through a lossless crop of whole MCUs (decoded with a margin of one MCU so that chroma upsampling
at the box edges matches a whole-image decode exactly). On the CPU that transform costs more than
the pixels it saves; it is there so that CPU runs (CI) take the region path end to end.

'auto' prints one notice per process naming the decoder that runs and why the ones before it do
not. FFCV_CRAM_HIDE_DECODERS=nvimgcodec,torchcodec (comma-separated) makes those look absent
(tests, benchmarks). nvImageCodec 0.9.0 crashes or fails on GPU region decode (NVIDIA/nvImageCodec
issue 55, open; 0.8 works), so region decode is off for 0.9 unless FFCV_CRAM_NVIMGCODEC_REGIONS=1
(=0 turns it off for any version); the [gpu] extra pins 0.8. FFCV_CRAM_NVIMGCODEC_BACKENDS (e.g.
`hw_gpu_only` or `hw_gpu_only:0.75,hybrid_cpu_gpu`: BackendKind names in priority order, each with
an optional load hint) replaces nvImageCodec's backend list on the GPU, for benchmarks comparing
them (bench/bench_decode.py); the default is NVIMGCODEC_BACKENDS.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import io
import os
import sys
import tempfile
import warnings

import numpy as np
import torch

AUTO_ORDER = {"cuda": ("torchvision", "torchcodec", "nvimgcodec"), "cpu": ("cpu",)}
# nvImageCodec's backends on the GPU, in priority order: the hardware JPEG engine, then nvJPEG on
# the CUDA cores (GPU Huffman decode), then nvJPEG with Huffman decode on the CPU
NVIMGCODEC_BACKENDS = "hw_gpu_only,gpu_only,hybrid_cpu_gpu"
_BACKEND_KINDS = ("hw_gpu_only", "gpu_only", "hybrid_cpu_gpu", "cpu_only")
NVIMGCODEC_BACKENDS_ENV = "FFCV_CRAM_NVIMGCODEC_BACKENDS"
_REGION_BROKEN = ((0, 9),)  # nvImageCodec (major, minor) with broken GPU region decode
_NOTICES: set = set()
_TV_WARNING = "The image decoding and encoding capabilities of TorchVision are deprecated"
_LABELS = {"nvimgcodec": "nvImageCodec", "torchcodec": "TorchCodec", "torchvision": "torchvision",
           "cpu": "FFCV's libjpeg-turbo"}


class DecoderUnavailable(Exception):
    """The requested JPEG decoder cannot run here (one-line reason)."""


def notice(text: str) -> None:
    """Print `notice: text` on stderr, once per process."""
    if text not in _NOTICES:
        _NOTICES.add(text)
        print(f"notice: {text}", file=sys.stderr, flush=True)


def _hidden(name: str) -> bool:
    return name in {n.strip() for n in os.environ.get("FFCV_CRAM_HIDE_DECODERS", "").split(",")}


def _cuda_major(version) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except (TypeError, ValueError):
        return None


def _nvimgcodec_builds() -> list[tuple[str, int]]:
    """(distribution, CUDA major) of the installed nvImageCodec wheels, from their metadata."""
    found = []
    for major in (11, 12, 13):
        try:
            found.append((importlib.metadata.version(f"nvidia-nvimgcodec-cu{major}"), major))
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def unavailable_reason(name: str) -> str | None:
    """Why decoder `name` cannot be used here, from what is installed (no GPU work); None if it
    may be used. The full check (a test decode) happens when a loader builds it."""
    if name in ("auto", "cpu"):
        return None
    if _hidden(name):
        return f"{_LABELS[name]} is hidden by FFCV_CRAM_HIDE_DECODERS"
    if name == "nvimgcodec":
        if not _installed("nvidia.nvimgcodec"):
            return "nvImageCodec is not installed (pip install -e .[gpu])"
        torch_major = _cuda_major(torch.version.cuda)
        builds = _nvimgcodec_builds()
        if torch_major and builds and all(major != torch_major for _, major in builds):
            extra = "gpu" if torch_major == 13 else f"gpu-cu{torch_major}"
            return (f"nvImageCodec is built for CUDA {builds[0][1]} but torch uses CUDA "
                    f"{torch.version.cuda} (pip install -e .[{extra}] installs "
                    f"nvidia-nvimgcodec-cu{torch_major})")
        return None
    if name == "torchcodec":
        return None if _installed("torchcodec") else \
            "TorchCodec is not installed (pip install torchcodec)"
    if name == "torchvision":
        return None
    raise ValueError(f"unknown JPEG decoder {name!r}")


def jpeg_decoder_problem(jpeg_decoder: str) -> str | None:
    """Why `--data.jpeg_decoder=<jpeg_decoder>` cannot be used here (None if it can): the choice
    of a decoder that is not installed, or built for another CUDA than torch's. (A loader still
    tests the decoder when it builds it, and refuses it then with the same kind of message.)"""
    reason = unavailable_reason(jpeg_decoder)
    if reason is None:
        return None
    return f"--data.jpeg_decoder={jpeg_decoder}: {reason}; use --data.jpeg_decoder=auto"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, a broken entry in sys.modules
        return False


def choose_decoder(requested: str, device: torch.device, threads: int = 0) -> "JpegDecoder":
    """The decoder for `device`: `requested` (one of decode_choice.JPEG_DECODERS) itself
    (DecoderUnavailable if it cannot run), or for 'auto' the first of AUTO_ORDER[device.type]
    that works, with one notice saying which and why."""
    device = torch.device(device)
    if requested != "auto":
        decoder, reason = _build(requested, device, threads)
        if decoder is None:
            raise DecoderUnavailable(reason)
        return decoder
    reasons = []
    for name in AUTO_ORDER["cuda" if device.type == "cuda" else "cpu"]:
        decoder, reason = _build(name, device, threads)
        if decoder is not None:
            if device.type == "cuda" or reasons:
                notice("; ".join(reasons + [f"decoding JPEGs with {decoder.description}"]))
            return decoder
        reasons.append(reason)
    raise DecoderUnavailable("; ".join(reasons))


def _build(name: str, device: torch.device, threads: int):
    reason = unavailable_reason(name)
    if reason:
        return None, reason
    try:
        if name == "cpu":
            return CpuDecoder(device), None
        if name == "torchvision":
            return TorchvisionDecoder(device), None
        if name == "torchcodec":
            return TorchcodecDecoder(device), None
        return NvImageCodecDecoder(device, threads), None
    except Exception as err:  # an import or test decode that fails: the reason, not a traceback
        text = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return None, f"{_LABELS[name]} cannot decode JPEGs on {device} ({text})"


def probe_jpeg(height: int = 48, width: int = 64) -> np.ndarray:
    """A small real JPEG (4:2:0, quality 90) of a smooth gradient with noise."""
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) + rng.integers(0, 30, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return np.frombuffer(buffer.getvalue(), np.uint8).copy()


class JpegDecoder:
    name = ""
    description = ""
    regions = False  # decodes exactly a requested box

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def decode(self, streams: list, sizes: np.ndarray, regions: np.ndarray | None,
               slot: int = 0) -> list:
        raise NotImplementedError


class CpuDecoder(JpegDecoder):
    """FFCV's libjpeg-turbo on the host; returns (H, W, 3) numpy arrays (views)."""
    name, description, regions = "cpu", "FFCV's libjpeg-turbo on the CPU (region decode)", True
    BLOCK = 32  # a multiple of every MCU size (8, 16, 32): lossless crops start on one

    def decode(self, streams, sizes, regions, slot=0):
        from ffcv.libffcv import imdecode
        out = []
        for k, stream in enumerate(streams):
            height, width = int(sizes[k][0]), int(sizes[k][1])
            if regions is None:
                top, left, h, w = 0, 0, height, width
            else:
                top, left, h, w = (int(v) for v in regions[k])
            # the window: MCU-aligned top/left, at least 16 px of margin where the image has it
            y0 = max(0, (top - 16) // self.BLOCK * self.BLOCK)
            x0 = max(0, (left - 16) // self.BLOCK * self.BLOCK)
            y1, x1 = min(height, top + h + 16), min(width, left + w + 16)
            whole = (y0, x0, y1, x1) == (0, 0, height, width)
            window = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            status = imdecode(stream, window, height, width, y1 - y0, x1 - x0, x0, y0, 1, 1,
                              not whole, False)
            out.append(window[top - y0:top - y0 + h, left - x0:left - x0 + w]
                       if status == 0 else None)
        return out


def _one_by_one(decode_batch, streams):
    """Decode a batch; when it fails as a whole (one bad stream), each stream alone."""
    try:
        return decode_batch(streams)
    except RuntimeError:
        out = []
        for stream in streams:
            try:
                out.append(decode_batch([stream])[0])
            except RuntimeError:
                out.append(None)
        return out


class TorchvisionDecoder(JpegDecoder):
    name, description = "torchvision", "torchvision's decode_jpeg (nvJPEG, whole images)"

    def __init__(self, device):
        super().__init__(device)
        from torchvision.io import ImageReadMode, decode_jpeg
        self._decode_jpeg, self._rgb = decode_jpeg, ImageReadMode.RGB
        if self.device.type != "cuda":
            self.description = "torchvision's decode_jpeg on the CPU (whole images)"
        probe = self.decode([probe_jpeg()], np.array([[48, 64]]), None)
        if probe[0] is None:
            raise RuntimeError("a test JPEG could not be decoded")

    def _batch(self, streams):
        # torchvision >= 0.29 warns on every call that its decoders move to TorchCodec; silenced
        # here only. (catch_warnings swaps the process's filter list while it runs; nothing else
        # changes filters while a loader decodes.)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_TV_WARNING, category=DeprecationWarning)
            return self._decode_jpeg(streams, mode=self._rgb, device=self.device)

    def decode(self, streams, sizes, regions, slot=0):
        return _one_by_one(self._batch, [torch.from_numpy(s) for s in streams])


class TorchcodecDecoder(JpegDecoder):
    name, description = "torchcodec", "TorchCodec's decode_jpeg (nvJPEG, whole images)"

    def __init__(self, device):
        super().__init__(device)
        from torchcodec.decoders import decode_jpeg
        import torchcodec
        self._decode_jpeg = decode_jpeg
        self.description = f"TorchCodec {torchcodec.__version__}'s decode_jpeg (nvJPEG, whole images)"
        probe = self.decode([probe_jpeg()], np.array([[48, 64]]), None)
        if probe[0] is None:
            raise RuntimeError("a test JPEG could not be decoded")

    def decode(self, streams, sizes, regions, slot=0):
        def batch(tensors):
            return self._decode_jpeg(list(tensors), mode="RGB", device=self.device)
        return _one_by_one(batch, [torch.from_numpy(s) for s in streams])


def parse_backends(spec: str) -> tuple[tuple[str, float], ...]:
    """'hw_gpu_only:0.75,hybrid_cpu_gpu' -> (('hw_gpu_only', 0.75), ('hybrid_cpu_gpu', 1.0)): an
    nvImageCodec backend list, BackendKind names in priority order, each with its load hint (the
    share of a batch offered to it; 1.0 when not given)."""
    out = []
    for part in (p.strip() for p in spec.split(",")):
        name, _, load = part.partition(":")
        name = name.strip().lower()
        try:
            hint = float(load) if load.strip() else 1.0
        except ValueError:
            hint = -1.0
        if name not in _BACKEND_KINDS or not 0.0 <= hint <= 1.0:
            raise ValueError(f"nvImageCodec backends {spec!r}: {part!r} is not KIND[:LOAD] with KIND "
                             f"one of {', '.join(_BACKEND_KINDS)} and LOAD in [0, 1] (set "
                             f"{NVIMGCODEC_BACKENDS_ENV} like {NVIMGCODEC_BACKENDS!r})")
        out.append((name, hint))
    return tuple(out)


def _import_nvimgcodec():
    """nvidia.nvimgcodec, its load-time complaints about optional codec libraries (nvJPEG2000,
    nvTIFF: printed straight to the process's stderr) kept out of the log unless nvJPEG itself is
    missing, which becomes the reason."""
    global _NVJPEG_MISSING
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "1")  # errors only; we count refused images
    if "nvidia.nvimgcodec" in sys.modules and sys.modules["nvidia.nvimgcodec"] is not None:
        return sys.modules["nvidia.nvimgcodec"], _NVJPEG_MISSING
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            module = importlib.import_module("nvidia.nvimgcodec")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    _NVJPEG_MISSING = "Failed to load nvjpeg library" in text
    return module, _NVJPEG_MISSING


_NVJPEG_MISSING = False


def _hwc(image):
    """(H, W, 3) numpy pixels of a decoded image (a (3, H, W) tensor or an HWC array)."""
    if image is None or isinstance(image, np.ndarray):
        return image
    return image.permute(1, 2, 0).cpu().numpy()


class NvImageCodecDecoder(JpegDecoder):
    """nvImageCodec, batched. `backends` (GPU only): parse_backends' form, default the variable
    FFCV_CRAM_NVIMGCODEC_BACKENDS, else NVIMGCODEC_BACKENDS. `threads`: its max_num_cpu_threads
    (0: its default). `probe=False` skips the start-up test decode (benchmarks of backend lists
    that refuse the small test image); region decode then stays as the version allows."""
    name = "nvimgcodec"

    def __init__(self, device, threads: int = 0, backends: str | None = None, probe: bool = True):
        super().__init__(device)
        nvimgcodec, nvjpeg_missing = _import_nvimgcodec()
        if nvjpeg_missing and self.device.type == "cuda":
            raise RuntimeError("nvImageCodec cannot load nvJPEG (pip install -e .[gpu], or "
                               "nvidia-nvjpeg for CUDA 13, nvidia-nvjpeg-cu12 for CUDA 12)")
        self._nv = nvimgcodec
        self.version = getattr(nvimgcodec, "__version__", "0")
        torch_major = _cuda_major(torch.version.cuda)
        built = getattr(nvimgcodec, "__cuda_version__", None)
        built_major = int(built) // 1000 if isinstance(built, int) else None
        if self.device.type == "cuda" and torch_major and built_major and built_major != torch_major:
            raise RuntimeError(f"nvImageCodec is built for CUDA {built_major} but torch uses CUDA "
                               f"{torch.version.cuda} (pip install -e .[gpu])")
        kinds = nvimgcodec.BackendKind
        if self.device.type == "cuda":
            spec = backends if backends is not None else \
                os.environ.get(NVIMGCODEC_BACKENDS_ENV) or NVIMGCODEC_BACKENDS
            self.backends = parse_backends(spec)
            backends = [nvimgcodec.Backend(getattr(kinds, kind.upper())) if hint == 1.0 else
                        nvimgcodec.Backend(getattr(kinds, kind.upper()), load_hint=hint)
                        for kind, hint in self.backends]
            device_id = self.device.index if self.device.index is not None else \
                torch.cuda.current_device()
        else:  # its libjpeg-turbo backend into host memory: only tests use it
            self.backends = (("cpu_only", 1.0),)
            backends = [nvimgcodec.Backend(kinds.CPU_ONLY)]
            device_id = getattr(nvimgcodec, "NVIMGCODEC_DEVICE_CPU_ONLY", -99999)  # the C define
        self._decoder = nvimgcodec.Decoder(device_id=device_id, max_num_cpu_threads=max(threads, 0),
                                           backends=backends)
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False,
                                               color_spec=nvimgcodec.ColorSpec.SRGB)
        self._reuse: dict[int, list] = {}  # slot -> Images whose buffers are decoded into again
        self._zero_copy = self._by_array_interface
        self.regions = self._regions_wanted()
        why = self._probe() if probe else ", not probed"
        where = "the GPU" if self.device.type == "cuda" else "the CPU"
        if self.device.type == "cuda" and self.backends != parse_backends(NVIMGCODEC_BACKENDS):
            why += "; backends " + ",".join(k if h == 1.0 else f"{k}:{h:g}" for k, h in self.backends)
        self.description = f"nvImageCodec {self.version} on {where} (" + (
            f"region decode of each crop{why})" if self.regions else f"whole images{why})")

    def _regions_wanted(self) -> bool:
        forced = os.environ.get("FFCV_CRAM_NVIMGCODEC_REGIONS")
        if forced in ("0", "1"):
            return forced == "1"
        parts = tuple(int(p) for p in self.version.split(".")[:2] if p.isdigit())
        return parts not in _REGION_BROKEN

    def _probe(self) -> str:
        """A test decode, whole and of a region; region decode is dropped if it disagrees."""
        stream = probe_jpeg()
        try:
            whole = self.decode([stream], np.array([[48, 64]]), None, slot=-1)[0]
        except (TypeError, RuntimeError, ValueError):  # torch cannot read its array interface
            self._zero_copy = self._by_dlpack
            whole = self.decode([stream], np.array([[48, 64]]), None, slot=-1)[0]
        if whole is None:
            raise RuntimeError("a test JPEG could not be decoded")
        if not self.regions:
            return ", region decode off for this version"
        box = np.array([[13, 21, 25, 30]])
        part = self.decode([stream], np.array([[48, 64]]), box, slot=-1)[0]
        self._reuse.pop(-1, None)
        whole, part = _hwc(whole), _hwc(part)  # a one-time read-back, at start-up
        if part is None or part.shape != (25, 30, 3) or np.abs(
                part.astype(int) - whole[13:38, 21:51].astype(int)).max() > 8:
            self.regions = False
            return ", its region decode failed a test"
        return ""

    def decode(self, streams, sizes, regions, slot=0):
        nv = self._nv
        sources = [nv.CodeStream(s) for s in streams]
        if regions is not None:
            boxes = np.asarray(regions, dtype=np.int64).tolist()
            sources = [src.get_sub_code_stream(region=nv.Region(t, l, t + h, l + w))
                       for src, (t, l, h, w) in zip(sources, boxes)]
        on_gpu = self.device.type == "cuda"
        stream = torch.cuda.current_stream(self.device).cuda_stream if on_gpu else 0
        reuse = self._reuse.setdefault(slot, [])
        reuse.extend([None] * (len(sources) - len(reuse)))
        images = None if all(r is None for r in reuse[:len(sources)]) else reuse[:len(sources)]
        try:
            decoded = self._decoder.decode(sources, images=images, params=self._params,
                                           cuda_stream=stream)
        except TypeError:  # a binding that takes no None among the images to reuse
            decoded = self._decoder.decode(sources, params=self._params, cuda_stream=stream)
        out = []
        for k, image in enumerate(decoded):
            if image is None:
                out.append(None)
                continue
            reuse[k] = image
            out.append(self._zero_copy(image) if on_gpu else np.asarray(image))
        return out

    def _by_array_interface(self, image) -> torch.Tensor:
        """(3, H, W) view of the decoded HWC buffer; the tensor keeps the image alive. torch
        ignores the interface's stream: the image was decoded on the stream that reads it."""
        return torch.as_tensor(image, device=self.device).permute(2, 0, 1)

    def _by_dlpack(self, image) -> torch.Tensor:
        return torch.from_dlpack(image).permute(2, 0, 1)
