"""The kernels of a compiled step's optimized HLO and the bytes each one moves: where a step's memory traffic goes,
read from the compiler's output instead of a profile (launch/step_hlo.py compiles for an H100 without one).

Every instruction of the entry computation that runs is one kernel (a fusion, a library call such as a cuDNN
convolution or a matrix multiply, a copy, ...). Its traffic is the bytes of its result plus those of its
operands, except that a fusion reading an operand only through slices or gathers counts the bytes those take.
That is what a kernel that reads each input once moves: it overcounts a kernel that reads an operand only in
part some other way, and undercounts convolutions and matrix multiplies, which re-read their inputs (from
cache, mostly). Most of a training step's fusions are bound by memory, and take about traffic / bandwidth
(an H100 reaches 2-3 TB/s), so comparing the traffic of two compiled variants shows what a change moves.

Each kernel is put in the part of the step its op_name metadata names (`profile_summary.part_of`: augment,
model forward / backward, losses, optimizer, keep_or_drop), as the profile summary does with a trace.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any

from wbcdg_jax.bench import profile_summary

# Bytes per element of each HLO element type (pred is stored as one byte).
_ELEMENT_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
                  "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                  "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_COMMENT = re.compile(r"/\*.*?\*/")
# `%name = <type> <op>(<operands>), attributes...`; the type is one array or a parenthesised tuple of them.
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%?([^\s=]+)\s*=\s*(\([^()]*\)|\S+)\s+([\w\-]+)\((.*)$")
# Instructions that launch no kernel: they name, group or alias buffers.
_NO_KERNEL = frozenset({"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
                        "partition-id", "replica-id", "opt-barrier", "add-dependency"})


def type_bytes(hlo_type: str) -> int:
  """Bytes of an HLO type: 'bf16[8,56,56,64]{3,2,1,0}' or a tuple '(f32[4]{0}, u8[0]{0})'."""
  total = 0
  for element, dims in _ARRAY.findall(hlo_type):
    if element not in _ELEMENT_BYTES:
      continue  # not an array type (e.g. a token)
    count = 1
    for d in dims.split(","):
      if d:
        count *= int(d)
    total += _ELEMENT_BYTES[element] * count
  return total


def _operand_names(args: str) -> list[str]:
  """The operand names of an instruction's text after its opening parenthesis, up to the matching one."""
  depth = 0
  for i, ch in enumerate(args):
    if ch == "(":
      depth += 1
    elif ch == ")":
      if depth == 0:
        args = args[:i]
        break
      depth -= 1
  return re.findall(r"%([^\s,()]+)", args)


@dataclasses.dataclass(frozen=True)
class _Instruction:
  name: str
  type: str
  op: str
  operands: list[str]
  calls: str | None
  parameter: int | None  # a parameter's number
  slice: tuple[int, int] | None  # a rank-1 slice's [start, limit)
  root: bool


def _computations(hlo_text: str) -> tuple[dict[str, list[_Instruction]], str]:
  """{computation name: its instructions} and the entry computation's name."""
  computations: dict[str, list[_Instruction]] = {}
  entry, current = "", None
  for line in hlo_text.splitlines():
    line = _COMMENT.sub("", line)
    header = profile_summary.COMPUTATION.match(line)
    if header:
      current = computations.setdefault(header.group(1), [])
      if line.startswith("ENTRY"):
        entry = header.group(1)
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      root, name, hlo_type, op, rest = match.groups()
      called = profile_summary.CALLS.search(rest)
      number = re.match(r"\s*([0-9]+)", rest) if op == "parameter" else None
      bounds = re.search(r"slice=\{\[([0-9]+):([0-9]+)\]\}", rest) if op == "slice" else None
      current.append(_Instruction(name, hlo_type, op, _operand_names(rest), called.group(1) if called else None,
                                  int(number.group(1)) if number else None,
                                  (int(bounds.group(1)), int(bounds.group(2))) if bounds else None, bool(root)))
  if not entry:
    raise ValueError("hlo_traffic: no ENTRY computation in the HLO text")
  return computations, entry


# Ops whose result element i is computed from element i of each operand (same shape, so the same row-major index).
_ELEMENTWISE = frozenset({
    "abs", "add", "and", "atan2", "bitcast", "bitcast-convert", "cbrt", "ceil", "clamp", "compare", "convert",
    "cosine", "divide", "erf", "exponential", "exponential-minus-one", "floor", "is-finite", "log", "log-plus-one",
    "logistic", "maximum", "minimum", "multiply", "negate", "not", "or", "popcnt", "power", "remainder",
    "round-nearest-afz", "round-nearest-even", "rsqrt", "select", "shift-left", "shift-right-arithmetic",
    "shift-right-logical", "sign", "sine", "sqrt", "subtract", "tan", "tanh", "xor"})


def _row_major_dims(hlo_type: str) -> list[int] | None:
  """The dimensions of an array type with a row-major layout ('f32[4,3]{1,0}' -> [4, 3]); None for a tuple or
  another layout."""
  match = re.fullmatch(r"[a-z0-9]+\[([0-9,]*)\](?:\{([0-9,]*)\})?", hlo_type)
  if not match:
    return None
  dims = [int(d) for d in match.group(1).split(",") if d]
  layout = [int(d) for d in (match.group(2) or "").split(",") if d]
  return None if layout and layout != list(range(len(dims) - 1, -1, -1)) else dims


