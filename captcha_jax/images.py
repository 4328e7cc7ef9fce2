"""Any image a user has → uint8 RGB of one size: the only place pixels are decoded.

NumPy and Pillow only, so readers that never import JAX (`onnx_reader`) decode exactly as
training does.
"""

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captcha_jax.errors import DataError

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.gif', '.bmp', '.webp', '.tif', '.tiff')
# The formats Pillow may decode, whatever a file's name: those of IMAGE_EXTENSIONS. Not the other
# 30-odd it knows: EPS, say, would run the service's uploads through Ghostscript.
FORMATS = ('PNG', 'JPEG', 'GIF', 'BMP', 'WEBP', 'TIFF')
# Far beyond any captcha, far below what would exhaust memory: a file declaring more pixels is
# refused before its pixels are decoded (a "decompression bomb" is a few hundred bytes). The
# service takes a lower limit (serve.DEFAULT_MAX_PIXELS).
MAX_PIXELS = 1 << 24
# EXIF's orientation tag, and its values that turn an image a quarter (width and height swap).
_ORIENTATION = 0x0112
_QUARTER_TURNS = (5, 6, 7, 8)

ImageSource = str | Path | bytes | Image.Image | np.ndarray


def _open(source, name: str, max_pixels: int) -> Image.Image:
  """The first frame of an encoded image of at most `max_pixels`, fully decoded; DataError naming
  `name` otherwise."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(source, formats=FORMATS) as opened:
        if opened.width * opened.height > max_pixels:
          raise DataError(
            f'{name}: {opened.width}×{opened.height} pixels is too large for a captcha '
            f'(more than {max_pixels:,}); refused before decoding.'
          )
        opened.seek(0)  # animated formats: the first frame
        opened.load()
        # Upright as every viewer shows it: a phone's JPEG is stored turned, with its EXIF
        # orientation saying how.
        return ImageOps.exif_transpose(opened)
  except DataError:
    raise
  except FileNotFoundError as e:
    raise DataError(f'{name}: no such file.') from e
  except IsADirectoryError as e:
    raise DataError(f'{name}: is a folder, not an image.') from e
  except UnidentifiedImageError as e:  # its message names the file object: <_io.BytesIO ...>
    raise DataError(f'{name} is not a readable image (not {", ".join(FORMATS)}).') from e
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise DataError(f'{name}: too large to be a captcha ({e}).') from e
  except Exception as e:  # a malformed file makes Pillow's decoders raise errors of any type
    raise DataError(f'{name} is not a readable image ({type(e).__name__}: {e}).') from e


def _from_array(array: np.ndarray) -> Image.Image:
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise DataError(
      f'An image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}.'
    )
  if array.dtype != np.uint8:
    raise DataError(f'An image array must be uint8 (0..255), got {array.dtype}.')
  if 0 in array.shape[:2]:
    raise DataError(f'An image array must not be empty, got {array.shape}.')
  return Image.fromarray(array)


def _to_8_bit(image: Image.Image) -> Image.Image:
  """Grayscale of more than 8 bits as 8-bit 'L', scaled by its range rather than clipped."""
  if image.mode.startswith('I;16'):
    return Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8))
  values = np.asarray(image, np.float64)
  if image.mode == 'F':
    top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0  # 0..1 floats, or 0..255
  else:  # 'I': 32-bit signed; 16-bit data when it fits
    top = 65535.0 if values.size and values.max() <= 65535 else 2.0**31 - 1
  scaled = np.nan_to_num(values / top * 255.0, nan=0.0)
  return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
  """8-bit RGB of any Pillow mode; transparent pixels are laid on white, as captchas are drawn."""
  if image.mode.startswith('I') or image.mode == 'F':
    image = _to_8_bit(image)
  if image.mode in ('RGBA', 'RGBa', 'LA', 'La', 'PA') or (
    image.mode == 'P' and 'transparency' in image.info
  ):
    rgba = image.convert('RGBA')
    image = Image.alpha_composite(Image.new('RGBA', rgba.size, (255, 255, 255, 255)), rgba)
  return image.convert('RGB')


def load_image(
  source: ImageSource,
  height: int,
  width: int,
  name: str | None = None,
  max_pixels: int = MAX_PIXELS,
) -> np.ndarray:
  """Decodes an image (a path, encoded bytes, a PIL image or a uint8 array) to [height, width, 3]
  uint8 RGB, resized when its size differs; an encoded image of more than `max_pixels` is refused
  before its pixels are decoded.

  Raises DataError naming the file (or `name`) when it cannot be decoded.
  """
  if isinstance(source, np.ndarray):
    image = _from_array(source)
  elif isinstance(source, Image.Image):
    image = source
  elif isinstance(source, bytes | bytearray | memoryview):
    if not len(source):
      raise DataError(f'{name or "the image"}: empty (0 bytes).')
    image = _open(io.BytesIO(source), name or 'the image', max_pixels)
  else:
    image = _open(Path(source), name or repr(str(source)), max_pixels)
  image = to_rgb(image)
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8)


def check_batch(pixels: np.ndarray, height: int, width: int) -> None:
  """Refuses anything but decoded images uint8 [batch, height, width, 3], a model's input: a
  float or another size would be read wrong (cast, or compiled for) rather than fail."""
  expected = (height, width, 3)
  if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != expected:
    raise ValueError(
      f'Expected uint8 images [batch, {height}, {width}, 3], got {pixels.dtype} '
      f'{list(pixels.shape)}: decode them with captcha_jax.images.load_image.'
    )


def image_size(path: str | Path) -> tuple[int, int]:
  """(height, width) from the file's header, without decoding its pixels; upright, as `load_image`
  decodes it (EXIF orientation)."""
  try:
    with Image.open(path, formats=FORMATS) as opened:
      # A PNG's getexif() decodes the pixels to look for EXIF after them: only where seen before.
      exif = opened.getexif() if opened.format != 'PNG' or 'exif' in opened.info else {}
      turned = exif.get(_ORIENTATION) in _QUARTER_TURNS
      return (opened.width, opened.height) if turned else (opened.height, opened.width)
  except UnidentifiedImageError as e:
    raise DataError(f'{str(path)!r} is not a readable image (not {", ".join(FORMATS)}).') from e
  except Exception as e:  # as in _open: any type, from a malformed header
    raise DataError(f'{str(path)!r} is not a readable image ({type(e).__name__}: {e}).') from e
