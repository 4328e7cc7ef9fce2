"""Parity with PyTorch: torchvision ResNet-18 → port → same features; torch GRU, CTC, a step."""

import copy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
  'torch', reason='parity tests need torch: pip install torch (CPU) and torchvision --no-deps'
)
from torch import nn  # noqa: E402

from captcha_jax import ctc, models, port, steps, train  # noqa: E402
from captcha_jax.errors import ConfigError, DataError  # noqa: E402
from captcha_jax.torch_reference import (  # noqa: E402
  TorchCRNN,
  crnn_to_flax,
  gru_to_flax,
  import_torchvision,
  nchw,
  normalized_nchw,
  randomize_batchnorm,
)

try:
  torchvision = import_torchvision()
except ModuleNotFoundError:
  pytest.skip(
    'parity tests need torchvision: pip install --no-deps torchvision', allow_module_level=True
  )
STRIDES = ((1, 1), (2, 2), (2, 1), (2, 1))


@pytest.fixture(scope='module')
def resnet():
  torch.manual_seed(0)
  model = torchvision.models.resnet18(weights=None)
  randomize_batchnorm(model)
  return model.eval()  # each test reads it as it is, whichever test ran before


def torch_stages(model, images, layers=4):
  r = model
  x = r.maxpool(r.relu(r.bn1(r.conv1(images))))
  out = {'stem': x}
  for i in range(1, layers + 1):
    x = getattr(r, f'layer{i}')(x)
    out[f'layer{i}'] = x
  return {k: v.detach().numpy().transpose(0, 2, 3, 1) for k, v in out.items()}


def flax_stages(variables, images, train_mode, layers=4):
  model = models.ResNet18(layers)
  mutable = ['intermediates', 'batch_stats'] if train_mode else ['intermediates']
  _, state = model.apply(variables, images, train=train_mode, mutable=mutable)
  return {k: np.asarray(v[0]) for k, v in state['intermediates'].items()}


@pytest.mark.parametrize('size', [(50, 200), (224, 224)])
@pytest.mark.parametrize('train_mode,tolerance', [(False, 1e-4), (True, 1e-3)])
def test_ported_resnet_matches_torchvision_every_stage(resnet, size, train_mode, tolerance):
  params, stats, unused = port.convert_backbone(resnet.state_dict())
  assert unused == ['fc.weight', 'fc.bias']
  images = np.random.default_rng(0).normal(size=(4, *size, 3)).astype(np.float32)
  resnet.train(train_mode)
  with torch.no_grad():
    expected = torch_stages(resnet, nchw(images))
  resnet.eval()
  got = flax_stages({'params': params, 'batch_stats': stats}, images, train_mode)
  assert set(got) == set(expected) == {'stem', 'layer1', 'layer2', 'layer3', 'layer4'}
  for name in expected:
    assert got[name].shape == expected[name].shape, name
    np.testing.assert_allclose(got[name], expected[name], atol=tolerance, err_msg=name)


def test_port_reports_missing_keys(resnet):
  state_dict = dict(resnet.state_dict())
  del state_dict['layer2.0.downsample.1.running_var'], state_dict['bn1.weight']
  with pytest.raises(DataError, match='lacks 2 key.*bn1.weight, layer2.0.downsample.1.running_var'):
    port.convert_backbone(state_dict)
  _, _, unused = port.convert_backbone(resnet.state_dict(), num_layers=3)
  assert any(k.startswith('layer4.') for k in unused) and 'fc.weight' in unused


