"""Where a step's time goes, from a `jax.profiler` trace (`.xplane.pb`, optionally gzipped), without TensorBoard.

On a GPU or TPU the device planes' stream lines hold one event per kernel; on a CPU the XLA thread lines hold one
per executed HLO op. Each event is traced back to the HLO instruction that ran it (the `hlo_op` statistic where
the profiler records it; for a kernel inside an XLA:GPU command buffer, whose `hlo_op` is the whole buffer, the
kernel's own name, which XLA derives from its fusion's), and the events are grouped:

* by `op`: the instruction's name without its numeric suffix, so that `fusion.12` and `fusion.40` add up as
  `fusion`;
* by `instruction`: one group per instruction, to look up in the step's optimized HLO;
* by `part`: the named scope the instruction came from, read from its `op_name` metadata in the optimized HLO
  (`jax.jit(f).lower(...).compile().as_text()`). The train step names its parts (augment, model, losses,
  optimizer, keep_or_drop), and autodiff marks their gradients, so `jvp(model)` is the model's forward pass and
  `transpose(jvp(model))` its backward pass.

Groups are listed by total time, with their share of the busy time.

On a CPU some ops run asynchronously: XLA:CPU hands convolutions (and some matrix products) to Eigen on its thread
pool, and the op's event covers only the hand-over (0.4 ms of a 24 ms convolution), so that a summary of events
alone left most of a ResNet step out (`cpu_async_work` measures it; see there).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import math
import re

GROUPINGS = ("op", "instruction", "part")

# Events of the CPU runtime itself (and the end markers of some), not of an op.
_CPU_RUNTIME = re.compile(r"^(ThunkExecutor|ThreadpoolListener|TfrtCpu|PjRt|SlinkyThreadPool|end: )")
_END = "end: "  # XLA:CPU's marker of an op's completion, joined to the op's event by a flow id
_CPU_POOL = "tf_XLAEigen"  # the lines of XLA:CPU's intra-op thread pool, where ops and their library calls run
_TASK_START, _TASK_STOP = "ThreadpoolListener::StartRegion", "ThreadpoolListener::StopRegion"
_FLOW_OUT, _FLOW_IN = "_p", "_c"  # the profiler's flow statistics: producer (the op), consumer (its end marker)
# HLO text: a computation's header `%fused_computation.3 (p: f32[2]) -> f32[2] {` (or `ENTRY %main ...`), and an
# instruction `  ROOT %name = type op(...), calls=%fused_computation.3, metadata={op_name="a/b/c" ...}`.
COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([^\s=]+)\s*=\s")
_OP_NAME = re.compile(r'\bop_name="([^"]*)"')
CALLS = re.compile(r"\bcalls=%?([^\s,}]+)")
_OPERANDS = re.compile(r"=\s*\S+\s+[\w\-]+\(([^)]*)\)")  # `= f32[4]{0} fusion(%a, %b)` -> `%a, %b`
_FUSED = ("fused_computation", "wrapped_")  # computations of fusions, whose instructions never run alone
# Parts whose instructions carry no usable metadata, or that the HLO does not hold.
NO_METADATA = "(no op_name metadata)"
NOT_IN_HLO = "(not in the HLO)"
UNSCOPED = "(outside any named scope)"
UNTRACED = "(pool work, no async op in flight)"


_ACTIVATION_MODE = re.compile(r'"activation_mode":"(\w+)"')


def convolution_activations(hlo_text: str) -> dict[str, int]:
  """How many of an optimized XLA:GPU HLO's cuDNN convolutions run each fused activation: {'kRelu': 60,
  'kNone': 98}; {} where there are none (a CPU or TPU HLO). A ReLU that XLA did not fuse into its convolution
  runs as a pass of its own over the activation."""
  return dict(collections.Counter(_ACTIVATION_MODE.findall(hlo_text)).most_common())


def _gunzipped(data: bytes) -> bytes:
  """data, decompressed if it is gzipped (the device script brings traces and HLO back gzipped)."""
  return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def text_of(data: bytes) -> str:
  """The text of a file's bytes, gunzipped if they are gzipped."""
  return _gunzipped(data).decode("utf-8")


