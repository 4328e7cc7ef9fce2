"""Pre-training a general captcha reader on an endless stream of generated captchas.

    python -m captcha_jax.train --config configs/pretrain.py --workdir runs/pretrain --cpu_tuning

Every image is new (`synthetic.sample`: many fonts, sizes, colours, noise, lines and warps, plus
the `captcha` package's own style), drawn over digits and both cases of letters, 3 to 8 of them.
The fonts are the bundled ones and the machine's others under /usr/share/fonts (up to 4 faces of
each family, none of those that draw both cases alike): the more fonts, the better the reader
carries over to a site's own (bench/README.md lists the Debian font packages the shipped reader
saw). The model is the default one, so a fine-tuned run
(configs/finetune.py) loads it whole.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data_source = 'synthetic'
  config.data_url = ''
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.seed = 0  # the stream; validation and test draw from their own seeds
  config.synthetic.lengths = (3, 8)
  config.synthetic.style = 'varied'
  config.synthetic.case = 'keep'  # the alphabet holds both cases
  # Fonts under these folders join the bundled ones (`fonts.font_pool`; the log says how
  # many). The shipped reader's last stretch drew from the Debian fonts in bench/README.md.
  config.synthetic.font_dirs = ('/usr/share/fonts',)
  config.synthetic.train_images = 25_600  # an epoch: new images every epoch
  config.synthetic.eval_images = 512
  config.alphabet = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'
  config.max_label_length = 8
  config.fixed_label_length = 0
  config.image_width = 200  # 25 CTC steps: room for 8 symbols with repeats
  config.augment.enabled = False  # the generator's own distortions are wider
  config.batch_size = 32
  config.num_epochs = 8  # 204,800 images: what a 2-core CPU trains in about an hour
  config.learning_rate = 1e-3
  config.warmup_epochs = 0.2
  config.eval_batch_size = 128
  return config