def test_pth_round_trip_and_port_cli(resnet, tmp_path):
  path = tmp_path / 'resnet18.pth'
  torch.save(resnet.state_dict(), path)
  images = np.random.default_rng(1).normal(size=(2, 50, 200, 3)).astype(np.float32)
  with torch.no_grad():
    expected = torch_stages(resnet, nchw(images))['layer4']
  params, stats = port.load_backbone(path, num_layers=4)
  got = flax_stages({'params': params, 'batch_stats': stats}, images, False)['layer4']
  np.testing.assert_allclose(got, expected, atol=1e-4)

  out = tmp_path / 'ported'
  result = subprocess.run(
    [sys.executable, '-m', 'captcha_jax.port', f'--torchvision_weights={path}', f'--out={out}'],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'Not used: fc.bias, fc.weight' in result.stdout
  params, stats = port.load_backbone(out, num_layers=3)
  assert 'layer4_0' not in params
  got = flax_stages({'params': params, 'batch_stats': stats}, images, False, layers=3)['layer3']
  with torch.no_grad():
    np.testing.assert_allclose(got, torch_stages(resnet, nchw(images), 3)['layer3'], atol=1e-4)


def test_port_never_writes_over_a_folder_it_did_not_write(resnet, tmp_path):
  params, stats, _ = port.convert_backbone(resnet.state_dict())
  run = tmp_path / 'run'
  (run / 'checkpoints').mkdir(parents=True)
  (run / 'config.json').write_text('{}')
  with pytest.raises(ConfigError, match='would delete it'):
    port.save_backbone(params, stats, run)
  assert (run / 'config.json').read_text() == '{}' and (run / 'checkpoints').is_dir()
  ported = port.save_backbone(params, stats, tmp_path / 'ported')
  assert port.save_backbone(params, stats, ported) == ported  # an earlier port: written over
  assert port.is_ported(ported)


def test_pretrained_names_a_folder_that_is_not_a_port(resnet, tmp_path):
  params, stats, _ = port.convert_backbone(resnet.state_dict())
  port.save_backbone(params, stats, tmp_path / 'ported' / 'resnet18')
  with pytest.raises(ConfigError, match="did you mean '.*resnet18'"):
    port.load_backbone(tmp_path / 'ported', 3)
  with pytest.raises(ConfigError, match='no such file or folder'):
    port.check_backbone_path(tmp_path / 'absent')


def test_a_file_that_is_not_pytorch_weights_is_named(tmp_path):
  path = tmp_path / 'garbage.pth'
  path.write_bytes(b'not a pickle at all')
  with pytest.raises(DataError, match="garbage.pth' is not a PyTorch weights file"):
    port.load_backbone(path, num_layers=4)


def test_missing_weights_file_says_how_to_get_it(tmp_path):
  with pytest.raises(DataError, match='resnet18-f37072fd.pth'):
    port.load_backbone(tmp_path / 'absent.pth', 3)
  result = subprocess.run(
    [
      sys.executable,
      '-m',
      'captcha_jax.port',
      f'--torchvision_weights={tmp_path}/x.pth',
      f'--out={tmp_path}/o',
    ],
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0 and 'IMAGENET1K_V1' in result.stderr
  assert 'Traceback' not in result.stderr


def test_gru_matches_torch_bidirectional_two_layers():
  torch.manual_seed(0)
  rnn = nn.GRU(12, 16, num_layers=2, bidirectional=True, batch_first=True)
  x = np.random.default_rng(0).normal(size=(3, 9, 12)).astype(np.float32)
  with torch.no_grad():
    expected, _ = rnn(torch.from_numpy(x))
  sd = {k: v.detach().numpy() for k, v in rnn.state_dict().items()}
  params = gru_to_flax({f'rnn.{k}': v for k, v in sd.items()}, 'rnn')
  got = models.BiGRU(16, 2).apply({'params': params}, x, train=False)
  np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


def torch_ctc(logits, labels, lengths, reduction):
  """torch's CTC on [batch, time, classes] logits, every time step real."""
  return nn.functional.ctc_loss(
    logits.log_softmax(-1).transpose(0, 1),
    torch.from_numpy(labels),
    torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long),
    torch.from_numpy(lengths),
    blank=0,
    reduction=reduction,
  )


@pytest.fixture(scope='module')
def crnn_pair():
  """The seed's CRNN in torch and its conversion, with a real-size batch and labels."""
  torch.manual_seed(0)
  reference = TorchCRNN(20, 3, STRIDES, feature_height=4)
  randomize_batchnorm(reference)
  flax_model = models.CRNN(20, 3, STRIDES, dropout=0.0)
  rng = np.random.default_rng(0)
  # Pixels about N(0, 1) once normalised. Uniform noise over 0..255 moved bn1's bias gradient by
  # up to 2e-4 in a few channels: near-tied max-pool windows routed to another input.
  images = np.clip(rng.normal(120, 55, size=(4, 50, 200, 3)), 0, 255).astype(np.uint8)
  labels = rng.integers(1, 20, size=(4, 5)).astype(np.int32)
  lengths = np.array([5, 5, 4, 3])
  paddings = (np.arange(5) >= lengths[:, None]).astype(np.float32)
  return reference, flax_model, images, labels, lengths, paddings


def test_crnn_logits_and_ctc_loss_match_torch(crnn_pair):
  reference, flax_model, images, labels, lengths, paddings = crnn_pair
  reference.eval()
  with torch.no_grad():
    torch_logits = reference(normalized_nchw(images))
  logits = flax_model.apply(crnn_to_flax(reference), images, train=False)
  np.testing.assert_allclose(logits, torch_logits.numpy(), atol=1e-4)

  torch_loss = torch_ctc(torch_logits, labels, lengths, 'none')
  loss = ctc.ctc_loss(logits, labels, paddings)
  np.testing.assert_allclose(loss, torch_loss.numpy(), rtol=1e-4)


# Adam's first step is lr·g/(|g|+eps) ≈ lr·sign(g) where |g| >> eps: there, a gradient element
# that float32 noise moves across zero, or from 1e-4 to 2e-4, moves a weight by up to 2·lr.
# eps=0.1, above most of these gradients, keeps the step proportional to them, so the comparison
# is as tight as the gradients'; it is the same optimizer with the same settings on both sides.
OPTIMIZERS = {
  'sgd_momentum': (
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    optax.sgd(0.1, momentum=0.9),
  ),
  'adam': (lambda p: torch.optim.Adam(p, lr=1e-3, eps=0.1), optax.adam(1e-3, eps=0.1)),
}


def assert_close_leaf(path, got, want) -> None:
  """One leaf's relative error, as a whole: float32 sums in another order (oneDNN picks its
  kernels by CPU) move single small elements of the first layers' gradients by 1e-4 and more,
  while a wrong graph or optimizer is off by ~1."""
  error = np.linalg.norm(np.asarray(got) - want) / (np.linalg.norm(want) + 1e-12)
  assert error < 1e-2, (jax.tree_util.keystr(path), error)


@pytest.mark.parametrize('name', sorted(OPTIMIZERS))
def test_one_training_step_matches_torch(crnn_pair, name):
  """Same gradients, and the same parameters after one step (train-mode BatchNorm, no dropout)."""
  reference, flax_model, images, labels, lengths, paddings = crnn_pair
  torch_optimizer, tx = OPTIMIZERS[name]
  reference = copy.deepcopy(reference)
  variables = crnn_to_flax(reference)
  reference.train()
  optimizer = torch_optimizer(reference.parameters())
  logits = reference(normalized_nchw(images))
  loss = torch_ctc(logits, labels, lengths, 'mean')
  optimizer.zero_grad()
  loss.backward()
  torch_grads = crnn_to_flax(_with_params_as_grads(reference))['params']
  optimizer.step()
  optimizer_params = crnn_to_flax(reference)['params']

  def loss_fn(params):
    out, _ = flax_model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      images,
      train=True,
      mutable=['batch_stats'],
    )
    # torch's 'mean' divides each loss by its label length before averaging.
    return jnp.mean(ctc.ctc_loss(out, labels, paddings) / lengths)

  loss_value, grads = jax.jit(jax.value_and_grad(loss_fn))(variables['params'])
  np.testing.assert_allclose(loss_value, loss.item(), rtol=1e-5)
  for (path, got), want in zip(
    jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(torch_grads), strict=True
  ):
    assert_close_leaf(path, got, want)
  updates, _ = tx.update(grads, tx.init(variables['params']), variables['params'])
  stepped = optax.apply_updates(variables['params'], updates)
  for (path, got), want, before in zip(
    jax.tree_util.tree_leaves_with_path(stepped),
    jax.tree.leaves(optimizer_params),
    jax.tree.leaves(variables['params']),
    strict=True,
  ):
    assert_close_leaf(path, np.asarray(got) - before, np.asarray(want) - before)