def _kernel_name(name: str) -> str:
  """The name XLA:GPU gives the kernel of instruction `name` (LLVM-safe: '.' and '-' become '_')."""
  return re.sub(r"[^A-Za-z0-9_]", "_", name)


def op_names(hlo_text: str) -> dict[str, str]:
  """instruction name -> its op_name metadata, for every instruction of an HLO module's text ('' where it has none).

  XLA drops the metadata of some instructions: for a fusion, the op_name of the computation it calls (its root's,
  else its first instruction's) stands in; failing that, one of its operands' (up to 3 producers up; a backward
  one where any is: XLA:CPU keeps no metadata on weight-gradient convolutions, whose operands are a forward
  activation and a backward gradient). Each instruction is also listed under its kernel name (`loop_add_fusion.3`
  as `loop_add_fusion_3`).
  """
  own: dict[str, str] = {}
  calls: dict[str, str] = {}
  operands: dict[str, list[str]] = {}
  computation_op_name: dict[str, str] = {}  # computation -> its root's op_name, else its first instruction's
  computation = None
  for line in hlo_text.splitlines():
    header = COMPUTATION.match(line)
    if header:
      computation = header.group(1)
      continue
    instruction = _INSTRUCTION.match(line)
    if not instruction:
      continue
    is_root, name = instruction.groups()
    op_name, called = _OP_NAME.search(line), CALLS.search(line)
    if op_name:
      own[name] = op_name.group(1)
      if computation and (is_root or computation not in computation_op_name):
        computation_op_name[computation] = op_name.group(1)
    elif computation is None or not computation.startswith(_FUSED):
      own[name] = ""  # no metadata (yet): an instruction that runs, not one inside a fusion
      args = _OPERANDS.search(line)
      operands[name] = re.findall(r"%([^\s,()]+)", args.group(1)) if args else []
    if called:
      calls[name] = called.group(1)
  names = dict(own)
  for name, called in calls.items():
    if not names.get(name) and called in computation_op_name:
      names[name] = computation_op_name[called]

  def inherited(name: str, depth: int) -> str:
    found = [op for op in (names.get(o) or (inherited(o, depth - 1) if depth else "") for o in operands.get(name, ()))
             if op and part_of(op) != UNSCOPED]
    return next((op for op in found if part_of(op).endswith(" backward")), found[0] if found else "")

  for name in [n for n, op_name in names.items() if not op_name and n in operands]:
    names[name] = inherited(name, 3)
  for name, op_name in list(names.items()):
    names.setdefault(_kernel_name(name), op_name)
  return names


def part_of(op_name: str) -> str:
  """The named scope an instruction came from, from its op_name metadata.

  `jit(train_step)/jvp(model)/Classifier/encoder/...` -> 'model forward'; `.../transpose(jvp(model))/...` ->
  'model backward'; `jit(train_step)/optimizer/...` -> 'optimizer'; a primitive directly under the jit, or
  under an unnamed autodiff scope (`jvp()`), -> UNSCOPED.
  """
  segments = op_name.split("/")
  if segments and re.fullmatch(r"p?jit\(.*\)", segments[0]):
    segments = segments[1:]  # the function that was compiled
  if len(segments) < 2:
    return UNSCOPED  # a primitive at the top level
  scope = segments[0]
  backward = re.fullmatch(r"transpose\(jvp\((.*)\)\)", scope)
  forward = re.fullmatch(r"jvp\((.*)\)", scope)
  if backward or forward:
    name = (backward or forward).group(1)
    return f"{name} {'backward' if backward else 'forward'}" if name else UNSCOPED
  return scope