def _elements(hlo_type: str) -> int | None:
  dims = _row_major_dims(hlo_type)
  if dims is None:
    return None
  count = 1
  for d in dims:
    count *= d
  return count


def _add(ranges: list[tuple[int, int]], lo: int, hi: int) -> None:
  if hi > lo:
    ranges.append((lo, hi))


def _union(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """The union of [lo, hi) ranges, as disjoint sorted ranges."""
  merged: list[tuple[int, int]] = []
  for lo, hi in sorted(ranges):
    if merged and lo <= merged[-1][1]:
      merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
    else:
      merged.append((lo, hi))
  return merged


def _fused_reads(instructions: list[_Instruction]) -> dict[int, int]:
  """Parameter number -> bytes a fused computation reads of it.

  Walking back from the fusion's result: a rank-1 slice reads its range of its operand, a rank-1 concatenate
  passes on to each operand the part of what is read of it that the operand fills, an elementwise op passes on what
  is read of it, another slice, a gather or a dynamic slice reads as many elements as it returns (where, unknown);
  anything else reads its operands whole. (optax.flatten's update, for one, concatenates every gradient and slices
  the result back per parameter: each slice's kernel reads only its parameter's part.)
  """
  by_name = {i.name: i for i in instructions}
  sizes = {i.name: type_bytes(i.type) for i in instructions}
  elements = {i.name: _elements(i.type) for i in instructions}
  ranges: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)  # element ranges read, per instruction
  counted: dict[str, int] = collections.defaultdict(int)  # elements read at unknown places (slices, gathers)
  whole: set[str] = set()  # read whole
  for i in reversed(instructions):
    if counted.get(i.name) or not elements[i.name]:
      needed = None  # an unknown part of it (or a tuple, or another layout): its operands are read whole
    elif i.root or i.name in whole:
      needed = [(0, elements[i.name])]
    else:
      needed = _union(ranges.get(i.name, []))
      if not needed:
        continue  # nothing reads it (a dead value)
    rank1 = len(_row_major_dims(i.type) or [0, 0]) == 1
    offset = 0
    for k, operand in enumerate(i.operands):
      if operand not in by_name:
        continue
      n = elements[operand]
      if i.op in ("slice", "gather", "dynamic-slice") and k == 0 and not (needed and rank1 and i.slice):
        counted[operand] += elements[i.name] or 0
      elif needed is None or n is None:
        whole.add(operand)
      elif i.op == "slice" and k == 0:  # rank 1, [start, limit)
        for lo, hi in needed:
          _add(ranges[operand], lo + i.slice[0], hi + i.slice[0])
      elif i.op == "concatenate" and rank1:  # operand k fills [offset, offset + n)
        for lo, hi in needed:
          _add(ranges[operand], max(lo, offset) - offset, min(hi, offset + n) - offset)
        offset += n
      elif i.op in _ELEMENTWISE and n == elements[i.name]:
        ranges[operand].extend(needed)
      else:
        whole.add(operand)
  reads = {}
  for i in instructions:
    if i.parameter is None:
      continue
    n = elements[i.name]
    if i.name in whole or n is None:
      reads[i.parameter] = sizes[i.name]
    else:
      read = min(n, sum(hi - lo for lo, hi in _union(ranges.get(i.name, []))) + counted.get(i.name, 0))
      reads[i.parameter] = sizes[i.name] * read // max(n, 1)
  return reads


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel of the step: its instruction, op (e.g. 'fusion', 'custom-call', 'copy'), bytes read and
  written, and the part of the step it belongs to."""

  name: str
  op: str
  bytes: int
  part: str


def kernels(hlo_text: str) -> list[Kernel]:
  """The kernels of an optimized HLO module's text (`compiled.as_text()`), in program order."""
  computations, entry = _computations(hlo_text)
  names = profile_summary.op_names(hlo_text)
  sizes: dict[str, int] = {}
  out = []
  for i in computations[entry]:
    sizes[i.name] = type_bytes(i.type)
    if i.op in _NO_KERNEL:
      continue
    fused = _fused_reads(computations[i.calls]) if i.op == "fusion" and i.calls in computations else {}
    read = sum(fused.get(k, sizes.get(operand, 0)) for k, operand in enumerate(i.operands))
    op_name = names.get(i.name, "")
    part = profile_summary.part_of(op_name) if op_name else profile_summary.NO_METADATA
    out.append(Kernel(i.name, i.op, sizes[i.name] + read, part))
  return out


def summarize(hlo_text: str) -> dict[str, Any]:
  """{'kernels', 'bytes', 'by_part': {part: {'bytes', 'kernels'}} (most bytes first), 'copies', 'copy_bytes',
  'convolution_activations'} of an optimized HLO module's text."""
  found = kernels(hlo_text)
  by_part: dict[str, dict[str, int]] = {}
  for k in found:
    entry = by_part.setdefault(k.part, {"bytes": 0, "kernels": 0})
    entry["bytes"] += k.bytes
    entry["kernels"] += 1
  copies = [k for k in found if k.op == "copy"]
  return {"kernels": len(found), "bytes": sum(k.bytes for k in found),
          "by_part": dict(sorted(by_part.items(), key=lambda kv: -kv[1]["bytes"])),
          "copies": len(copies), "copy_bytes": sum(k.bytes for k in copies),
          "convolution_activations": profile_summary.convolution_activations(hlo_text)}
