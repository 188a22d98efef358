"""MMD: cross-entropy + Gaussian-kernel MMD across source domains (DomainBed)."""

from configs import base


def get_config(preset: str | None = None):
  c = base.get_config()
  c.algorithm = "mmd"
  return base.apply_preset(c, preset)
