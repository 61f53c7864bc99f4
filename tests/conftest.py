"""Tests run in float64: every numerical routine is checked against a brute-force float64 reference."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
