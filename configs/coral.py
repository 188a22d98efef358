"""CORAL: cross-entropy + CORAL feature alignment across source domains (DomainBed)."""

from configs import base


def get_config(preset: str | None = None):
  c = base.get_config()
  c.algorithm = "coral"
  return base.apply_preset(c, preset)
