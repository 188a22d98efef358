"""DANN: cross-entropy + a domain discriminator behind a gradient reversal layer (Ganin et al. 2016)."""

from configs import base


def get_config(preset: str | None = None):
  c = base.get_config()
  c.algorithm = "dann"
  return base.apply_preset(c, preset)
