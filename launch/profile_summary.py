r"""Lists where the time of a `jax.profiler` trace goes (device kernels, or XLA ops on a CPU), by HLO op.

  python launch/benchmark.py --preset=gpu --sections=steps --algorithms=boda --profile_dir=runs/profile
  python launch/profile_summary.py --trace="$(find runs/profile -name '*.xplane.pb' | head -1)" --top=30
  python launch/profile_summary.py --trace=... --by_instruction   # single instructions, to find in the HLO
"""

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags

from wbcdg_jax.bench import profile_summary

_TRACE = flags.DEFINE_string("trace", None, "A .xplane.pb (or .xplane.pb.gz) file.", required=True)
_TOP = flags.DEFINE_integer("top", 25, "Rows to print.")
_BY_INSTRUCTION = flags.DEFINE_bool("by_instruction", False, "One row per HLO instruction (fusion.12), not per op "
                                    "kind (fusion).")


def main(argv):
  del argv
  try:
    with open(_TRACE.value, "rb") as f:
      data = f.read()
  except OSError as e:
    raise app.UsageError(f"--trace: cannot read {_TRACE.value}: {e}")
  try:
    summary = profile_summary.summarize(data, by_instruction=_BY_INSTRUCTION.value)
  except ValueError as e:
    raise app.UsageError(f"--trace={_TRACE.value}: {e}")
  print(summary.table(_TOP.value))


if __name__ == "__main__":
  app.run(main)
