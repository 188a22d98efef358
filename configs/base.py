"""Every knob of a run, with its default and what it means. Algorithm files override a few fields.

Defaults follow REFERENCE.md section 1 (DomainBed style, as the method's paper). Presets, selected with the
argument after the colon (`--config=configs/boda.py:quick`), change the scale of a run, not the method:

* `paper`   (default): 224 px, ResNet-50 from ImageNet weights, 5001 steps, 32 images per source domain.
* `quick`:  a CPU run of a few minutes on the embedded synthetic data: 64 px, ResNet-10 (one basic block per
            stage; on 2 CPU cores it trains 2.4x faster than ResNet-18, which XLA runs no faster than ResNet-50 at
            this size) from scratch, 2 folds, a short schedule with BoDA switched on early.
* `tiny`:   seconds; used by the tests (ResNet-10, 32 px, a handful of steps).
"""

from __future__ import annotations

import ml_collections

PRESETS = ("paper", "quick", "tiny")
SYNTHETIC_SOURCES = ("synthetic_wbc/matek19_like", "synthetic_wbc/acevedo20_like")
SYNTHETIC_TARGET = "synthetic_wbc/int20_like"


def get_config() -> ml_collections.ConfigDict:
  """The paper setting for ERM; algorithm files override `algorithm` and their loss fields."""
  c = ml_collections.ConfigDict()
  c.algorithm = "erm"  # erm | coral | mmd | dann | cdann | boda | boda_decoupled (see wbcdg_jax/algorithms.py)
  c.seed = 0
  c.workdir = "runs/default"  # checkpoints, metrics and logs are written here

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = "data"  # where build_data.py wrote the array_record datasets
  c.data.sources = SYNTHETIC_SOURCES  # training domains, in domain-index order
  c.data.target = SYNTHETIC_TARGET  # the unseen domain ("" for none)
  c.data.synthetic_scale = 0.02  # fraction of the real dataset sizes generated for synthetic_wbc domains
  c.data.build_if_missing = True  # only synthetic domains are ever built automatically
  c.data.stored_size = 256  # px side of the stored images (builder option)
  c.data.fov_um = 25.0  # physical field of view every image is cropped to (builder option)
  # labelled_folders/<lab> domains open the one variant built for stored_size/fov_um; where a lab has several
  # (other px_per_um, label_source or table), name the one to use by its directory below
  # <data_dir>/labelled_folders/, e.g. ("mylab-px11.5-folder-map1a2b3c4d-s256-fov25",)
  c.data.stored_variants = ()
  # Further builder options, by domain: a builder's name ("synthetic_wbc") applies to all its domains, a full
  # registry name ("synthetic_wbc/matek19_like") to that one and wins over the builder's. They select the stored
  # variant, as launch/build_data.py's flags of the same name built it; e.g. train on Acevedo without its odd-sized
  # images with --config.data.domain_options.acevedo20.drop_odd_sized=True. image_size, fov_um and scale come from
  # the fields above (wbcdg_jax/experiment.py:builder_options, domain_options_problems).
  c.data.domain_options = ml_collections.ConfigDict({"acevedo20": {"drop_odd_sized": False}})
  c.data.num_folds = 5
  c.data.fold = 0  # fold k of num_folds is the validation split of every domain
  c.data.target_split = "fold"  # 'fold': the target's fold-k part is its test split; 'all': all target images
  c.data.per_domain_batch = 32  # training images per source domain per step (total = this * len(sources))
  c.data.eval_batch = 128
  c.data.num_workers = 0  # grain worker processes (0 reads in the main process with threads)
  # Threads reading batches in each reading process, a whole batch each (so that many batches are read at once);
  # evaluation and the BoDA refresh read with as many in the trainer's process. On 2 CPU cores, 256 px records:
  # training batches of 64 with 0 workers and 2-4 threads 4,700-5,500 images/s, with 1-2 worker processes
  # 2,200-3,000 (each batch crosses to the trainer through new shared memory: ~17 ms to fill 12.6 MB of it, where
  # fresh private memory takes ~5); evaluation 4 threads 4,957, 16 threads 3,152. The benchmark times others.
  c.data.num_threads = 4
  c.data.prefetch = 2  # batches read and placed on the devices ahead by a thread (sharding.device_batches); 0: none

  c.model = ml_collections.ConfigDict()
  c.model.depth = 50
  c.model.image_size = 224  # px side fed to the network (after augmentation)
  c.model.bn_mode = "frozen"  # 'frozen': running statistics fixed, scale/bias trained; or 'train'
  c.model.dtype = "bfloat16"  # compute dtype; parameters and losses stay float32
  c.model.head = "mlp"  # 'linear' or 'mlp'
  c.model.mlp_width = 512
  c.model.dropout = 0.0  # feature dropout before the head (0 / 0.1 / 0.5 in the searches)
  # How the same function is computed (speed only; see wbcdg_jax/models/resnet.py and launch/benchmark.py):
  c.model.fold_frozen_bn = True  # frozen batch norm folded into its convolution: conv(x, W * m) + t
  # The stem's max pool: 'index', 'taps', 'window' or 'slices' (one function; models/resnet.py). 'index' against
  # 'taps': one H100, ERM at batch 256, 1.04x; 2 CPU cores 1.04x.
  c.model.max_pool = "index"
  # The stem's 7x7 stride-2 conv as a 4x4 conv over 2x2 pixel blocks: on one H100 1.08x (batch 64) and 1.05x
  # (256) faster steps, and a batch-64 step compiles in ~25 s instead of ~115 s; about 1.0x on a CPU.
  c.model.stem_space_to_depth = True
  c.model.relu_grad_from_output = True  # ReLU derivative from its output: lets cuDNN fuse conv + bias + ReLU

  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ""  # converted ImageNet weights (launch/convert_weights.py); '' = random init (warned)
  c.init.stage1_workdir = ""  # decoupled stage 2: the stage-1 run to load the encoder from

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"  # 'adam' or 'adamw'
  c.optim.lr = 5e-5
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 0.0  # global-norm clipping; 0 disables it
  # Run the optimizer on one vector of all parameters (optax.flatten): a few large kernels instead of one or more
  # per parameter array (the same update; the checkpointed moments are one vector, so resume with the same value).
  c.optim.flatten = False

  c.train = ml_collections.ConfigDict()
  c.train.steps = 5001
  c.train.log_every = 50
  c.train.eval_every = 300  # source-validation evaluation (and model selection) cadence
  c.train.checkpoint_every = 300
  c.train.keep_checkpoints = 2
  c.train.on_nonfinite = "stop"  # 'stop' the run naming the step, or 'skip' the update and count it
  # Also drop an update whose new parameters overflow though its loss and gradient are finite (a learning rate
  # near float32's limit). Then XLA must write the whole new state before choosing between it and the old one;
  # without the check the choice fuses into the optimizer update (CPU quick-preset step 1.10x). Unchecked, such an
  # overflow fails the next step's loss, and the trainer never saves or keeps parameters that are not finite.
  c.train.check_updated_params = False
  # Update the state in place (jit buffer donation): the step needs no second copy of parameters and Adam moments.
  # XLA:CPU then copies each moment before the update that overwrites it (the quick presets turn this off).
  c.train.donate_state = True
  # Keep the convolution kernels output-channel-major in device memory (cuDNN's filter layout): the optimizer
  # update then runs elementwise in place, without XLA:GPU's per-kernel transposes and copies into the donated
  # state (wbcdg_jax/sharding.py:state_shardings). Same values; checkpoints unchanged. 'auto': on GPUs (one H100,
  # ERM at batch 256: 1.02x), off elsewhere (2 CPU cores: 0.89x; TPUs not timed); or 'true' / 'false'.
  c.train.o_major_kernels = "auto"
  # On CPUs, let XLA hand convolutions to YNNPACK (its default in JAX 0.10). Off: on 2 AVX2 cores YNNPACK's
  # convolutions were 1.3-19x slower than XLA's own (weight gradients the worst), the quick preset's step 2.0x
  # (wbcdg_jax/xla_options.py). No effect on GPUs and TPUs.
  c.train.cpu_ynn_convolutions = False
  # On GPUs, what XLA records into CUDA graphs (launched by one call each): 'xla' (its default) or 'all' (also the
  # cuDNN convolutions and cuBLASLt matrix products, which it launches one by one: on one H100 at total batch 64
  # the host spent 6.5-7.1 ms of a 10.3 ms BoDA step launching it; wbcdg_jax/xla_options.py). Not timed yet.
  c.train.gpu_command_buffers = "xla"

  c.augment = ml_collections.ConfigDict()
  c.augment.enabled = True
  c.augment.crop_scale = (0.7, 1.0)
  c.augment.hflip = True
  c.augment.vflip = True
  c.augment.rotate_degrees = 180.0
  c.augment.brightness = 0.3
  c.augment.contrast = 0.3
  c.augment.saturation = 0.3
  c.augment.hue = 0.3
  c.augment.grayscale_p = 0.1
  c.augment.blur_p = 0.5

  # Loss terms. Every algorithm reads only the fields its table entry names (wbcdg_jax/algorithms.py).
  c.coral = ml_collections.ConfigDict()
  c.coral.weight = 1.0  # DomainBed mmd_gamma for CORAL; BoDA's macro_weight
  c.mmd = ml_collections.ConfigDict()
  c.mmd.weight = 1.0
  c.dann = ml_collections.ConfigDict()
  c.dann.weight = 1.0  # weight of the domain-adversarial loss
  c.dann.schedule = "ganin"  # 'ganin': lambda_p = 2 / (1 + exp(-10 p)) - 1; 'constant': lambda = dann.lambda_
  c.dann.lambda_ = 1.0
  c.dann.width = 256
  c.dann.depth = 3
  c.dann.dropout = 0.0
  c.dann.lr = 5e-5  # discriminator learning rate
  c.boda = ml_collections.ConfigDict()
  c.boda.weight = 0.1
  c.boda.nu = 0.5
  c.boda.temperature = 1.0
  c.boda.momentum = 0.2
  c.boda.start_step = 500
  c.boda.feat_update_freq = 120
  c.boda.metric = "euclidean"  # 'euclidean' or 'mahalanobis'
  c.boda.covariance = "diag"  # Mahalanobis only: 'diag' or 'full' (shrunk)
  # Mahalanobis only: weight of the scaled identity in the shrunk covariance: 'auto' (Ledoit-Wolf for 'full',
  # 0.1 for 'diag'), 'ledoit_wolf', or a number in [0, 1].
  c.boda.shrinkage = "auto"
  c.decoupled = ml_collections.ConfigDict()
  c.decoupled.steps = 1000  # stage-2 (classifier re-training) steps
  c.decoupled.lr = 5e-5
  return c


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
  """Applies the scale preset named after the colon in `--config=configs/X.py:PRESET`."""
  preset = preset or "paper"
  if preset not in PRESETS:
    raise ValueError(f"unknown config preset {preset!r}; choose one of {PRESETS}")
  c.workdir = f"runs/{c.algorithm}_{preset}"
  if preset in ("quick", "tiny"):
    c.data.stored_size = 64
    c.data.num_folds = 2
    c.data.per_domain_batch = 12
    c.data.eval_batch = 64
    c.model.depth = 10
    c.model.image_size = 64
    c.model.dtype = "float32"  # bfloat16 convolutions are slow on CPUs
    # Two implementation choices for CPUs (same function; ERM step, 2 cores, one run of the benchmark's variants):
    # donating the state made XLA:CPU copy each Adam moment before overwriting it (1.08x faster without; the
    # model is small, so a second copy of the state costs little memory), and the plain 7x7 stride-2 stem ran
    # 1.13x faster than the space-to-depth one, which is the faster one on GPUs.
    c.train.donate_state = False
    c.model.stem_space_to_depth = False
    c.optim.lr = 1e-3  # from scratch, no ImageNet weights: a larger step size
    c.dann.lr = 1e-3
    c.decoupled.lr = 1e-3
    # 200 steps of 24 images (~2 min on 2 cores) keep a 4-algorithm x 2-fold comparison under 20 minutes.
    c.train.steps = 200
    c.train.log_every = 10
    c.train.eval_every = 50
    c.train.checkpoint_every = 100
    c.boda.start_step = 60
    c.boda.feat_update_freq = 40
    c.decoupled.steps = 100
  if preset == "tiny":
    c.data.synthetic_scale = 0.004
    c.data.stored_size = 32
    c.data.per_domain_batch = 4
    c.data.eval_batch = 16
    c.model.depth = 10
    c.model.image_size = 32
    c.model.mlp_width = 32
    c.dann.width = 16
    c.train.steps = 4
    c.train.log_every = 1
    c.train.eval_every = 2
    c.train.checkpoint_every = 2
    c.boda.start_step = 2
    c.boda.feat_update_freq = 2
    c.decoupled.steps = 2
  return c
