"""Pretrained weights: converters from torchvision / Keras ResNets and the encoder init file the trainer loads.

    params, stats, head = torchvision_to_flax(read_state_dict("resnet50.pth"), depth=50)
    save_encoder_init("init.npz", params, stats, depth=50)
    enc_params, enc_stats = load_encoder_init("init.npz", depth=50)   # in train setup

PyTorch (for `.pth`), safetensors and h5py (for Keras) are imported only inside the readers that need them.
"""

from wbcdg_jax.weights.init_file import (RANDOM_INIT_WARNING, load_encoder_init, read_init_file,
                                         save_encoder_init, warn_random_init)
from wbcdg_jax.weights.keras import keras_resnet_to_flax, read_keras_h5
from wbcdg_jax.weights.torchvision import read_state_dict, torchvision_to_flax

__all__ = ["RANDOM_INIT_WARNING", "keras_resnet_to_flax", "load_encoder_init", "read_init_file", "read_keras_h5",
           "read_state_dict", "save_encoder_init", "torchvision_to_flax", "warn_random_init"]
