"""BoDA ("Ours"): cross-entropy + macro_weight * CORAL + boda_weight * BoDA with Euclidean distances."""

from configs import base


def get_config(preset: str | None = None):
  c = base.get_config()
  c.algorithm = "boda"
  c.data.per_domain_batch = 24  # the BoDA authors' batch per domain
  return base.apply_preset(c, preset)
