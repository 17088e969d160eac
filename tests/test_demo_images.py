"""Uploads of every kind become H x W x 3 uint8 RGB, or a clear ImageLoadError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from biglittle_sam.demo.images import ImageLoadError, load_image, normalize_image


def _rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 60, 3), dtype=np.uint8)


def _check(loaded_rgb: np.ndarray, shape: tuple = (40, 60)) -> None:
    assert loaded_rgb.dtype == np.uint8
    assert loaded_rgb.shape == shape + (3,)


@pytest.mark.parametrize(
    "mode,note",
    [
        ("L", "grayscale"),
        ("1", "black-and-white"),
        ("RGBA", "transparency"),
        ("LA", "transparency"),
        ("CMYK", "CMYK"),
        ("P", None),
        ("RGB", None),
    ],
)
def test_modes_are_converted(tmp_path: Path, mode: str, note: str) -> None:
    path = tmp_path / f"im_{mode}.{'tiff' if mode == 'CMYK' else 'png'}"
    Image.fromarray(_rgb()).convert(mode).save(path)
    loaded = load_image(path)
    _check(loaded.rgb)
    assert loaded.original_size == (40, 60)
    assert loaded.name == f"im_{mode}"
    if note is None:
        assert loaded.notes == []
    else:
        assert any(note in n for n in loaded.notes), loaded.notes


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    rgb = load_image(tmp_path / "a.png").rgb
    assert rgb[0, 0].tolist() == [255, 0, 0]
    assert rgb[9, 9].tolist() == [255, 255, 255]


def test_16bit_grayscale_png_is_scaled(tmp_path: Path) -> None:
    ramp = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    _check(loaded.rgb)
    assert any("16-bit" in n for n in loaded.notes)
    expected = np.rint(ramp.astype(np.float64) / 257).astype(np.uint8)
    assert np.abs(loaded.rgb[..., 0].astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60),
        np.full((40, 60, 3), 40000, dtype=np.uint16),
        np.zeros((40, 60, 1), dtype=np.uint8),
        np.zeros((40, 60, 4), dtype=np.uint8),
    ],
)
def test_arrays_are_normalized(array: np.ndarray) -> None:
    _check(normalize_image(array).rgb)


def test_wrong_array_shape_is_an_error() -> None:
    with pytest.raises(ImageLoadError, match="H x W"):
        normalize_image(np.zeros((4, 5, 2), dtype=np.uint8))


def test_large_image_is_downscaled_with_a_note(tmp_path: Path) -> None:
    Image.new("RGB", (5000, 1000), (10, 20, 30)).save(tmp_path / "wide.png")
    loaded = load_image(tmp_path / "wide.png")
    assert loaded.rgb.shape == (819, 4096, 3) or loaded.rgb.shape == (820, 4096, 3)
    assert loaded.original_size == (1000, 5000)
    assert any("downscaled" in n for n in loaded.notes)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 40))
    exif = image.getexif()
    exif[274] = 6  # rotated 90 degrees: displayed as 40 wide x 60 high
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").rgb.shape == (60, 40, 3)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"this is not an image", "not an image file"),
        (b"", "not an image file"),
    ],
)
def test_non_images_are_clear_errors(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=match):
        load_image(path)


def test_truncated_image_is_a_clear_error(tmp_path: Path) -> None:
    Image.fromarray(_rgb()).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(tmp_path / "cut.png")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="file not found"):
        load_image(tmp_path / "nope.png")


def test_messages_name_the_problem_not_the_library(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("meeting notes")
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "Pillow" not in str(info.value) and "PNG, JPEG" in str(info.value)
