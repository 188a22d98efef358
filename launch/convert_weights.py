r"""Converts ImageNet ResNet weights into the encoder init file that `--config.init.checkpoint` reads.

  python launch/convert_weights.py --input resnet50-11ad3fa6.pth --depth 50 --output weights/resnet50_init.npz
  python launch/convert_weights.py --input resnet50.safetensors --depth 50 --output weights/resnet50_init.npz
  python launch/convert_weights.py --input resnet50_weights_tf_dim_ordering_tf_kernels.h5 --depth 50 \
      --output weights/resnet50_keras_init.npz --allow_keras_v1

torchvision files (.pth/.pt/.bin need PyTorch; .safetensors needs only the safetensors package) load exactly.
Keras ResNet50 .h5 files are ResNet v1 and differ from this v1.5 model (see wbcdg_jax/weights/keras.py); they are
refused unless --allow_keras_v1 is given.
"""

import argparse
import os
import sys

import _paths  # noqa: F401  (repository root on sys.path)

from wbcdg_jax import weights
from wbcdg_jax.weights import tree as tree_lib


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True, help="torchvision .pth/.pt/.bin/.safetensors/.npz or Keras .h5")
  parser.add_argument("--depth", type=int, required=True, help="ResNet depth of the model to train (e.g. 50)")
  parser.add_argument("--output", required=True, help="the .npz to write (pass it as --config.init.checkpoint)")
  parser.add_argument("--format", choices=("auto", "torchvision", "keras"), default="auto",
                      help="input format; auto: .h5 is Keras, anything else torchvision")
  parser.add_argument("--include_head", action="store_true",
                      help="also store the ImageNet classifier (fc / predictions); training ignores it")
  parser.add_argument("--allow_keras_v1", action="store_true",
                      help="load Keras ResNet v1 weights into the v1.5 model although they differ (stride placement)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  fmt = args.format
  if fmt == "auto":
    fmt = "keras" if args.input.lower().endswith((".h5", ".hdf5")) else "torchvision"
  try:
    if fmt == "keras":
      params, stats, head = weights.keras_resnet_to_flax(weights.read_keras_h5(args.input), depth=args.depth,
                                                         allow_v1_stride=args.allow_keras_v1)
    else:
      params, stats, head = weights.torchvision_to_flax(weights.read_state_dict(args.input), depth=args.depth)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  path = weights.save_encoder_init(args.output, params, stats, depth=args.depth,
                                   head=head if args.include_head else None,
                                   source=f"{fmt}:{os.path.basename(args.input)}")
  n = sum(v.size for v in tree_lib.flatten(params).values())
  print(f"wrote {path}: ResNet-{args.depth} encoder, {n:,} parameters, {len(tree_lib.flatten(stats))} batch "
        f"statistics{', with the source classifier' if args.include_head and head else ''}\n"
        f"train from it with --config.init.checkpoint={path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