@dataclasses.dataclass
class Summary:
  """Busy time (ns) of the chosen lines and per-group totals (ns) and event counts; on a CPU, async_ns of the busy
  time is asynchronous ops' work measured by `cpu_async_work`."""

  source: str
  busy_ns: float
  total_ns: collections.Counter
  count: collections.Counter
  grouping: str = "op"
  async_ns: float = 0.0

  def table(self, top: int = 25) -> str:
    note = (f" (thread time; {self.async_ns / 1e6:.2f} ms of it asynchronous ops' work on the pool)"
            if self.async_ns else "")
    lines = [f"{self.source}: {self.busy_ns / 1e6:.2f} ms busy in {sum(self.count.values())} events{note}",
             f"| {self.grouping} | ms | share | events |", "| --- | ---: | ---: | ---: |"]
    for name, ns in self.total_ns.most_common(top):
      lines.append(f"| {name} | {ns / 1e6:.3f} | {100 * ns / max(self.busy_ns, 1):.1f}% | {self.count[name]} |")
    return "\n".join(lines)


def _instruction(event) -> str:
  """The HLO instruction an event ran: its `hlo_op` statistic, else its name; for a kernel inside a command buffer
  (whose `hlo_op` names the buffer) the kernel's own name."""
  stats = dict(event.stats)
  hlo_op = str(stats.get("hlo_op") or "")
  if not hlo_op or (hlo_op.startswith("command_buffer") and event.name and event.name != hlo_op):
    return str(event.name)
  return hlo_op


def _group(event, by_instruction: bool = False) -> str:
  name = _instruction(event)
  return name if by_instruction else re.sub(r"(\.\d+)+$", "", name)


