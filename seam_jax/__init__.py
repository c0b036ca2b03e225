"""seam_jax: SEAM (Self-Destructive Language Models) in JAX and Flax NNX."""

__version__ = "0.1.0"
