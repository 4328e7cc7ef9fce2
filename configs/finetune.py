"""Fine-tuning the pretrained reader on a few hundred labelled captchas of one site.

    python -m captcha_jax.train --config configs/finetune.py --config.data_dir=YOUR_FOLDER \
        --workdir runs/mine

Everything is read from the data as with configs/default.py (images no narrower than the reader
read them: 200 px); the trunk, the GRU and the head's rows for the characters the reader knows
start from captcha_jax/pretrained/, new characters from scratch. Its model settings are the
pretrained reader's, so leave config.model and image_height as they are.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.init_from = 'pretrained'
  config.num_epochs = 40  # a few hundred steps on a few hundred images
  config.learning_rate = 5e-4  # the weights are already good: smaller steps
  config.warmup_epochs = 1.0
  # Wider warps from the first step: the reader already reads, so no clean start is needed, and a
  # few hundred images show less of a site's variety than its other captchas will (bench/README.md).
  config.augment.ramp_epochs = 0.0
  config.augment.max_rotation = 8.0
  config.augment.max_scale = 0.15
  config.augment.max_shear = 0.2
  config.augment.max_shift_y = 5.0
  return config
