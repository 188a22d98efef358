"""The benchmark's outputs: the Markdown table, the issue's targets, and the check that every number is sane."""

from __future__ import annotations

import math
from typing import Any

from wbcdg_jax.bench.settings import step_label

# The targets of the issue (one H100, 224 px, bf16, frozen BN); on other hardware they are only informative.
BODA_VS_TORCH_COMPILE = 1.3
STEP_VS_ERM = 0.95
LOOP_VS_STEP = 0.9
SCALING_EFFICIENCY = 0.9


def all_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
  """Every row of every section, in section order, each with its 'section'."""
  rows = []
  for section, body in result["sections"].items():
    for row in body.get("rows", []):
      rows.append(dict(row, section=section))
  return rows


def _fmt(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def format_table(result: dict[str, Any]) -> str:
  """Markdown: section | name | batch | devices | img/s | step ms | compile s | ratio | note."""
  lines = ["| section | name | batch | devices | img/s | step ms | compile s | ratio | note |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
  for row in all_rows(result):
    ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f} x {row['ratio_to']}"
    note = row.get("note", "")
    if row.get("status") == "skipped":
      note = f"skipped: {row.get('reason', '')}"
    lines.append(f"| {row['section']} | {step_label(row['name'], row.get('model_variant', ''))} | "
                 f"{_fmt(row.get('batch'), 'd')} | "
                 f"{_fmt(row.get('devices'), 'd')} | {_fmt(row.get('images_per_s'), '.1f')} | "
                 f"{_fmt(row.get('step_ms'), '.2f')} | {_fmt(row.get('compile_s'), '.1f')} | {ratio} | "
                 f"{note.splitlines()[0][:160] if note else ''} |")
  for section, body in result["sections"].items():
    if body.get("status") == "skipped":
      lines.append(f"| {section} | (section) | | | | | | | skipped: {body.get('reason', '')} |")
  return "\n".join(lines)


def _activations(profile: dict[str, Any]) -> str:
  """'; cuDNN convolutions by fused activation: kRelu 60, kNone 98' (XLA:GPU), else ''."""
  modes = profile.get("convolution_activations")
  return "; cuDNN convolutions by fused activation: " + ", ".join(f"{k} {n}" for k, n in modes.items()) if modes \
      else ""


def _async(profile: dict[str, Any]) -> str:
  """'; 120.00 ms of it asynchronous ops' work (thread time)' (a CPU's convolutions), else ''."""
  ms = profile.get("async_ms_per_step")
  return f"; {ms:.2f} ms of it asynchronous ops' work on XLA:CPU's threads" if ms else ""


def format_profile(result: dict[str, Any], top: int = 12) -> str:
  """Markdown: where each profiled step's time went, by part of the step ('' when no profile was taken)."""
  blocks = []
  for profile in result.get("profiles", []):
    if "by_part" not in profile:
      continue
    lines = [f"Profile: {profile['algorithm']} at total batch {profile['batch']}, {profile['source']}: "
             f"{profile['busy_ms_per_step']:.2f} ms busy per step of {profile['wall_ms_per_step']:.2f} ms "
             "(traced)" + _async(profile) + _activations(profile),
             "| part | ms per step | share |", "| --- | ---: | ---: |"]
    lines += [f"| {row['part']} | {row['ms_per_step']:.3f} | {100 * row['share']:.1f}% |"
              for row in profile["by_part"][:top]]
    blocks.append("\n".join(lines))
  return "\n\n".join(blocks)


def format_targets(result: dict[str, Any]) -> str:
  lines = []
  for name, t in result.get("targets", {}).items():
    mark = "met" if t["met"] else "NOT met"
    lines.append(f"- {name}: {t['value']:.3f} (target {t['op']} {t['target']}) {mark}")
  return "\n".join(lines)


def _target(value: float, target: float, op: str = ">=") -> dict[str, Any]:
  return {"value": float(value), "target": target, "op": op, "met": bool(value >= target)}


def targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """The issue's targets evaluated on this run's numbers (timings never fail anything)."""
  out = {}
  sections = result["sections"]
  steps = [r for r in sections.get("steps", {}).get("rows", []) if r.get("ratio") is not None]
  if steps:
    worst = min(steps, key=lambda r: r["ratio"])
    out[f"slowest step / ERM ({worst['name']})"] = _target(worst["ratio"], STEP_VS_ERM)
  for batch, ratios in sections.get("torch", {}).get("ratios", {}).items():
    # Against each torch.compile mode timed: the default one (the issue's reference) and any faster one.
    for key, ratio in ratios.items():
      if key.startswith("boda / torch.compile"):
        out[f"BoDA{key[len('boda'):]} at batch {batch}"] = _target(ratio, BODA_VS_TORCH_COMPILE)
  for row in sections.get("pipeline", {}).get("rows", []):
    if row["name"] == "full loop (pipeline -> step)":  # the trainer's loop (the inline row is for comparison)
      out[f"full loop / step on device at batch {row['batch']}"] = _target(row["ratio"], LOOP_VS_STEP)
  scaling = [r for r in sections.get("scaling", {}).get("rows", []) if r.get("devices", 1) > 1]
  if scaling:
    worst = min(scaling, key=lambda r: r["ratio"])
    out[f"scaling efficiency on {worst['devices']} devices"] = _target(worst["ratio"], SCALING_EFFICIENCY)
  return out


def merge_results(results: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
  """One result from several runs' JSON (path, result) on the same device kind, e.g. the parts of a device session.

  Sections keep their rows in order; a row measured again (same section, name, model variant, batch and devices)
  takes the later run's numbers. The torch section's JAX / PyTorch ratios are merged per batch, and the targets
  are evaluated on the merged numbers.

  Raises:
    ValueError naming the file whose device kind or device count differs from the first one's.
  """
  if not results:
    raise ValueError("merge_results: no results")
  first_path, first = results[0]
  device = (first["meta"]["device_kind"], first["meta"]["device_count"])
  merged: dict[str, Any] = {"meta": dict(first["meta"], merged_from=[p for p, _ in results]),
                            "settings": first.get("settings", {}), "sections": {}}
  for path, result in results:
    other = (result["meta"]["device_kind"], result["meta"]["device_count"])
    if other != device:
      raise ValueError(f"{path}: measured on {other[1]} x {other[0]}, but {first_path} on {device[1]} x {device[0]}")
    for name, body in result["sections"].items():
      target = merged["sections"].setdefault(name, {"rows": []})
      for key, value in body.items():
        if key == "ratios":
          for batch, ratios in value.items():
            target.setdefault("ratios", {}).setdefault(batch, {}).update(ratios)
        elif key != "rows":
          target[key] = value
      index = {_row_key(r): i for i, r in enumerate(target["rows"])}
      for row in body.get("rows", []):
        if _row_key(row) in index:
          target["rows"][index[_row_key(row)]] = row
        else:
          index[_row_key(row)] = len(target["rows"])
          target["rows"].append(row)
  merged["targets"] = targets(merged)
  return merged


def _row_key(row: dict[str, Any]) -> tuple:
  return row["name"], row.get("model_variant", ""), row.get("batch"), row.get("devices")


def check_numbers(result: dict[str, Any]) -> None:
  """Raises ValueError naming every measured row whose throughput, time or loss is not a positive finite number."""
  bad = []
  for row in all_rows(result):
    if row.get("status") == "skipped":
      continue
    for key in ("images_per_s", "step_ms"):
      value = row.get(key)
      if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        bad.append(f"{row['section']}/{row['name']}@{row.get('batch')}: {key}={value!r}")
    for key in ("compile_s", "first_call_s", "ratio"):
      value = row.get(key)
      if value is not None and not (math.isfinite(value) and value >= 0):
        bad.append(f"{row['section']}/{row['name']}@{row.get('batch')}: {key}={value!r}")
    if "loss" in row and not math.isfinite(row["loss"]):
      bad.append(f"{row['section']}/{row['name']}@{row.get('batch')}: loss={row['loss']!r}")
  if bad:
    raise ValueError("benchmark: non-finite or non-positive numbers: " + "; ".join(bad))
