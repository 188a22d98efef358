"""CDANN: cross-entropy + a class-conditional domain discriminator behind gradient reversal."""

from configs import base


def get_config(preset: str | None = None):
  c = base.get_config()
  c.algorithm = "cdann"
  return base.apply_preset(c, preset)
