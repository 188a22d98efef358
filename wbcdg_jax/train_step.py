"""One algorithm-agnostic train step, and the eval-mode forward passes.

`train_step` composes the loss terms that a `LossSpec` names (cross-entropy, CORAL, MMD, DANN/CDANN, BoDA),
augments the uint8 batch on the device, and applies Adam to the classifier (and to the discriminator when there
is one). It is a pure function of (state, batch): every random draw comes from `fold_in(base_key, state.step)`,
so a resumed run repeats exactly the draws of an uninterrupted one. `compile_train_step` jit-compiles it with the
batch split over the mesh and the state replicated (and donated, config.train.donate_state).
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from wbcdg_jax import augment, losses, sharding, xla_options
from wbcdg_jax.algorithms import LossSpec
from wbcdg_jax.sharding import batch_sharded, replicated
from wbcdg_jax.train_state import TrainState


def tree_all_finite(tree: Any) -> jax.Array:
  """bool scalar: every element of every leaf is finite (True for a tree without leaves)."""
  return jax.tree.reduce(lambda ok, x: ok & jnp.all(jnp.isfinite(x)), tree, jnp.asarray(True))


def global_norm(tree: Any) -> jax.Array:
  """float32 scalar: the L2 norm of all the tree's elements together (optax.global_norm's value; bfloat16 leaves
  are squared and summed in float32).

  The leaves of one shape are stacked and squared-and-summed together: one reduction per distinct shape rather
  than per leaf. Compiled for an H100, the ResNet-50 step's norm of its ~160 gradients ran as 147 reduction
  kernels of a few microseconds each; stacked, the optimizer part of the step runs 51 kernels instead of 152
  (the step 859 instead of 943, for the same bytes).
  """
  groups: dict[tuple, list[jax.Array]] = collections.defaultdict(list)
  for leaf in jax.tree.leaves(tree):
    groups[(jnp.shape(leaf), jnp.result_type(leaf))].append(leaf)
  squares = [jnp.sum(jnp.square(jnp.stack(leaves).astype(jnp.float32))) for leaves in groups.values()]
  return jnp.sqrt(sum(squares, jnp.zeros((), jnp.float32)))


def _dann_lambda(spec: LossSpec, step: jax.Array) -> jax.Array:
  if spec.dann_schedule == "constant":
    return jnp.asarray(spec.dann_lambda, jnp.float32)
  if spec.dann_schedule == "ganin":
    return losses.ganin_lambda(step.astype(jnp.float32) / max(spec.total_steps - 1, 1))
  raise ValueError(f"config.dann.schedule={spec.dann_schedule!r} is not 'ganin' or 'constant'")


def _forward(model: nn.Module, params: Any, batch_stats: Any, images: jax.Array, *, spec: LossSpec,
             bn_train: bool, dropout_key: jax.Array):
  """Returns (z [B, D], logits [B, C], new batch_stats)."""
  variables = {"params": params, "batch_stats": batch_stats}
  rngs = {"dropout": dropout_key}
  if spec.head_only:
    # Decoupled stage 2: the encoder is frozen, so no gradient flows into it (and XLA skips its backward pass).
    z = jax.lax.stop_gradient(model.apply(variables, images, method=model.features))
    logits = model.apply(variables, z, train=True, rngs=rngs, method=model.logits_from_features)
    return z, logits, batch_stats
  if bn_train:
    (z, logits), updates = model.apply(variables, images, train=True, rngs=rngs, mutable=["batch_stats"])
    return z, logits, updates["batch_stats"]
  z, logits = model.apply(variables, images, train=True, rngs=rngs)
  return z, logits, batch_stats


def _loss_terms(params, disc_params, state: TrainState, batch: dict, images: jax.Array, keys, *, model,
                disc, spec: LossSpec, bn_train: bool):
  """Total loss and its parts; the auxiliary output also carries the new batch statistics.

  The named scopes ('model', 'losses', and the train step's 'augment', 'optimizer', 'keep_or_drop') label the
  compiled instructions, so that a profile splits the step's time by part (`bench/profile_summary.py`).
  """
  with jax.named_scope("model"):
    z, logits, new_batch_stats = _forward(model, params, state.batch_stats, images, spec=spec,
                                          bn_train=bn_train, dropout_key=keys["dropout"])
  with jax.named_scope("losses"):
    total, parts = _losses(z, logits, disc_params, state, batch, keys, disc=disc, spec=spec)
  return total, (parts, new_batch_stats)


def _losses(z, logits, disc_params, state: TrainState, batch: dict, keys, *, disc, spec: LossSpec):
  """The total loss of features z [B, D] and logits [B, C], and its parts (with the accuracy)."""
  labels, domains, mask = batch["label"], batch["domain"], batch["mask"]
  parts = {"ce": losses.cross_entropy(logits, labels, mask=mask, domains=domains, num_domains=spec.num_domains)}
  total = parts["ce"]
  if spec.coral_weight:
    parts["coral"] = losses.coral_penalty(z, domains, num_domains=spec.num_domains, mask=mask)
    total = total + spec.coral_weight * parts["coral"]
  if spec.mmd_weight:
    parts["mmd"] = losses.mmd_penalty(z, domains, num_domains=spec.num_domains, mask=mask)
    total = total + spec.mmd_weight * parts["mmd"]
  if spec.dann_weight:
    lam = _dann_lambda(spec, state.step)
    disc_labels = labels if spec.dann_conditional else None
    disc_logits = disc.apply({"params": disc_params}, losses.gradient_reversal(z, lam), disc_labels, train=True,
                             rngs={"dropout": keys["disc_dropout"]})
    weights = (losses.cdann_class_weights(labels, domains, state.pair_counts) if spec.dann_conditional
               else None)
    parts["dann"] = losses.domain_adversarial_loss(disc_logits, domains, mask=mask, class_weights=weights)
    parts["dann_lambda"] = lam
    total = total + spec.dann_weight * parts["dann"]
  if spec.boda_weight:
    stats = state.boda
    active = (state.step >= spec.boda_start_step) & stats.initialized
    # A select, not lax.cond: on GPUs XLA runs a conditional by copying its predicate to the host and waiting for
    # the device (forward and backward), which stalls every step; the term costs little next to the encoder and
    # its gradient is finite, so computing it while inactive and dropping it is cheaper (benchmark: BoDA vs ERM).
    boda = losses.boda_loss(z, labels, domains, stats.means, stats.counts, nu=spec.boda_nu,
                            temperature=spec.boda_temperature, metric=spec.boda_metric, precision=stats.precision,
                            mask=mask)
    parts["boda"] = jnp.where(active, boda, 0.0)
    total = total + spec.boda_weight * parts["boda"]
  parts["total"] = total
  correct = (jnp.argmax(logits, -1) == labels) & mask
  parts["accuracy"] = jnp.sum(correct) / jnp.maximum(jnp.sum(mask), 1)
  return total, parts


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: nn.Module, tx: optax.GradientTransformation,
               spec: LossSpec, augment_options: augment.AugmentOptions, image_size: int, base_key: jax.Array,
               disc: nn.Module | None = None, disc_tx: optax.GradientTransformation | None = None,
               bn_train: bool = False, check_updated_params: bool = False) -> tuple[TrainState, dict[str, jax.Array]]:
  """Applies one update.

  Args:
    state: the current TrainState (replicated).
    batch: image uint8 [B, S, S, 3], label int32 [B], domain int32 [B] (source-domain index), mask bool [B].
    model: the Classifier; its `apply` returns (z, logits).
    tx: the classifier's optimizer.
    spec: which loss terms to add and their static hyperparameters.
    augment_options: on-device augmentation settings.
    image_size: px side of the augmented images fed to the network.
    base_key: the run's root PRNG key; this step uses fold_in(base_key, state.step).
    disc, disc_tx: the DANN discriminator and its optimizer, when spec.dann_weight > 0.
    bn_train: whether batch norm normalises with batch statistics and updates its running averages.
    check_updated_params: also drop the update when a new parameter is not finite. Without it the choice between
      the old and new state depends only on values known before the optimizer runs, so XLA fuses it into the
      update instead of writing the new state first (an overflowing update then shows in the next step's loss).

  Returns:
    The new state and a dict of float32 scalars (loss parts, accuracy, grad_norm, finite). A non-finite loss or
    gradient (or updated parameter, with check_updated_params) leaves the state unchanged (the update is dropped
    and `skipped` counts it); the caller decides whether to stop.
  """
  key = jax.random.fold_in(base_key, state.step)
  aug_key, dropout_key, disc_key = jax.random.split(key, 3)
  with jax.named_scope("augment"):
    images = augment.augment_batch(batch["image"], aug_key, out_size=image_size, options=augment_options)
  keys = {"dropout": dropout_key, "disc_dropout": disc_key}
  loss_fn = functools.partial(_loss_terms, state=state, batch=batch, images=images, keys=keys, model=model,
                              disc=disc, spec=spec, bn_train=bn_train)
  grads, (parts, new_batch_stats) = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(state.params,
                                                                                     state.disc_params)
  grad_params, grad_disc = grads
  with jax.named_scope("optimizer"):
    # A finite norm means every gradient is finite and no square of one overflows (which would make Adam's second
    # moment inf and freeze those weights); the norm is a metric anyway, so this check reads no extra memory.
    grad_norm = global_norm(grad_params)
    finite = jnp.isfinite(parts["total"]) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grad_params, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    disc_params, disc_opt_state = state.disc_params, state.disc_opt_state
    if disc is not None:
      finite = finite & jnp.isfinite(global_norm(grad_disc))
      disc_updates, disc_opt_state = disc_tx.update(grad_disc, state.disc_opt_state, state.disc_params)
      disc_params = optax.apply_updates(state.disc_params, disc_updates)
  with jax.named_scope("keep_or_drop"):
    if check_updated_params:
      # A finite gradient can still overflow the parameters (a learning rate near float32's limit): check what
      # would be kept.
      finite = finite & tree_all_finite((params, disc_params))
    new_state = _keep_or_drop(state, finite, params=params, opt_state=opt_state, batch_stats=new_batch_stats,
                              disc_params=disc_params, disc_opt_state=disc_opt_state)
  metrics = {k: jnp.asarray(v, jnp.float32) for k, v in parts.items()}
  metrics["grad_norm"] = grad_norm
  metrics["finite"] = finite.astype(jnp.float32)
  return new_state, metrics


def _keep_or_drop(state: TrainState, finite: jax.Array, **new) -> TrainState:
  """The next state: the new values where the step was finite, else the old ones (so a NaN never reaches the
  state), with the step, skip count and first bad step advanced."""
  keep = lambda name: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new[name], getattr(state, name))
  return state.replace(
      step=state.step + 1,
      **{name: keep(name) for name in new},
      skipped=state.skipped + jnp.where(finite, 0, 1).astype(jnp.int32),
      first_bad_step=jnp.where(finite | (state.first_bad_step >= 0), state.first_bad_step, state.step),
  )


def compile_train_step(mesh: jax.sharding.Mesh, *, donate_state: bool = True, o_major_kernels: bool = False,
                       cpu_ynn_convolutions: bool = False, gpu_command_buffers: str = "xla", state: Any = None,
                       **static_kwargs):
  """jit-compiles `train_step` with the batch split over the mesh and the state replicated (and donated: updated
  in place, the caller's old state deleted, when `donate_state`).

  With `o_major_kernels` the convolution kernels stay output-channel-major in device memory between steps
  (`sharding.state_shardings`); `state` (arrays or shapes) then gives the state's structure. On a CPU mesh the
  convolutions are XLA's own unless `cpu_ynn_convolutions`; on a GPU `gpu_command_buffers` picks what XLA puts
  in CUDA graphs (`xla_options.compiler_options`).
  """
  if o_major_kernels and state is None:
    raise ValueError("compile_train_step: o_major_kernels=True needs `state` (its structure names the kernels)")
  state_sharding = sharding.state_shardings(state, mesh, o_major_kernels=o_major_kernels)
  step = functools.partial(train_step, **static_kwargs)
  return jax.jit(step, in_shardings=(state_sharding, batch_sharded(mesh)),
                 out_shardings=(state_sharding, replicated(mesh)), donate_argnums=(0,) if donate_state else (),
                 compiler_options=xla_options.compiler_options(xla_options.platform_of(mesh),
                                                               cpu_ynn_convolutions=cpu_ynn_convolutions,
                                                               gpu_command_buffers=gpu_command_buffers))


def eval_outputs(params: Any, batch_stats: Any, images: jax.Array, *, model: nn.Module,
                 image_size: int) -> tuple[jax.Array, jax.Array]:
  """Eval-mode forward on uint8 images [B, S, S, 3]: (z [B, D], logits [B, C]), both float32."""
  x = augment.preprocess_eval(images, out_size=image_size)
  return model.apply({"params": params, "batch_stats": batch_stats}, x, train=False)


def compile_eval(mesh: jax.sharding.Mesh, *, model: nn.Module, image_size: int, cpu_ynn_convolutions: bool = False,
                 gpu_command_buffers: str = "xla"):
  """jit-compiled `eval_outputs`: params replicated, images split over the mesh, outputs split likewise."""
  fn = functools.partial(eval_outputs, model=model, image_size=image_size)
  return jax.jit(fn, in_shardings=(replicated(mesh), replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(batch_sharded(mesh), batch_sharded(mesh)),
                 compiler_options=xla_options.compiler_options(xla_options.platform_of(mesh),
                                                               cpu_ynn_convolutions=cpu_ynn_convolutions,
                                                               gpu_command_buffers=gpu_command_buffers))
