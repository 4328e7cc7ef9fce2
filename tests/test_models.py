"""Model shapes, torchvision's conv arithmetic, and the GRU against a NumPy reference."""

import functools

import flax.linen
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from captcha_jax import models
from configs import default


def torch_out(size, kernel, stride, pad):
  return (size + 2 * pad - kernel) // stride + 1


def expected_trunk_shape(h, w, strides, num_layers, base=64):
  h, w = torch_out(h, 7, 2, 3), torch_out(w, 7, 2, 3)
  h, w = torch_out(h, 3, 2, 1), torch_out(w, 3, 2, 1)
  for sh, sw in strides[:num_layers]:
    h, w = torch_out(h, 3, sh, 1), torch_out(w, 3, sw, 1)
  return h, w, base * 2 ** (num_layers - 1)


@pytest.mark.parametrize(
  'num_layers,strides,size',
  [
    (4, models.TORCHVISION_STRIDES, (50, 200)),
    (4, models.TORCHVISION_STRIDES, (224, 224)),
    (3, ((1, 1), (2, 2), (2, 1)), (50, 200)),
    (2, ((1, 1), (2, 1)), (37, 101)),
  ],
)
def test_resnet_shapes_follow_torch_arithmetic(num_layers, strides, size):
  model = models.ResNet18(num_layers, strides, base_width=8)
  x = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  out = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert out.shape == (2, *expected_trunk_shape(*size, strides, num_layers, base=8))


def test_resnet_stages_are_sown_and_named_like_torchvision():
  model = models.ResNet18(2, base_width=8)
  x = jnp.ones((1, 32, 64, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  assert set(variables['params']) == {
    'conv1',
    'bn1',
    'layer1_0',
    'layer1_1',
    'layer2_0',
    'layer2_1',
  }
  assert set(variables['params']['layer2_0']) == {
    'conv1',
    'bn1',
    'conv2',
    'bn2',
    'downsample_conv',
    'downsample_bn',
  }
  assert 'downsample_conv' not in variables['params']['layer1_0']
  _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  assert set(state['intermediates']) == {'stem', 'layer1', 'layer2'}


def test_batchnorm_updates_statistics_only_in_train_mode():
  """The stem's running statistics move by torch's momentum 0.1 towards the batch's, computed
  here from the stem convolution by hand; evaluation leaves them alone."""
  model = models.ResNet18(1, base_width=4)
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3)) * 3 + 1
  variables = model.init(jax.random.key(0), x, train=False)
  conv = jax.lax.conv_general_dilated(
    x,
    variables['params']['conv1']['kernel'],
    (2, 2),
    ((3, 3), (3, 3)),
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
  )
  _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
  stats = updated['batch_stats']['bn1']
  np.testing.assert_allclose(stats['mean'], 0.1 * conv.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * conv.var((0, 1, 2)), rtol=1e-4)
  _, after_eval = model.apply(variables, x, train=False, mutable=['batch_stats'])
  for a, b in zip(
    jax.tree.leaves(after_eval['batch_stats']),
    jax.tree.leaves(variables['batch_stats']),
    strict=True,
  ):
    np.testing.assert_array_equal(a, b)


def numpy_gru(x, w_ih, b_ih, w_hh, b_hh, reverse=False):
  """torch.nn.GRU's documented equations, one direction, in NumPy."""
  sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  batch, steps, _ = x.shape
  hidden = w_hh.shape[0]
  h = np.zeros((batch, hidden))
  out = np.zeros((batch, steps, hidden))
  for t in reversed(range(steps)) if reverse else range(steps):
    gi, gh = x[:, t] @ w_ih + b_ih, h @ w_hh + b_hh
    r = sigmoid(gi[:, :hidden] + gh[:, :hidden])
    z = sigmoid(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
    n = np.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
    h = (1 - z) * n + z * h
    out[:, t] = h
  return out


@pytest.mark.parametrize('reverse', [False, True])
def test_gru_matches_numpy_reference(reverse):
  x = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32)
  gru = models.GRU(6, reverse=reverse)
  variables = gru.init(jax.random.key(0), x)
  p = jax.tree.map(np.asarray, variables['params'])
  expected = numpy_gru(
    x, p['input_kernel'], p['input_bias'], p['hidden_kernel'], p['hidden_bias'], reverse
  )
  np.testing.assert_allclose(gru.apply(variables, x), expected, atol=1e-5)


def test_bigru_concatenates_directions_and_stacks_layers():
  x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
  rnn = models.BiGRU(3, num_layers=2)
  variables = rnn.init(jax.random.key(0), x, train=False)
  p = jax.tree.map(np.asarray, variables['params'])

  def direction(name, inputs, reverse):
    q = p[name]
    return numpy_gru(
      inputs, q['input_kernel'], q['input_bias'], q['hidden_kernel'], q['hidden_bias'], reverse
    )

  layer0 = np.concatenate(
    [direction('l0_forward', x, False), direction('l0_backward', x, True)], -1
  )
  layer1 = np.concatenate(
    [direction('l1_forward', layer0, False), direction('l1_backward', layer0, True)], -1
  )
  np.testing.assert_allclose(rnn.apply(variables, x, train=False), layer1, atol=1e-5)


