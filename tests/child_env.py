"""The environment for a script a test starts on the CPU: the session's settings (tests/conftest.py) with a
chosen number of devices."""

from __future__ import annotations

import os

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def cpu_env(devices: int | None = None, **extra: str) -> dict[str, str]:
  """os.environ with JAX_PLATFORMS=cpu, `extra`, and XLA_FLAGS keeping every flag but a device count.

  Args:
    devices: fake CPU devices in the child (`--xla_force_host_platform_device_count`); None: one.
    **extra: more variables to set (e.g. PYTHONPATH).
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
  if devices is not None:
    flags.append(f"{DEVICE_COUNT_FLAG}={devices}")
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env.pop("XLA_FLAGS", None)
  if flags:
    env["XLA_FLAGS"] = " ".join(flags)
  return env
