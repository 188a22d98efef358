"""BoDA with Mahalanobis distances under shrunk per-pair covariances (the seed paper's alternative form)."""

from configs import boda


def get_config(preset: str | None = None):
  c = boda.get_config(preset)
  c.boda.metric = "mahalanobis"
  c.workdir = c.workdir.replace("runs/boda_", "runs/boda_mahalanobis_", 1)
  c.boda.covariance = "diag"  # 'full' is exact but stores K*C*D*D floats (0.65 GB for ResNet-50, 3 domains)
  return c
