"""Benchmark harness (launch/benchmark.py): train-step, input-pipeline, BoDA-refresh, PyTorch-reference and
multi-device timings.

  settings.py         presets (gpu, cpu, smoke) and every knob
  steps.py            each algorithm's compiled step (stage.build_stage) timed on device-resident batches
  inputs.py           grain pipeline alone, pipeline feeding the step, and the BoDA statistics refresh
  torch_reference.py  the PyTorch ResNet step (child process); torch_resnet.py its model without torchvision
  runner.py           runs the sections; report.py the table, the issue's targets and the sanity check
  profile_summary.py  where a jax.profiler trace's time goes; hlo_traffic.py the kernels of a compiled step and
                      the bytes each moves (launch/step_hlo.py: the step compiled for an H100 without one)
"""
