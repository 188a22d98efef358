r"""Lists where the time of a `jax.profiler` trace goes (device kernels, or XLA ops on a CPU).

  python launch/benchmark.py --preset=gpu --sections=steps --algorithms=boda --profile_dir=runs/profile
  trace="$(find runs/profile -name '*.xplane.pb' | head -1)"
  python launch/profile_summary.py --trace="$trace" --top=30                  # by HLO op kind (fusion, convolution)
  python launch/profile_summary.py --trace="$trace" --by=instruction          # single instructions, as in the HLO
  python launch/profile_summary.py --trace="$trace" --by=part --hlo=runs/profile/boda_step.hlo.txt
                                    # by part of the step: augment, model forward / backward, losses, optimizer
"""

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags

from wbcdg_jax.bench import profile_summary

_TRACE = flags.DEFINE_string("trace", None, "A .xplane.pb (or .xplane.pb.gz) file.", required=True)
_TOP = flags.DEFINE_integer("top", 25, "Rows to print.")
_BY = flags.DEFINE_enum("by", "op", profile_summary.GROUPINGS, "Group by HLO op kind (fusion), single instruction "
                        "(fusion.12), or the part of the step its named scope says (needs --hlo).")
_HLO = flags.DEFINE_string("hlo", None, "The traced step's optimized HLO text (.txt, or .txt.gz), as the "
                           "benchmark writes it beside the trace (<algorithm>_step.hlo.txt); needed by --by=part.")


def _read(flag, binary: bool = True):
  try:
    with open(flag.value, "rb") as f:
      data = f.read()
  except OSError as e:
    raise app.UsageError(f"--{flag.name}: cannot read {flag.value}: {e}")
  if binary:
    return data
  try:
    return profile_summary.text_of(data)
  except (OSError, UnicodeDecodeError) as e:
    raise app.UsageError(f"--{flag.name}={flag.value}: not an HLO text file: {e}")


def main(argv):
  del argv
  if _BY.value == "part" and not _HLO.value:
    raise app.UsageError("--by=part needs --hlo=<the traced step's optimized HLO text>")
  data = _read(_TRACE)
  hlo = _read(_HLO, binary=False) if _HLO.value else None
  try:
    summary = profile_summary.summarize(data, by=_BY.value, hlo_text=hlo)
  except ValueError as e:
    raise app.UsageError(f"--trace={_TRACE.value}: {e}")
  print(summary.table(_TOP.value))


if __name__ == "__main__":
  app.run(main)