def test_crnn_logits_shape_and_time_steps():
  model = models.CRNN(
    num_classes=20, backbone_layers=3, base_width=8, projection_size=16, rnn_hidden_size=8
  )
  x = jnp.zeros((2, 50, 200, 3), jnp.uint8)
  variables = model.init(jax.random.key(0), x, train=False)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (2, 25, 20) and logits.dtype == jnp.float32


@pytest.mark.parametrize('prior', [0.0, 0.8])
def test_head_bias_starts_at_the_blank_prior(prior):
  model = models.CRNN(
    num_classes=20,
    backbone_layers=2,
    base_width=8,
    projection_size=16,
    rnn_hidden_size=8,
    blank_prior=prior,
  )
  x = jax.ShapeDtypeStruct((1, 32, 96, 3), jnp.uint8)
  params = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)['params']
  probs = np.asarray(jax.nn.softmax(params['head']['bias']))
  np.testing.assert_allclose(probs[0], prior or 1 / 20, rtol=1e-5)
  np.testing.assert_allclose(probs[1:], (1 - (prior or 1 / 20)) / 19, rtol=1e-5)


def test_output_steps_of_the_default_model():
  config = ml_collections.ConfigDict(default.get_config().model)
  assert models.output_steps(config, 50, 200) == 25
  assert models.output_steps(config, 50, 96) == 12


def test_crnn_preprocesses_uint8_images_with_imagenet_statistics():
  """The CRNN's first step equals the torchvision recipe written out by hand."""
  model = models.CRNN(
    num_classes=5, backbone_layers=1, base_width=4, projection_size=8, rnn_hidden_size=4
  )
  pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 64, 3), dtype=np.uint8)
  variables = model.init(jax.random.key(0), pixels, train=False)
  by_hand = (pixels / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(models.preprocess(pixels), by_hand, atol=1e-6)
  _, seen = model.apply(
    variables,
    pixels,
    train=False,
    capture_intermediates=lambda m, _: m.name == 'backbone',
    mutable=['intermediates'],
  )
  backbone = models.ResNet18(1, base_width=4)
  expected = backbone.apply({k: v['backbone'] for k, v in variables.items()}, by_hand, train=False)
  np.testing.assert_allclose(seen['intermediates']['backbone']['__call__'][0], expected, atol=1e-5)


def test_crnn_dropout_is_off_in_eval_and_on_in_train():
  model = models.CRNN(
    num_classes=5,
    backbone_layers=1,
    base_width=4,
    projection_size=8,
    rnn_hidden_size=4,
    dropout=0.5,
  )
  x = jax.random.randint(jax.random.key(0), (2, 32, 64, 3), 0, 256).astype(jnp.uint8)
  variables = model.init(jax.random.key(0), x, train=False)
  np.testing.assert_array_equal(
    model.apply(variables, x, train=False), model.apply(variables, x, train=False)
  )
  train = functools.partial(model.apply, variables, x, train=True, mutable=['batch_stats'])
  a, _ = train(rngs={'dropout': jax.random.key(1)})
  b, _ = train(rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(a, b)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  model = models.CRNN(
    num_classes=5,
    backbone_layers=1,
    base_width=4,
    projection_size=8,
    rnn_hidden_size=4,
    dtype=jnp.bfloat16,
  )
  x = jnp.zeros((1, 32, 64, 3), jnp.uint8)
  variables = model.init(jax.random.key(0), x, train=False)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables['params']))
  assert model.apply(variables, x, train=False).dtype == jnp.float32


@pytest.mark.parametrize('shape', [(2, 25, 100, 4), (1, 7, 8, 3), (3, 1, 1, 2)])
def test_slice_max_pool_matches_reduce_window_and_its_gradient(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  reference = functools.partial(
    flax.linen.max_pool, window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))
  )
  np.testing.assert_array_equal(models.max_pool_3x3_s2(x), reference(x))
  cotangent = jax.random.normal(jax.random.key(1), reference(x).shape)
  grad = jax.grad(lambda y: (models.max_pool_3x3_s2(y) * cotangent).sum())(x)
  expected = jax.grad(lambda y: (reference(y) * cotangent).sum())(x)
  np.testing.assert_allclose(grad, expected, atol=1e-6)  # no ties in random normal data


def test_max_pool_gradient_goes_to_the_first_maximum_like_torch():
  torch = pytest.importorskip('torch')
  # After a ReLU most windows tie (at 0); rounding makes ties between positive values too.
  x = np.maximum(np.random.default_rng(0).normal(size=(2, 11, 14, 3)), 0).round(1)
  x = x.astype(np.float32)
  cotangent = np.random.default_rng(1).normal(size=(2, 6, 7, 3)).astype(np.float32)
  grad = jax.grad(lambda y: (models.max_pool_3x3_s2(y) * cotangent).sum())(jnp.asarray(x))
  x_torch = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
  out = torch.nn.functional.max_pool2d(x_torch, 3, 2, 1)
  (out * torch.tensor(cotangent.transpose(0, 3, 1, 2))).sum().backward()
  np.testing.assert_allclose(
    models.max_pool_3x3_s2(jnp.asarray(x)), out.detach().numpy().transpose(0, 2, 3, 1)
  )
  np.testing.assert_allclose(grad, x_torch.grad.numpy().transpose(0, 2, 3, 1), atol=1e-6)
