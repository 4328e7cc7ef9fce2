"""Image decoding: every mode Pillow opens becomes correct 8-bit RGB, and nothing a file holds
can do more than fail that one file with a message naming it."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from captcha_jax import images
from captcha_jax.errors import DataError
from tests.conftest import cut_png


def encode(image: Image.Image, fmt: str = 'PNG', **kwargs) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kwargs)
  return buffer.getvalue()


def test_16_bit_grayscale_keeps_its_levels(tmp_path):
  """A 16-bit PNG was read as pure white; each level must map to level // 256 (±1)."""
  levels = np.linspace(0, 65535, 200).astype(np.uint16)
  path = tmp_path / 'deep.png'
  Image.fromarray(np.tile(levels, (50, 1))).save(path)
  decoded = images.load_image(path, 50, 200)
  assert np.abs(decoded[0, :, 0].astype(int) - levels // 256).max() <= 1
  assert (decoded[..., 0] == decoded[..., 2]).all()  # gray stays gray


def test_32_bit_integer_and_float_images_are_scaled_not_clipped():
  ints = Image.fromarray(np.tile(np.linspace(0, 65535, 100).astype(np.int32), (10, 1)))
  assert ints.mode == 'I'
  got = images.load_image(ints, 10, 100)[0, :, 0].astype(int)
  assert got[0] == 0 and got[-1] == 255 and abs(got[50] - 129) <= 1
  unit = Image.fromarray(np.tile(np.linspace(0, 1, 100).astype(np.float32), (10, 1)))
  assert unit.mode == 'F'
  got = images.load_image(unit, 10, 100)[0, :, 0].astype(int)
  assert got[0] == 0 and got[-1] == 255 and abs(got[50] - 129) <= 1


def test_cmyk_palette_transparency_and_alpha_become_rgb_on_white():
  cmyk = Image.new('CMYK', (20, 10), (0, 255, 255, 0))  # pure red ink
  assert tuple(images.load_image(cmyk, 10, 20)[0, 0]) == (255, 0, 0)
  palette = Image.new('P', (20, 10), 1)
  palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
  palette.info['transparency'] = 1
  decoded = images.load_image(Image.open(io.BytesIO(encode(palette))), 10, 20)
  assert (decoded == 255).all()  # the transparent colour is laid on white
  half = Image.new('LA', (20, 10), (0, 128))
  assert abs(int(images.load_image(half, 10, 20)[0, 0, 0]) - 127) <= 1


@pytest.mark.parametrize('orientation', [3, 6, 8])
def test_a_photo_stored_turned_is_read_upright(tmp_path, orientation):
  """A phone's JPEG: pixels stored turned, with the EXIF orientation that says how to show them."""
  upright = np.zeros((50, 200, 3), np.uint8)
  upright[:, :40] = 255  # a white band on the left: which way up is plain
  turn = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
  }
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = tmp_path / 'photo.jpg'
  Image.fromarray(upright).transpose(turn[orientation]).save(path, exif=exif, quality=95)
  assert images.image_size(path) == (50, 200)
  assert np.abs(images.load_image(path, 50, 200).astype(int) - upright).mean() < 3
  (tmp_path / 'cut.png').write_bytes(cut_png())  # a PNG's size, still from its header alone
  assert images.image_size(tmp_path / 'cut.png') == (40, 100)
  assert np.abs(images.load_image(path.read_bytes(), 50, 200).astype(int) - upright).mean() < 3


def test_animated_images_give_their_first_frame(tmp_path):
  frames = [Image.new('RGB', (30, 10), colour) for colour in ('red', 'blue', 'green')]
  path = tmp_path / 'moving.gif'
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
  decoded = images.load_image(path, 10, 30)
  assert tuple(decoded[5, 15]) == (255, 0, 0)


def tiny_png_declaring(width: int, height: int) -> bytes:
  """A valid PNG header and one tiny compressed row: a few hundred bytes that claim
  width × height pixels (a "decompression bomb")."""

  def chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack('>I', len(payload)) + body + struct.pack('>I', zlib.crc32(body))

  header = struct.pack('>IIBBBBB', width, height, 8, 0, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', header)
    + chunk(b'IDAT', zlib.compress(b'\x00' * 1000))
    + chunk(b'IEND', b'')
  )


