"""Builds one training stage from the config: model, optimizers, initial state and compiled functions.

Shared by the training loop, the benchmark and the tests, so all three run exactly the same step.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from wbcdg_jax import augment, checkpoint, losses, sharding
from wbcdg_jax.algorithms import LossSpec, loss_spec
from wbcdg_jax.classes import NUM_CLASSES
from wbcdg_jax.models import Classifier, feature_dim
from wbcdg_jax.train_state import TrainState, create_train_state, init_discriminator, make_optimizer
from wbcdg_jax.train_step import compile_eval, compile_train_step


@dataclasses.dataclass
class Stage:
  """Everything one stage's loop needs. `state` is replicated over the mesh; `train_step(state, batch)`,
  `eval_fn(params, batch_stats, images)` and `moments_fn(z, labels, domains, mask)` are jit-compiled.
  `compile_train_step(mesh, state=state, **step_options)` builds the same train step for another mesh (e.g. the
  devices of an ahead-of-time target, as launch/step_hlo.py does). A state from elsewhere (a restored checkpoint)
  goes through `jax.device_put(state, stage.state_sharding)` first: the step refuses a committed array whose device
  layout is not its own (train.o_major_kernels)."""

  model: Classifier
  spec: LossSpec
  state: TrainState
  train_step: Callable
  eval_fn: Callable
  moments_fn: Callable | None
  tx: optax.GradientTransformation
  disc: nn.Module | None
  step_options: dict
  state_sharding: object


def boda_covariance(config: ml_collections.ConfigDict) -> str:
  """Second moments the BoDA statistics keep: none for Euclidean, 'diag' or 'full' for Mahalanobis."""
  return "none" if config.boda.metric == "euclidean" else config.boda.covariance


def random_variables(model: Classifier, image_size: int, key: jax.Array) -> dict:
  """`model.init` for [1, image_size, image_size, 3] float32 images, as one compiled program.

  Run eagerly, init compiles every random initializer per parameter shape and every forward op one by one (13-17 s
  for ResNet-10 on 2 CPU cores, more than the train step's compile); jitted, XLA drops the forward pass, the one
  compile takes about half that, and the persistent compilation cache keeps it for the next run. The values are
  the eager ones up to float32 rounding (1 ulp where XLA fuses an initializer's scaling).
  """
  init = jax.jit(lambda k: model.init({"params": k}, jnp.zeros((1, image_size, image_size, 3), jnp.float32),
                                      train=False))
  return init(key)


def init_variables(model: Classifier, config: ml_collections.ConfigDict, key: jax.Array) -> dict:
  """Random init, then the converted ImageNet encoder when config.init.checkpoint names one."""
  from wbcdg_jax import weights  # local import: the converters are optional for most tools

  variables = random_variables(model, int(config.model.image_size), key)
  variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  if config.init.checkpoint:
    enc_params, enc_stats = weights.load_encoder_init(config.init.checkpoint, depth=int(config.model.depth))
    variables["params"] = {**variables["params"], "encoder": enc_params}
    variables["batch_stats"] = {**variables["batch_stats"], "encoder": enc_stats}
  else:
    weights.warn_random_init()
  return variables


def stage2_variables(model: Classifier, config: ml_collections.ConfigDict, key: jax.Array, stage1_dir: str) -> dict:
  """The stage-1 selected encoder with a freshly initialised head (the classifier is re-learned from scratch)."""
  fresh = random_variables(model, int(config.model.image_size), key)
  best = checkpoint.BestModel(os.path.join(stage1_dir, "best"))
  try:
    loaded = best.restore()
  finally:
    best.close()
  return {"params": {"encoder": loaded["params"]["encoder"], "head": fresh["params"]["head"]},
          "batch_stats": loaded["batch_stats"]}


def build_stage(config: ml_collections.ConfigDict, *, mesh: jax.sharding.Mesh, counts: np.ndarray, stage: int = 1,
                stage1_dir: str | None = None, variables: dict | None = None) -> Stage:
  """Builds a stage.

  Args:
    config: the run's config.
    mesh: the device mesh (sharding.make_mesh()).
    counts: float [K, C] training images per (source domain, class) of this fold.
    stage: 1, or 2 for the decoupled classifier re-training.
    stage1_dir: stage 2 only: the work directory whose best/ model provides the encoder.
    variables: optional {'params', 'batch_stats'} to start from instead of the configured initialisation.
  """
  num_domains = counts.shape[0]
  spec = loss_spec(config, num_domains=num_domains, num_classes=NUM_CLASSES, stage=stage)
  sharding.check_global_batch(int(config.data.per_domain_batch) * num_domains, mesh,
                              "config.data.per_domain_batch * len(config.data.sources)")
  model = checkpoint.model_from_config(config, Classifier)
  init_key, disc_key, step_key = jax.random.split(jax.random.key(int(config.seed) + 1000 * (stage - 1)), 3)
  if variables is None:
    variables = (init_variables(model, config, init_key) if stage == 1
                 else stage2_variables(model, config, init_key, stage1_dir))
  if stage == 1:
    tx = make_optimizer(config.optim.name, float(config.optim.lr), float(config.optim.weight_decay),
                        float(config.optim.grad_clip), flatten=bool(config.optim.flatten))
  else:
    trainable = {"encoder": jax.tree.map(lambda _: False, variables["params"]["encoder"]),
                 "head": jax.tree.map(lambda _: True, variables["params"]["head"])}
    tx = make_optimizer(config.optim.name, float(config.decoupled.lr), trainable=trainable,
                        flatten=bool(config.optim.flatten))
  dim = feature_dim(int(config.model.depth))
  disc, disc_params = init_discriminator(spec, key=disc_key, feature_dim=dim, width=int(config.dann.width),
                                         depth=int(config.dann.depth), dropout=float(config.dann.dropout))
  disc_tx = make_optimizer(config.optim.name, float(config.dann.lr)) if disc is not None else None
  boda_stats, moments_fn = None, None
  if spec.boda_weight:
    covariance = boda_covariance(config)
    boda_stats = losses.init_boda_stats(num_domains, NUM_CLASSES, dim, counts, covariance=covariance)
    # Replicated sums: every process reads them back (trainer.refresh_boda), wherever the batch's rows live.
    moments_fn = jax.jit(lambda z, y, d, mask: losses.pair_moments(
        z, y, d, mask, num_domains=num_domains, num_classes=NUM_CLASSES, covariance=covariance),
                         out_shardings=sharding.replicated(mesh))
  state = create_train_state(params=variables["params"], batch_stats=variables["batch_stats"], tx=tx,
                             pair_counts=counts, boda=boda_stats, disc_params=disc_params, disc_tx=disc_tx)
  o_major_kernels = sharding.o_major_kernels_on(config.train.o_major_kernels, mesh)
  cpu_ynn_convolutions = bool(config.train.cpu_ynn_convolutions)
  gpu_command_buffers = str(config.train.gpu_command_buffers)
  state_sharding = sharding.state_shardings(state, mesh, o_major_kernels=o_major_kernels)
  state = jax.device_put(state, state_sharding)
  options = augment.AugmentOptions.from_dict(config.augment.to_dict())
  step_options = dict(model=model, tx=tx, spec=spec, augment_options=options,
                      image_size=int(config.model.image_size), base_key=step_key, disc=disc, disc_tx=disc_tx,
                      bn_train=config.model.bn_mode == "train" and not spec.head_only,
                      check_updated_params=bool(config.train.check_updated_params),
                      donate_state=bool(config.train.donate_state), o_major_kernels=o_major_kernels,
                      cpu_ynn_convolutions=cpu_ynn_convolutions, gpu_command_buffers=gpu_command_buffers)
  step_fn = compile_train_step(mesh, state=state, **step_options)
  eval_fn = compile_eval(mesh, model=model, image_size=int(config.model.image_size),
                         cpu_ynn_convolutions=cpu_ynn_convolutions, gpu_command_buffers=gpu_command_buffers)
  return Stage(model=model, spec=spec, state=state, train_step=step_fn, eval_fn=eval_fn, moments_fn=moments_fn,
               tx=tx, disc=disc, step_options=step_options, state_sharding=state_sharding)
