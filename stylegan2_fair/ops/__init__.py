"""Reference (pure PyTorch) implementations of the StyleGAN2 custom ops."""
