"""ERM: cross-entropy only (empirical risk minimisation)."""

from configs import base


def get_config(preset: str | None = None):
  c = base.get_config()
  c.algorithm = "erm"
  return base.apply_preset(c, preset)
