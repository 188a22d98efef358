"""BoDA decoupled ("Ours+"): stage 1 trains BoDA; stage 2 freezes the encoder, re-initialises the classifier
and retrains it alone with class-balanced sampling (cRT)."""

from configs import boda


def get_config(preset: str | None = None):
  c = boda.get_config(preset)
  c.algorithm = "boda_decoupled"
  return c
