"""The ONNX export against the JAX model, and the ONNX reader in a process without JAX."""

import dataclasses
import functools
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

from captcha_jax import cli, decoding, models, onnx_export  # noqa: E402
from captcha_jax.errors import ConfigError, DataError, UserError  # noqa: E402
from captcha_jax.onnx_reader import OnnxReader  # noqa: E402
from captcha_jax.vocab import Vocab  # noqa: E402
from configs import default, tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4  # max abs difference of log-probabilities; measured about 2e-6


def jax_log_probs(model: models.CRNN, variables: dict, uint8_images: np.ndarray) -> np.ndarray:
  """The JAX reference: log-probabilities [batch, time, classes] of uint8 images."""
  logits = jax.jit(functools.partial(model.apply, train=False))(variables, uint8_images)
  return np.asarray(jax.nn.log_softmax(logits))


def tiny_config():
  config = tiny.get_config()
  config.fixed_label_length = 5  # as training resolves it from the data
  return config


def strided_config():
  """The default architecture (layer3, (2, 1) strides, 50×200) at small widths, with the
  settings a training run would read from the captcha_images_v2 set."""
  config = default.get_config()
  config.alphabet = '2345678bcdefgmnpwxy'
  config.image_width = 200
  config.fixed_label_length = 5
  config.model.base_width = 8
  config.model.projection_size = 32
  config.model.rnn_hidden_size = 16
  return config


def random_variables(model: models.CRNN, height: int, width: int, seed: int) -> dict:
  """Variables of `model` drawn with NumPy (Flax's init compiles ~90 small programs: 20 s here).

  BatchNorm statistics and scales, and every bias, are away from their initial 0/1, so that
  folding BatchNorm into the convolutions is actually exercised.
  """
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, height, width, 3), jnp.uint8),
  )
  rng = np.random.default_rng(seed)
  draw = {
    'mean': lambda shape: rng.normal(0.0, 0.5, shape),
    'var': lambda shape: rng.uniform(0.3, 2.0, shape),
    'scale': lambda shape: rng.uniform(0.5, 1.5, shape),
    'bias': lambda shape: rng.normal(0.0, 0.1, shape),
  }

  def fill(path, leaf):
    name = path[-1].key
    if name in draw:
      value = draw[name](leaf.shape)
    else:  # kernels, scaled so activations keep their size through the layers
      value = rng.normal(0.0, np.prod(leaf.shape[:-1]) ** -0.5, leaf.shape)
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@dataclasses.dataclass
class Exported:
  config: ml_collections.ConfigDict
  model: models.CRNN
  variables: dict
  path: Path
  images: dict[int, np.ndarray]  # batch size → random uint8 images
  expected: dict[int, np.ndarray]  # batch size → the JAX reference's log-probabilities

  def readings(self, batch: int, allowed: str = '', length: int = 0) -> list[decoding.Reading]:
    vocab = Vocab(self.config.alphabet)
    length = length or self.config.fixed_label_length
    return decoding.read(self.expected[batch], vocab, length, allowed)


@pytest.fixture(scope='module', params=[tiny_config, strided_config], ids=['tiny', 'strided'])
def exported(request, tmp_path_factory) -> Exported:
  config = request.param()
  model = models.create_model(config.model, Vocab(config.alphabet).num_classes)
  variables = random_variables(model, config.image_height, config.image_width, seed=1)
  path = tmp_path_factory.mktemp('onnx') / 'reader.onnx'
  path.write_bytes(onnx_export.serialize(onnx_export.to_onnx(config, variables)))
  images, expected = {}, {}
  for batch in (1, 5):
    shape = (batch, config.image_height, config.image_width, 3)
    images[batch] = np.random.default_rng(batch).integers(0, 256, shape, dtype=np.uint8)
    expected[batch] = jax_log_probs(model, variables, images[batch])
  return Exported(config, model, variables, path, images, expected)


