"""Where a step's time goes, from a `jax.profiler` trace (`.xplane.pb`, optionally gzipped), without TensorBoard.

On a GPU or TPU the device planes' stream lines hold one event per kernel; on a CPU the XLA thread lines hold one
per executed HLO op. Events are grouped by their HLO op (the `hlo_op` statistic where the profiler records it,
else the event name) with the numeric suffix removed, so that `fusion.12` and `fusion.40` add up as `fusion`, and
the groups are listed by total time, with their share of the busy time.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import re

# Events of the CPU runtime itself (and the end markers of some), not of an op.
_CPU_RUNTIME = re.compile(r"^(ThunkExecutor|ThreadpoolListener|TfrtCpu|PjRt|end: )")


@dataclasses.dataclass
class Summary:
  """Busy time (ns) of the chosen lines and per-group totals (ns) and event counts."""

  source: str
  busy_ns: float
  total_ns: collections.Counter
  count: collections.Counter

  def table(self, top: int = 25) -> str:
    lines = [f"{self.source}: {self.busy_ns / 1e6:.2f} ms busy in {sum(self.count.values())} events",
             "| op | ms | share | events |", "| --- | ---: | ---: | ---: |"]
    for name, ns in self.total_ns.most_common(top):
      lines.append(f"| {name} | {ns / 1e6:.3f} | {100 * ns / max(self.busy_ns, 1):.1f}% | {self.count[name]} |")
    return "\n".join(lines)


def _group(event, by_instruction: bool = False) -> str:
  stats = dict(event.stats)
  name = str(stats.get("hlo_op") or event.name)
  return name if by_instruction else re.sub(r"(\.\d+)+$", "", name)


def summarize(serialized: bytes, by_instruction: bool = False) -> Summary:
  """Summary of the device planes' stream lines, or of the CPU's XLA threads when no device plane has events.

  With `by_instruction`, each HLO instruction (`fusion.12`) is its own group, to look up in the step's optimized
  HLO (`jax.jit(...).lower(...).compile().as_text()`).
  """
  from jax.profiler import ProfileData

  if serialized[:2] == b"\x1f\x8b":
    serialized = gzip.decompress(serialized)
  # The profile's planes, lines and events are one-pass iterators: read them into lists once.
  planes = [(plane.name, [(line.name, list(line.events)) for line in plane.lines])
            for plane in ProfileData.from_serialized_xspace(serialized).planes]
  chosen = [events for name, lines in planes if name.startswith("/device:") for line, events in lines
            if "stream" in line.lower() or "xla ops" in line.lower()]
  source = "device kernels"
  if not any(chosen):
    chosen = [events for name, lines in planes if name == "/host:CPU" for line, events in lines
              if line.startswith("tf_XLA")]
    source = "CPU XLA ops"
  total, count = collections.Counter(), collections.Counter()
  for events in chosen:
    for event in events:
      if source == "CPU XLA ops" and _CPU_RUNTIME.match(event.name):
        continue
      group = _group(event, by_instruction)
      total[group] += event.duration_ns
      count[group] += 1
  if not total:
    raise ValueError("profile_summary: the trace has no device kernel or CPU XLA op events")
  return Summary(source=source, busy_ns=float(sum(total.values())), total_ns=total, count=count)