def _intervals_minus(outer: list[tuple[int, int]], inner: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """The parts of the disjoint sorted intervals `outer` that no interval of `inner` (any order, may overlap)
  covers."""
  inner = sorted(inner)
  out, j = [], 0
  for start, stop in outer:
    t = start
    while j < len(inner) and inner[j][0] < stop:  # inner intervals starting before this outer one ends
      a, b = inner[j]
      if a > t:
        out.append((t, a))
      t = max(t, b)
      if b > stop:
        break  # it reaches into the next outer interval: look at it again there
      j += 1
    if t < stop:
      out.append((t, stop))
  return out


def cpu_async_work(lines: list[tuple[str, list]]) -> tuple[dict[int, float], float]:
  """The work of XLA:CPU's asynchronous ops, which their events do not cover.

  An op that XLA:CPU runs asynchronously (an Eigen convolution or matrix product) has an event for its
  hand-over to the thread pool, which then does the work without events of its own, and an 'end: <op>' marker
  (joined to the op's event by a flow id) when the op completes. Meanwhile the pool's threads are inside a task
  (between the ThreadpoolListener StartRegion and StopRegion markers) but outside any event. That untraced task
  time is what this returns, shared among the asynchronous ops in flight at each moment (equally where several
  are). The completion marker can come late (its thread first runs the ops that were waiting for it), but those
  ops have events of their own, so their time is not counted twice.

  Args:
    lines: (line name, events) of the host plane's XLA threads; events have name, start_ns, duration_ns, stats.

  Returns:
    ({id(op event): its work in ns}, ns of untraced task time while no asynchronous op was in flight).
  """
  ends: dict[int, float] = {}
  ops = []
  for _, events in lines:
    for event in events:
      stats = dict(event.stats)
      if event.name.startswith(_END) and _FLOW_IN in stats:
        ends[int(stats[_FLOW_IN])] = event.start_ns
      elif not _CPU_RUNTIME.match(event.name) and _FLOW_OUT in stats:
        ops.append((event, int(stats[_FLOW_OUT])))
  in_flight = [(event.start_ns, ends[flow], event) for event, flow in ops
               if ends.get(flow, -math.inf) > event.start_ns + event.duration_ns]
  untraced = []
  for name, events in lines:
    if not name.startswith(_CPU_POOL):
      continue
    tasks, start = [], None
    for event in sorted(events, key=lambda e: e.start_ns):
      if event.name == _TASK_START:
        start = event.start_ns
      elif event.name == _TASK_STOP and start is not None:
        tasks.append((start, event.start_ns))
        start = None
    traced = [(e.start_ns, e.start_ns + e.duration_ns) for e in events
              if e.duration_ns > 0 and not e.name.startswith(("ThreadpoolListener", _END))]
    untraced += _intervals_minus(tasks, traced)
  # Sweep over time: between consecutive boundaries, (threads in untraced work) x (duration), shared among the
  # asynchronous ops in flight.
  points = [(a, 0, 1, None) for a, _ in untraced] + [(b, 0, -1, None) for _, b in untraced]
  points += [(a, 1, 1, e) for a, _, e in in_flight] + [(b, 1, -1, e) for _, b, e in in_flight]
  points.sort(key=lambda p: (p[0], p[1], p[2]))
  work: dict[int, float] = collections.defaultdict(float)
  active: set[int] = set()  # ids of the asynchronous ops in flight
  threads, unattributed, previous = 0, 0.0, None
  for t, kind, sign, event in points:
    if previous is not None and t > previous and threads > 0:
      ns = (t - previous) * threads
      if active:
        for key in active:
          work[key] += ns / len(active)
      else:
        unattributed += ns
    previous = t
    if kind == 0:
      threads += sign
    elif sign > 0:
      active.add(id(event))
    else:
      active.discard(id(event))
  return dict(work), unattributed


def summarize(serialized: bytes, *, by: str = "op", hlo_text: str | None = None) -> Summary:
  """Summary of the device planes' stream lines, or of the CPU's XLA threads when no device plane has events (there
  each asynchronous op also gets its work on the pool, `cpu_async_work`, and the rest of the pool's untraced work
  is a row of its own, UNTRACED: the busy time is the pool's thread time).

  Args:
    serialized: the trace (`.xplane.pb` bytes, gzipped or not).
    by: one of GROUPINGS (default 'op').
    hlo_text: the traced step's optimized HLO; required by 'part'.

  Raises:
    ValueError: an unknown grouping, 'part' without the HLO, or a trace without op events.
  """
  from jax.profiler import ProfileData

  if by not in GROUPINGS:
    raise ValueError(f"profile_summary: grouping {by!r} is not one of {GROUPINGS}")
  if by == "part" and not hlo_text:
    raise ValueError("profile_summary: grouping by part needs the traced step's optimized HLO text")
  serialized = _gunzipped(serialized)
  # The profile's planes, lines and events are one-pass iterators: read them into lists once.
  planes = [(plane.name, [(line.name, list(line.events)) for line in plane.lines])
            for plane in ProfileData.from_serialized_xspace(serialized).planes]
  chosen = [events for name, lines in planes if name.startswith("/device:") for line, events in lines
            if "stream" in line.lower() or "xla ops" in line.lower()]
  source = "device kernels"
  async_work, unattributed = {}, 0.0
  if not any(chosen):
    cpu_lines = [(line, events) for name, lines in planes if name == "/host:CPU" for line, events in lines
                 if line.startswith("tf_XLA")]
    chosen = [events for _, events in cpu_lines]
    source = "CPU XLA ops"
    async_work, unattributed = cpu_async_work(cpu_lines)
  scopes = op_names(hlo_text) if by == "part" else {}
  total, count = collections.Counter(), collections.Counter()
  for events in chosen:
    for event in events:
      if source == "CPU XLA ops" and _CPU_RUNTIME.match(event.name):
        continue
      if by == "part":
        instruction = _instruction(event)
        # Triton kernels carry a suffix after their fusion's name (`gemm_fusion_dot_3_impl`).
        op_name = scopes.get(instruction, scopes.get(re.sub(r"_impl$", "", instruction)))
        group = part_of(op_name) if op_name else f"{NOT_IN_HLO if op_name is None else NO_METADATA} {_group(event)}"
      else:
        group = _group(event, by == "instruction")
      total[group] += event.duration_ns + async_work.get(id(event), 0.0)
      count[group] += 1
  if not total:
    raise ValueError("profile_summary: the trace has no device kernel or CPU XLA op events")
  if unattributed:
    total[UNTRACED] += unattributed
  return Summary(source=source, busy_ns=float(sum(total.values())), total_ns=total, count=count, grouping=by,
                 async_ns=float(sum(async_work.values())))
