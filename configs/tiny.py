"""A tiny model on small synthetic captchas: the whole pipeline in seconds, for tests."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data_dir = ''  # tests point this at a generated folder
  config.data_url = ''  # and never download
  config.data_min_images = 1
  config.alphabet = '2345678bcdefgmnpwxy'
  config.image_height = 32
  config.image_width = 96
  config.model.backbone_layers = 2
  config.model.base_width = 8
  config.model.projection_size = 32
  config.model.rnn_hidden_size = 16
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 2
  config.warmup_epochs = 0.5
  return config
