"""Image decoding: every bad input fails with its reason; every colour mode becomes RGB; EXIF orientation applied."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from regionrank.extractors.decode import DecodeLimits, ImageDecodeError, decode_image, probe_image

TINY = DecodeLimits(min_side=1)  # the colour-mode images are a few pixels wide


def test_every_bad_input_has_its_reason(bad_images, deny_read):
    bad = bad_images
    deny_read(str(bad["permission-denied"]))
    for tag, path in bad.items():
        with pytest.raises(ImageDecodeError) as info:
            decode_image(path)
        assert info.value.reason.startswith(tag + ":"), (tag, info.value.reason)
        assert info.value.uri == str(path)


def test_limits_are_parameters(tmp_path, rng):
    p = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)).save(p)
    assert decode_image(p).shape == (30, 40, 3)
    with pytest.raises(ImageDecodeError, match="too-large"):
        decode_image(p, limits=DecodeLimits(max_pixels=1000))
    with pytest.raises(ImageDecodeError, match="too-small"):
        decode_image(p, limits=DecodeLimits(min_side=31))
    assert probe_image(p) == (40, 30)


def test_greyscale_palette_and_cmyk(tmp_path, rng):
    grey = rng.integers(0, 256, size=(12, 10), dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    out = decode_image(tmp_path / "l.png")
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3)
    assert all(np.array_equal(out[:, :, c], grey) for c in range(3))

    rgb = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    want = np.asarray(pal.convert("RGB"))
    assert np.array_equal(decode_image(tmp_path / "p.png"), want)

    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "c.tif")
    assert np.array_equal(decode_image(tmp_path / "c.tif"), np.asarray(cmyk.convert("RGB")))


def test_rgba_la_and_transparent_palette(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255
    rgba[2:, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png", limits=TINY)
    assert (out[:2] == [200, 0, 0]).all() and (out[2:] == 255).all()

    la = np.zeros((4, 4, 2), dtype=np.uint8)
    la[..., 0] = 50
    la[:, :2, 1] = 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = decode_image(tmp_path / "la.png", limits=TINY)
    assert (out[:, :2] == 50).all() and (out[:, 2:] == 255).all()

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    out = decode_image(tmp_path / "pt.png", limits=TINY)
    assert (out[0, 0] == 255).all() and (out[1, 1] == [10, 20, 30]).all()


def test_sixteen_bit_greyscale_is_scaled(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1000, 65280]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    out = decode_image(tmp_path / "i16.png", limits=TINY)
    want = np.rint(values.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    assert np.array_equal(out[:, :, 0], want) and np.array_equal(out[:, :, 2], want)


def test_exif_orientation_is_applied(tmp_path, rng):
    raw = rng.integers(0, 256, size=(10, 16, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    Image.fromarray(raw).save(tmp_path / "o.png", exif=exif)
    assert probe_image(tmp_path / "o.png") == (10, 16)  # width, height after orientation
    out = decode_image(tmp_path / "o.png")
    assert np.array_equal(out, np.rot90(raw, k=-1))