@pytest.mark.parametrize('batch', [1, 5])
def test_log_probs_match_jax(exported, batch):
  got = OnnxReader(exported.path, threads=1).log_probs(exported.images[batch])
  expected = exported.expected[batch]
  assert got.dtype == np.float32 and got.shape == expected.shape
  assert np.abs(got - expected).max() < TOLERANCE
  vocab = Vocab(exported.config.alphabet)
  length = exported.config.fixed_label_length
  assert decoding.texts(decoding.read(got, vocab, length)) == decoding.texts(
    exported.readings(batch)
  )


READ_WITHOUT_JAX = """
import json, sys
import numpy as np
from PIL import Image
from captcha_jax.onnx_reader import OnnxReader
model, *files = sys.argv[1:]
reader = OnnxReader(model, threads=1, batch_size=2)
# Each kind of source a user may hold; batches of 2 leave a partial last batch.
sources = [files[0], open(files[1], 'rb').read(), Image.open(files[2]), np.load(files[3])]
sources.append(Image.open(files[4]))
readings = reader.predict(sources) + reader.predict(files[:1], allowed=reader.vocab.alphabet[:3])
readings += reader.predict(files[1:2], length=2)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax'))
print(json.dumps({'readings': [[r.text, r.raw_text, r.confidence] for r in readings],
                  'heavy': heavy}))
"""


def test_reader_without_jax_reads_as_the_jax_model(exported, tmp_path):
  files = []
  for i, image in enumerate(exported.images[5]):
    files.append(tmp_path / (f'{i}.npy' if i == 3 else f'{i}.png'))
    if i == 3:
      np.save(files[-1], image)
    else:
      Image.fromarray(image).save(files[-1])
  result = subprocess.run(
    [sys.executable, '-c', READ_WITHOUT_JAX, str(exported.path), *map(str, files)],
    capture_output=True,
    text=True,
    cwd=ROOT,
    check=True,
  )
  got = json.loads(result.stdout)
  assert got['heavy'] == []
  allowed = exported.config.alphabet[:3]
  expected = exported.readings(5) + exported.readings(5, allowed)[:1]
  expected += exported.readings(5, length=2)[1:2]
  assert len(expected[-1].text) == 2
  assert [r[:2] for r in got['readings']] == [[r.text, r.raw_text] for r in expected]
  np.testing.assert_allclose(
    [r[2] for r in got['readings']], [r.confidence for r in expected], rtol=1e-3
  )


def test_metadata_round_trip(exported):
  config = exported.config
  model = onnx.load(str(exported.path))
  meta = {p.key: p.value for p in model.metadata_props}
  digest = meta.pop('captcha_jax_sha256')
  assert meta == {
    'captcha_jax_format': str(onnx_export.FORMAT_VERSION),
    'alphabet': config.alphabet,
    'image_height': str(config.image_height),
    'image_width': str(config.image_width),
    'fixed_label_length': str(config.fixed_label_length),
  }
  # The digest is the file's sha256 with zeros in its place, as onnx itself serialises the model.
  (entry,) = [p for p in model.metadata_props if p.key == 'captcha_jax_sha256']
  entry.value = '0' * 64
  assert hashlib.sha256(model.SerializeToString()).hexdigest() == digest
  reader = OnnxReader(exported.path, threads=1)
  assert (reader.height, reader.width) == (config.image_height, config.image_width)
  assert reader.vocab.alphabet == config.alphabet
  assert reader.fixed_label_length == config.fixed_label_length


def test_predict_resizes_other_sizes(exported):
  config = exported.config
  image = Image.fromarray(exported.images[1][0])
  larger = image.resize((2 * config.image_width, 2 * config.image_height), Image.Resampling.NEAREST)
  reader = OnnxReader(exported.path, threads=1)
  # The model's size by Pillow's bilinear filter, as training decoded its images.
  pixels = np.asarray(larger.resize((config.image_width, config.image_height), Image.BILINEAR))
  expected = decoding.read(reader.log_probs(pixels[None]), reader.vocab, reader.fixed_label_length)
  assert reader.predict([larger]) == expected
  assert reader.predict([image]) != expected  # the same picture, not the same pixels