@pytest.mark.parametrize('size', [(100_000, 100_000), (5000, 5000)])
def test_a_file_declaring_huge_dimensions_is_refused_before_decoding(tmp_path, size):
  path = tmp_path / 'bomb.png'
  path.write_bytes(tiny_png_declaring(*size))
  with pytest.raises(DataError, match='bomb.png.*(too large|pixels)'):
    images.load_image(path, 50, 200)
  if size[0] * size[1] > 2 * Image.MAX_IMAGE_PIXELS:  # Pillow refuses even to read its header
    with pytest.raises(DataError, match='bomb.png.*pixels'):
      images.image_size(path)


def test_bytes_and_errors_name_their_source(tmp_path):
  png = encode(Image.new('RGB', (40, 20), 'white'))
  assert images.load_image(png, 20, 40).shape == (20, 40, 3)
  with pytest.raises(DataError, match='upload.png: empty'):
    images.load_image(b'', 20, 40, name='upload.png')
  with pytest.raises(DataError, match="'.*nothing.png': no such file"):
    images.load_image(tmp_path / 'nothing.png', 20, 40)
  with pytest.raises(DataError, match='is a folder'):
    images.load_image(tmp_path, 20, 40)


def test_load_image_rejects_bad_arrays():
  with pytest.raises(DataError, match='uint8'):
    images.load_image(np.zeros((50, 200, 3), np.float32), 32, 96)
  with pytest.raises(DataError, match=r'\[H, W\]'):
    images.load_image(np.zeros((50, 200, 5), np.uint8), 32, 96)
  with pytest.raises(DataError, match='empty'):
    images.load_image(np.zeros((0, 200, 3), np.uint8), 32, 96)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_give_a_data_error_or_an_image(tmp_path_factory, payload):
  path = tmp_path_factory.mktemp('bytes') / 'bcdef.png'
  path.write_bytes(payload)
  try:
    image = images.load_image(path, 32, 96)
  except DataError as e:
    assert 'bcdef.png' in str(e)
  else:
    assert image.shape == (32, 96, 3) and image.dtype == np.uint8


def test_a_tiff_whose_decoder_raises_a_type_error_is_named(tmp_path):
  tiff = bytearray(encode(Image.new('RGB', (30, 12)), 'TIFF'))
  tiff[72], tiff[415] = 5, 78  # a tag's type made RATIONAL: Pillow raised TypeError loading it
  path = tmp_path / 'abc.tif'
  path.write_bytes(bytes(tiff))
  try:
    images.load_image(path, 12, 30)
  except DataError as e:
    assert 'abc.tif' in str(e)


@settings(max_examples=150, deadline=None)
@given(
  fmt=st.sampled_from(['PNG', 'GIF', 'BMP', 'TIFF', 'JPEG', 'WEBP']),
  changes=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
)
def test_damaged_images_give_a_data_error_or_an_image(fmt, changes):
  """Valid files with a few bytes changed reach deeper into the decoders than random bytes."""
  data = bytearray(encode(Image.new('RGB', (30, 12), 'gray'), fmt))
  for where, value in changes:
    data[int(where * len(data))] = value
  try:
    image = images.load_image(bytes(data), 12, 30, name='damaged.img')
  except DataError as e:
    assert 'damaged.img' in str(e)
  else:
    assert image.shape == (12, 30, 3)


MODES = ['1', 'L', 'LA', 'P', 'PA', 'RGB', 'RGBA', 'I', 'I;16', 'F', 'CMYK', 'YCbCr', 'LAB', 'HSV']


@settings(max_examples=60, deadline=None)
@given(
  mode=st.sampled_from(MODES),
  width=st.integers(1, 300),
  height=st.integers(1, 120),
  fmt=st.sampled_from(['PNG', 'JPEG', 'BMP', 'GIF', 'TIFF', 'WEBP']),
)
def test_any_mode_and_size_decodes_to_the_configured_shape(mode, width, height, fmt):
  try:
    blob = encode(Image.new(mode, (width, height)), fmt)
  except (OSError, KeyError, ValueError):
    return  # Pillow cannot write this mode in this format; nothing to read
  decoded = images.load_image(blob, 32, 96)
  assert decoded.shape == (32, 96, 3) and decoded.dtype == np.uint8
