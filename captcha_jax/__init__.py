"""captcha_jax: a JAX/Flax CRNN that reads the text of CAPTCHA images."""
