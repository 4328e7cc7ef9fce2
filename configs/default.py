"""Default recipe: any folder of captchas named by their text, read as it is.

With no --config.data_dir, the 1040 images of the "captcha_images_v2" set (200×50, five symbols
of 2345678bcdefgmnpwxy; the set the Keras OCR example trains on) are downloaded once into
config.download_dir. Point --config.data_dir at your own folder and the alphabet, the label
lengths and the image width are read from it (logged, and saved in the workdir's config.json).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data.
  config.data_dir = ''  # images named by their text, e.g. 226md.png; '' = download data_url
  config.data_url = (
    'https://github.com/AakashKumarNain/CaptchaCracker/raw/master/captcha_images_v2.zip'
  )
  config.data_sha256 = ''  # not published for that file; its git blob id is checked instead
  config.data_git_blob = 'e8fb4fa40806d4f0c9dde720d40e786352ec3843'
  config.data_min_images = 1040  # what the unpacked download must hold, checked before use
  config.download_dir = '~/.cache/captcha_jax'
  # The texts in a file of `path,text` lines (or tab- or space-separated, or JSON; paths relative
  # to data_dir) instead of the names; 'auto' = the one .csv/.tsv/.txt/.json/.jsonl file in
  # data_dir that gives the texts of half its images or more, else each split folder's own such
  # file (paths relative to it) or names; '' = the names.
  config.labels_file = 'auto'
  # Which part of a file name is its text: a regular expression's first group (or its match);
  # '' = the whole name; 'auto' = the part before the first '_' of names like TEXT_1234 or
  # TEXT_<hash>, after the last of names like 0001_TEXT, before the first '-' of names like
  # TEXT-<timestamp, hash or UUID>, else the whole name (logged).
  config.label_pattern = 'auto'
  # Readings of unlabelled images of the set (`captcha-jax-predict --output FILE.csv`, or
  # .jsonl, of a run trained on the labels) that join the train split: self-training (README,
  # "Unlabelled images too").
  config.pseudo_labels = ''
  config.pseudo_min_confidence = 0.9  # of the whole reading; lower takes more and wronger ones
  # Or 'tfds' (the builder in captcha_jax/tfds_builder.py), or 'synthetic' (configs/pretrain.py).
  config.data_source = 'folder'
  config.tfds_data_dir = '~/tensorflow_datasets'  # where the tfds source is prepared
  config.case = 'keep'  # 'lower'/'upper': fold labels (and scoring) for sites that ignore case
  config.alphabet = 'auto'  # the characters of the training split's labels; or those to read
  config.max_label_length = 0  # labels are right-padded to this; 0 = the longest label
  # Readings of another length are corrected to this one (0: lengths vary; -1: the common length
  # when every label has one, else 0).
  config.fixed_label_length = -1
  # The working height every set is scaled to; width 0 keeps the set's median aspect ratio at
  # that height (a multiple of 8 px), widened until the longest label L fits 2·L + 1 CTC steps
  # and, fine-tuning (init_from), to at least the width of the reader it starts from.
  config.image_height = 50
  config.image_width = 0
  config.split = (0.8, 0.1, 0.1)  # train/val/test
  config.split_seed = 0  # fixes the split; separate from `seed` so runs share one split
  config.skip_bad_files = True  # False: any unusable file stops the run
  config.nan_policy = 'skip'  # non-finite loss/gradient: 'skip' the step (logged) or 'stop'
  # Batches are read by grain ahead of the step: threads (decoding and warping run in Pillow's
  # C code), or worker processes for Python-heavy sources (the generator) on machines with cores
  # to spare; and copied to the devices this many batches ahead.
  config.input_workers = 2
  config.input_processes = 0
  config.prefetch_batches = 2

  config.augment = ml_collections.ConfigDict()
  # Small affine warps on the host (~0.1 ms an image).
  config.augment.enabled = True
  config.augment.max_shift_x = 4.0  # pixels
  config.augment.max_shift_y = 3.0
  config.augment.max_rotation = 3.0  # degrees
  config.augment.max_scale = 0.05  # ±5%
  config.augment.max_shear = 0.1
  # The ranges grow from none at epoch 1 to the above at epoch 1 + ramp_epochs: CTC finds its
  # first alignments on clean images (bench/README.md: the ramp's ablation).
  config.augment.ramp_epochs = 4.0

  # Model.
  config.model = ml_collections.ConfigDict()
  config.model.backbone_layers = 3  # ResNet-18 through layer3
  # (2, 1) in layer3 keeps width: 25 CTC steps for a 200-px image, enough for 5 symbols.
  config.model.backbone_strides = ((1, 1), (2, 2), (2, 1), (2, 1))
  config.model.base_width = 64  # torchvision's; needed to load pretrained weights
  config.model.projection_size = 256
  config.model.rnn_hidden_size = 128
  config.model.rnn_layers = 2
  config.model.dropout = 0.1
  config.model.dtype = 'float32'  # 'bfloat16' for mixed precision on GPU/TPU
  config.pretrained = ''  # ImageNet backbone: torchvision resnet18 .pth, or a `port` output dir
  # Start from a captcha reader: 'pretrained' (shipped with the package), a run's workdir, or a
  # folder `export --format reader` wrote.
  config.init_from = ''

  # Optimisation.
  config.seed = 0  # initialisation, dropout, shuffling and augmentation
  config.batch_size = 16
  config.num_epochs = 30
  config.learning_rate = 1e-3  # peak, after warm-up
  config.warmup_epochs = 0.5  # then cosine decay
  # The CTC blank's probability at initialisation (the head's bias; the symbols share the rest):
  # -1 = 1 - L/T, the share of blank steps when the training labels' mean length L is spread over
  # the model's T steps; 0 = a zero bias, the blank as likely as any symbol. From a zero bias the
  # first updates mostly push every step towards blank, through the whole network, and training
  # then sits on the all-blank plateau for epochs.
  config.blank_prior = -1.0
  config.weight_decay = 1e-4
  config.grad_clip_norm = 5.0
  config.ema_decay = 0.99  # evaluate a moving average of the weights (0 = the raw weights)

  # Checkpoints and logging.
  config.keep_checkpoints = 2  # latest ones kept, besides the best by validation
  config.eval_batch_size = 64
  return config