def _with_params_as_grads(model):
  """A copy of `model` whose parameters hold its gradients, to convert them like weights."""
  grads = copy.deepcopy(model)
  with torch.no_grad():
    for p, g in zip(grads.parameters(), model.parameters(), strict=True):
      p.copy_(g.grad)
  return grads


def test_pretrained_backbone_is_loaded_into_the_state(resnet, tmp_path, tiny_config):
  path = tmp_path / 'resnet18.pth'
  torch.save(resnet.state_dict(), path)
  tiny_config.model.base_width = 64
  model = models.create_model(tiny_config.model, 20)
  state = steps.create_train_state(tiny_config, model, optax.adam(1e-3), jax.random.PRNGKey(0))
  loaded = port.load_pretrained_backbone(state, path)
  np.testing.assert_allclose(
    loaded.params['backbone']['conv1']['kernel'],
    resnet.conv1.weight.detach().numpy().transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(loaded.params['head']['kernel'], state.params['head']['kernel'])
  np.testing.assert_array_equal(
    loaded.ema_params['backbone']['layer1_0']['conv1']['kernel'],
    loaded.params['backbone']['layer1_0']['conv1']['kernel'],
  )
  tiny_config.model.base_width = 8
  small = steps.create_train_state(
    tiny_config,
    models.create_model(tiny_config.model, 20),
    optax.adam(1e-3),
    jax.random.PRNGKey(0),
  )
  with pytest.raises(ConfigError, match='base_width=64'):
    port.load_pretrained_backbone(small, path)


@pytest.mark.slow
def test_training_starts_from_a_ported_file(resnet, tmp_path, tiny_config):
  out = port.save_backbone(*port.convert_backbone(resnet.state_dict())[:2], tmp_path / 'ported')
  tiny_config.model.base_width = 64
  tiny_config.model.backbone_layers = 1
  tiny_config.num_epochs = 1
  tiny_config.pretrained = str(out)
  results = train.train_and_evaluate(tiny_config, tmp_path / 'run')
  assert np.isfinite(results['train']['loss'])
