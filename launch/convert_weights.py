r"""Converts ImageNet ResNet weights into the encoder init file that `--config.init.checkpoint` reads.

  python launch/convert_weights.py --input resnet50-11ad3fa6.pth --depth 50 --output weights/resnet50_init.npz
  python launch/convert_weights.py --input resnet50.safetensors --depth 50 --output weights/resnet50_init.npz
  python launch/convert_weights.py --input resnet50_weights_tf_dim_ordering_tf_kernels.h5 --depth 50 \
      --output weights/resnet50_keras_init.npz --allow_keras_v1

torchvision files (.pth/.pt/.bin need PyTorch; .safetensors needs only the safetensors package) load exactly.
Keras ResNet50 .h5 files are ResNet v1 and differ from this v1.5 model (see wbcdg_jax/weights/keras.py); they are
refused unless --allow_keras_v1 is given.
"""

import os
import sys

import _paths  # noqa: F401  (repository root on sys.path)
from absl import app, flags

from wbcdg_jax import weights
from wbcdg_jax.weights import tree as tree_lib

_INPUT = flags.DEFINE_string("input", None, "torchvision .pth/.pt/.bin/.safetensors/.npz or Keras .h5")
_DEPTH = flags.DEFINE_integer("depth", None, "ResNet depth of the model to train (e.g. 50)")
_OUTPUT = flags.DEFINE_string("output", None, "the .npz to write (pass it as --config.init.checkpoint)")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", "torchvision", "keras"],
                            "input format; auto: .h5 is Keras, anything else torchvision")
_INCLUDE_HEAD = flags.DEFINE_bool("include_head", False,
                                  "also store the ImageNet classifier (fc / predictions); training ignores it")
_ALLOW_KERAS_V1 = flags.DEFINE_bool(
    "allow_keras_v1", False,
    "load Keras ResNet v1 weights into the v1.5 model although they differ (stride placement)")
flags.mark_flags_as_required(["input", "depth", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  source, depth = _INPUT.value, _DEPTH.value
  fmt = _FORMAT.value
  if fmt == "auto":
    fmt = "keras" if source.lower().endswith((".h5", ".hdf5")) else "torchvision"
  try:
    if fmt == "keras":
      params, stats, head = weights.keras_resnet_to_flax(weights.read_keras_h5(source), depth=depth,
                                                         allow_v1_stride=_ALLOW_KERAS_V1.value)
    else:
      params, stats, head = weights.torchvision_to_flax(weights.read_state_dict(source), depth=depth)
  except (ValueError, FileNotFoundError, ImportError) as e:
    sys.exit(f"error: {e}")  # exit status 1, the message on stderr
  include_head = _INCLUDE_HEAD.value
  path = weights.save_encoder_init(_OUTPUT.value, params, stats, depth=depth, head=head if include_head else None,
                                   source=f"{fmt}:{os.path.basename(source)}")
  n = sum(v.size for v in tree_lib.flatten(params).values())
  print(f"wrote {path}: ResNet-{depth} encoder, {n:,} parameters, {len(tree_lib.flatten(stats))} batch "
        f"statistics{', with the source classifier' if include_head and head else ''}\n"
        f"train from it with --config.init.checkpoint={path}")


if __name__ == "__main__":
  app.run(main)
