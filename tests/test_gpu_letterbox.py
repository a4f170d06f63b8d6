"""The GPU letterbox kernel (app/backends/letterbox.cu) against the CPU Preprocessor, without a GPU.

letterbox.cu also builds as host C++: g++ compiles the very kernel body and a host launcher walks the
grid and blocks `LetterboxLaunch` computes, so this checks the arithmetic and the launch parameters the
TensorRT backend really uses. nvcc separately proves the CUDA build compiles (for Jetson Orin, sm_87).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from support.cuda_emulation import run_host_kernel

from app.backends.gpu_preprocess import ARG_TYPES, KERNEL_SOURCE_PATH, PAD, GpuLetterbox, LetterboxLaunch
from app.engine.calibrate import evenly_spaced_frames
from app.letterbox import LetterboxGeometry, Preprocessor


@pytest.fixture(scope="module")
def frames(sample_video: Path) -> list[np.ndarray]:
    """Two real frames, plus noise: every rounding step of the resize shows on noise."""
    real = [f for _, f in evenly_spaced_frames(sample_video, 2)]
    noise = np.random.default_rng(7).integers(0, 256, real[0].shape, dtype=np.uint8)
    return [*real, noise]


def run_host(dll: ctypes.CDLL, image: np.ndarray, launch: LetterboxLaunch, dtype: type[np.floating]) -> np.ndarray:
    """Run the kernel body over the launch's whole grid; unwritten outputs stay NaN."""
    assert image.flags.c_contiguous and image.dtype == np.uint8
    out = np.full((1, 3, launch.dst_h, launch.dst_w), np.nan, dtype)
    run_host_kernel(dll, image.ctypes.data, out.ctypes.data, launch, f16=dtype is np.float16)
    return out


def _roi_mask(g: LetterboxGeometry) -> np.ndarray:
    mask = np.zeros(g.dst_hw, bool)
    mask[g.top : g.top + g.resized_wh[1], g.left : g.left + g.resized_wh[0]] = True
    return mask


# (source w, h, model input h, w). Copies, OpenCV's 2x (INTER_AREA) shortcut, whole-pixel 3x and 6x, upscales,
# awkward ratios, and sources so small that most of the output sits on the edge clamps.
CASES = [
    (640, 640, 640, 640),
    (640, 480, 640, 640),
    (640, 272, 640, 640),
    (1280, 720, 640, 640),
    (1920, 1080, 640, 640),
    (3840, 2160, 640, 640),
    (320, 240, 640, 640),
    (1000, 700, 640, 640),
    (333, 517, 640, 640),
    (241, 97, 640, 640),
    (7, 5, 640, 640),
    (1, 1, 640, 640),
    (1920, 1080, 384, 640),
]


@pytest.mark.parametrize(("src_w", "src_h", "dst_h", "dst_w"), CASES)
def test_host_kernel_matches_cpu_preprocessor(
    host_kernel: ctypes.CDLL, frames: list[np.ndarray], src_w: int, src_h: int, dst_h: int, dst_w: int
) -> None:
    pre = Preprocessor((dst_h, dst_w))
    for frame in frames:
        image = np.ascontiguousarray(cv2.resize(frame, (src_w, src_h), interpolation=cv2.INTER_AREA))
        ref, geometry = pre(image)
        launch = LetterboxLaunch.from_geometry(geometry)
        assert (launch.top, launch.left, (launch.new_w, launch.new_h)) == (
            geometry.top,
            geometry.left,
            geometry.resized_wh,
        )

        got = run_host(host_kernel, image, launch, np.float32)
        # Measured: bit-identical for every case here (copies, 2x/3x/6x, upscales, odd ratios, 1x1), because
        # the kernel reproduces OpenCV's fixed-point INTER_LINEAR. A float bilinear kernel rounded to whole
        # levels is 1/255 off on up to ~10% of the values (unrounded: up to 0.78/255 on most of them), so any
        # difference here means the GPU path has drifted from the CPU one.
        diff = np.abs(got.astype(np.float64) - ref)
        assert np.array_equal(got, ref), (
            f"{src_w}x{src_h}: max |diff| {np.nanmax(diff) * 255:.3f}/255, "
            f"{np.mean(~(diff <= 1e-6)):.4%} of values differ (NaN: {np.isnan(got).sum()} unwritten)"
        )
        pad = ~_roi_mask(geometry)
        assert (got[0][:, pad] == np.float32(PAD)).all()
        assert (ref[0][:, pad] == np.float32(PAD)).all()  # the pad constant is the CPU path's own value

        got16 = run_host(host_kernel, image, launch, np.float16)
        assert np.array_equal(got16, ref.astype(np.float16)), f"{src_w}x{src_h}: float16 differs"


@pytest.mark.parametrize(
    ("src_hw", "dst_hw", "block"),
    [((720, 1280), (640, 640), (32, 8)), ((517, 333), (640, 640), (32, 8)), ((1, 1), (384, 640), (16, 16))],
)
def test_launch_parameters(src_hw: tuple[int, int], dst_hw: tuple[int, int], block: tuple[int, int]) -> None:
    g = LetterboxGeometry.compute(src_hw, dst_hw)
    p = LetterboxLaunch.from_geometry(g, block)
    assert p.block == block
    for n, b, blocks in ((dst_hw[1], block[0], p.grid[0]), (dst_hw[0], block[1], p.grid[1])):
        assert (blocks - 1) * b < n <= blocks * b  # covers the output with no spare block
    assert (p.src_h, p.src_w, p.src_pitch) == (src_hw[0], src_hw[1], src_hw[1] * 3)
    assert (p.dst_h, p.dst_w, p.top, p.left) == (*dst_hw, g.top, g.left)
    assert p.scale_x == pytest.approx(src_hw[1] / g.resized_wh[0], rel=1e-15)
    assert p.scale_y == pytest.approx(src_hw[0] / g.resized_wh[1], rel=1e-15)
    assert len(p.args) == len(ARG_TYPES)
    # the float32 the kernel receives is exactly what blobFromImage makes of 114
    pad_blob = cv2.dnn.blobFromImage(np.full((1, 1, 3), 114, np.uint8), scalefactor=1.0 / 255.0)
    assert np.float32(p.pad) == pad_blob.ravel()[0]


def test_gpu_letterbox_rejects_other_dtypes() -> None:
    with pytest.raises(ValueError, match="float32 and float16"):
        GpuLetterbox(np.uint8)


def test_kernel_compiles_with_nvcc(tmp_path: Path) -> None:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not installed")
    cubin = tmp_path / "letterbox.cubin"
    # sm_87 is Jetson Orin; ptxas runs too, so register/resource errors would show here.
    proc = subprocess.run(
        [nvcc, "-cubin", "-arch=sm_87", "-Werror", "all-warnings", str(KERNEL_SOURCE_PATH), "-o", str(cubin)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    data = cubin.read_bytes()
    # extern "C": the names pycuda's get_function looks up, unmangled
    assert b"letterbox_f32\x00" in data and b"letterbox_f16\x00" in data
