"""s4mi_jax: self- and semi-supervision for medical imaging, in JAX/Flax."""

__version__ = "0.1.0"
