"""logit2prompt: a trained inverter from a model's next-token distribution to its prompt
(Morris et al. 2023): data collection, the encoder-decoder, training, inversion, defences."""