def test_settings_still_to_be_read_from_the_data_are_refused(exported):
  config = default.get_config()  # alphabet 'auto', image_width 0, fixed_label_length -1
  with pytest.raises(ConfigError, match="alphabet='auto'.*image_width=0.*fixed_label_length=-1"):
    onnx_export.to_onnx(config, exported.variables)


def test_not_a_model_file_is_a_clear_error(tmp_path):
  text = tmp_path / 'notes.onnx'
  text.write_text('not a model')
  with pytest.raises(DataError, match='not a readable ONNX model'):
    OnnxReader(text)
  with pytest.raises(DataError, match='no such file'):
    OnnxReader(tmp_path / 'missing.onnx')


def test_a_damaged_or_altered_file_is_refused(exported, tmp_path):
  blob = exported.path.read_bytes()
  model = onnx.load(str(exported.path))
  weights = max((t.raw_data for t in model.graph.initializer), key=len)
  start = blob.index(weights)  # inside the weights: the model still loads, and reads wrong
  flipped = bytes(b ^ 0xFF for b in weights[:64])
  damaged = tmp_path / 'damaged.onnx'
  damaged.write_bytes(blob[:start] + flipped + blob[start + 64 :])
  with pytest.raises(DataError, match='damaged.onnx.* is damaged or altered'):
    OnnxReader(damaged)
  for p in model.metadata_props:
    if p.key == 'alphabet':
      p.value = p.value[::-1]  # the same characters, read as others
  altered = tmp_path / 'altered.onnx'
  altered.write_bytes(model.SerializeToString())
  with pytest.raises(DataError, match='damaged or altered'):
    OnnxReader(altered)


def identity_model(metadata: dict) -> onnx.ModelProto:
  from onnx import TensorProto, helper

  value = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])
  out = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])
  graph = helper.make_graph([helper.make_node('Identity', ['x'], ['y'])], 'g', [value], [out])
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)], ir_version=8)
  helper.set_model_props(model, metadata)
  return model


def test_onnx_model_of_another_program_is_a_clear_error(tmp_path):
  path = tmp_path / 'other.onnx'
  onnx.save_model(identity_model({}), str(path))
  with pytest.raises(DataError, match='not a captcha_jax reader'):
    OnnxReader(path)
  meta = {'captcha_jax_format': '99', 'alphabet': 'ab', 'image_height': '8', 'image_width': '8'}
  onnx.save_model(identity_model({**meta, 'fixed_label_length': '0'}), str(path))
  with pytest.raises(DataError, match='format 99'):
    OnnxReader(path)


def test_bad_inputs_are_clear_errors(exported, tmp_path):
  reader = OnnxReader(exported.path, threads=1)
  broken = tmp_path / 'broken.png'
  broken.write_bytes(b'not a png')
  with pytest.raises(DataError, match='broken.png'):
    reader.predict([broken])
  with pytest.raises(ValueError, match='only'):
    reader.predict(list(exported.images[1]), allowed='?')
  with pytest.raises(ValueError, match='uint8 images'):
    reader.log_probs(exported.images[1].astype(np.float32))


def test_missing_onnx_packages_are_named_with_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # as if not installed
  monkeypatch.delitem(sys.modules, 'captcha_jax.onnx_reader')
  with pytest.raises(UserError, match=r'onnxruntime is not installed: .*"captcha-jax\[onnx\]"'):
    cli.load_reader(onnx='model.onnx')


def test_variables_of_another_architecture_are_refused(exported):
  config, variables = exported.config.copy_and_resolve_references(), exported.variables
  config.model.rnn_layers = 3
  with pytest.raises(ConfigError, match='do not fit config.model'):
    onnx_export.to_onnx(config, variables)
  config.model.rnn_layers = 2
  config.alphabet = config.alphabet + 'Q'
  with pytest.raises(ConfigError, match='classes'):
    onnx_export.to_onnx(config, variables)
