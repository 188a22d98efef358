"""Converted torchvision / Keras ResNet weights reproduce a PyTorch reference forward pass.

The references live in tests/torch_resnet_reference.py (torchvision's module names and shapes, random weights);
equality of logits within 1e-4 is the proof that the key mapping and layouts are right.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wbcdg_jax.models import Classifier
from wbcdg_jax.weights import (keras_resnet_to_flax, load_encoder_init, read_init_file, read_keras_h5,
                               read_state_dict, save_encoder_init, torchvision_to_flax, warn_random_init)
from wbcdg_jax.weights import tree as tree_lib
from wbcdg_jax.weights.keras import IMAGENET_MEAN, IMAGENET_STD

torch = pytest.importorskip("torch")
ref = pytest.importorskip("tests.torch_resnet_reference")

TOL = 1e-4


def _images(seed=0, n=2, size=64):
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _nchw(x):
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module", params=[18, 50])
def reference(request):
  """(depth, torch model with randomised stats, numpy state_dict, images NHWC)."""
  torch.manual_seed(request.param)
  model = ref.TorchvisionResNet(request.param)
  images = _images(request.param)
  ref.randomize_(model, _nchw(_images(100 + request.param, n=4)), seed=request.param)
  return request.param, model, ref.state_dict_numpy(model), images


def _variables(params, stats, head):
  return {"params": {"encoder": params, "head": head}, "batch_stats": {"encoder": stats}}


def test_resnet50_parameter_count_matches_torchvision():
  model = ref.TorchvisionResNet(50)
  assert sum(p.numel() for p in model.parameters()) == 25_557_032
  params, stats, head = torchvision_to_flax(ref.state_dict_numpy(model), depth=50)
  n = sum(v.size for v in tree_lib.flatten(params).values()) + sum(v.size for v in tree_lib.flatten(head).values())
  assert n == 25_557_032


def test_eval_mode_logits_match_torch(reference):
  depth, model, state_dict, images = reference
  params, stats, head = torchvision_to_flax(state_dict, depth=depth)
  model.eval()
  with torch.no_grad():
    want = model(_nchw(images)).numpy()
  clf = Classifier(num_classes=1000, depth=depth, bn_mode="frozen", head="linear")
  _, got = clf.apply(_variables(params, stats, head), jnp.asarray(images), train=False)
  diff = np.abs(np.asarray(got) - want).max()
  print(f"ResNet-{depth} eval-mode max |logit diff| = {diff:.2e} (logit scale {np.abs(want).max():.2f})")
  assert np.abs(want).max() > 0.1  # a meaningful comparison, not of near-zero outputs
  assert diff < TOL


def test_train_mode_logits_and_running_stats_match_torch(reference):
  depth, model, state_dict, images = reference
  params, stats, head = torchvision_to_flax(state_dict, depth=depth)
  torch_model = ref.TorchvisionResNet(depth)
  torch_model.load_state_dict(model.state_dict())
  torch_model.train()
  # Record n = batch * H * W seen by every BN, to account for PyTorch's unbiased running_var update.
  counts = {}
  record = lambda name: lambda mod, inp, out: counts.__setitem__(name, inp[0].shape[0] * inp[0][0, 0].numel())
  hooks = [m.register_forward_hook(record(name)) for name, m in torch_model.named_modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    want = torch_model(_nchw(images)).numpy()
  for h in hooks:
    h.remove()
  clf = Classifier(num_classes=1000, depth=depth, bn_mode="train", head="linear")
  (_, got), updates = clf.apply(_variables(params, stats, head), jnp.asarray(images), train=True,
                                mutable=["batch_stats"])
  diff = np.abs(np.asarray(got) - want).max()
  print(f"ResNet-{depth} train-mode max |logit diff| = {diff:.2e} (logit scale {np.abs(want).max():.2f})")
  assert diff < TOL
  _, new_torch_stats, _ = torchvision_to_flax(ref.state_dict_numpy(torch_model), depth=depth)
  new_torch_flat = tree_lib.flatten(new_torch_stats)
  new_flax = tree_lib.flatten(jax.tree.map(np.asarray, updates["batch_stats"]["encoder"]))
  old = tree_lib.flatten(stats)
  for path, value in new_flax.items():
    if path.endswith("mean"):
      np.testing.assert_allclose(value, new_torch_flat[path], atol=1e-4, rtol=1e-4, err_msg=path)
    else:
      # torch: 0.9 old + 0.1 * unbiased var; Flax: 0.9 old + 0.1 * biased var (= unbiased * (n - 1) / n).
      module = path.rsplit("/", 1)[0]  # e.g. layer2_0/downsample_bn -> layer2.0.downsample.1
      torch_name = module.replace("downsample_bn", "downsample.1").replace("_", ".").replace("/", ".")
      n = counts[torch_name]
      torch_batch_var = (new_torch_flat[path] - 0.9 * old[path]) / 0.1
      expected = 0.9 * old[path] + 0.1 * torch_batch_var * (n - 1) / n
      np.testing.assert_allclose(value, expected, atol=1e-4, rtol=1e-4, err_msg=path)


def test_converter_names_every_bad_key():
  model = ref.TorchvisionResNet(18)
  sd = ref.state_dict_numpy(model)
  del sd["layer2.0.bn1.running_var"]
  sd["layer1.0.conv2.weight"] = sd["layer1.0.conv2.weight"][:, :32]
  sd["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  sd["extra.thing"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError) as info:
    torchvision_to_flax(sd, depth=18)
  message = str(info.value)
  for expected in ("missing batch_stats/layer2_0/bn1/var", "'layer1.0.conv2.weight'", "'layer9.0.conv1.weight'",
                   "unknown key 'extra.thing'"):
    assert expected in message
  with pytest.raises(ValueError, match="ResNet-50"):
    torchvision_to_flax(ref.state_dict_numpy(model), depth=50)  # basic blocks do not fit a bottleneck model


def test_converter_layout_and_module_prefix():
  model = ref.TorchvisionResNet(10, num_classes=7)
  sd = ref.state_dict_numpy(model)
  params, stats, head = torchvision_to_flax({f"module.{k}": v for k, v in sd.items()}, depth=10)
  np.testing.assert_array_equal(params["layer2_0"]["downsample_conv"]["kernel"],
                                sd["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["layer3_0"]["bn2"]["scale"], sd["layer3.0.bn2.weight"])
  np.testing.assert_array_equal(stats["layer4_0"]["downsample_bn"]["var"], sd["layer4.0.downsample.1.running_var"])
  np.testing.assert_array_equal(head["out"]["kernel"], sd["fc.weight"].T)
  no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
  assert torchvision_to_flax(no_fc, depth=10)[2] is None


@pytest.mark.parametrize("fmt", ["pth", "wrapped_pth", "safetensors", "npz"])
def test_read_state_dict_formats(tmp_path, fmt):
  model = ref.TorchvisionResNet(10, num_classes=5)
  sd = ref.state_dict_numpy(model)
  path = str(tmp_path / f"w.{fmt.split('_')[-1]}")
  if fmt == "pth":
    torch.save(model.state_dict(), path)
  elif fmt == "wrapped_pth":
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, path)
  elif fmt == "safetensors":
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, path)
  else:
    np.savez(path, **sd)
  loaded = read_state_dict(path)
  assert set(loaded) == set(sd)
  for k in sd:
    np.testing.assert_array_equal(np.asarray(loaded[k], sd[k].dtype), sd[k])
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    read_state_dict(tmp_path / "nope.pth")


def test_init_file_round_trip_and_validation(tmp_path):
  model = ref.TorchvisionResNet(10, num_classes=5)
  params, stats, head = torchvision_to_flax(ref.state_dict_numpy(model), depth=10)
  path = save_encoder_init(tmp_path / "init", params, stats, depth=10, head=head, source="test")
  assert path.endswith(".npz")
  p2, s2 = load_encoder_init(path, depth=10)
  for a, b in zip(jax.tree.leaves((params, stats)), jax.tree.leaves((p2, s2))):
    np.testing.assert_array_equal(a, b)
  meta, parts = read_init_file(path)
  assert meta["depth"] == 10 and meta["source"] == "test" and "out/kernel" in parts["head"]
  # The loaded tree has exactly the structure Classifier.init creates for the encoder.
  init = jax.eval_shape(lambda: Classifier(num_classes=5, depth=10).init(jax.random.key(0),
                                                                         jnp.zeros((1, 32, 32, 3))))
  assert jax.tree.structure(init["params"]["encoder"]) == jax.tree.structure(p2)
  assert jax.tree.structure(init["batch_stats"]["encoder"]) == jax.tree.structure(s2)
  with pytest.raises(ValueError, match="config.model.depth=18"):
    load_encoder_init(path, depth=18)
  bad = dict(tree_lib.flatten(params))
  bad["layer1_0/conv1/kernel"] = bad["layer1_0/conv1/kernel"][..., :3]
  del bad["bn1/scale"]
  bad_path = save_encoder_init(tmp_path / "bad.npz", tree_lib.unflatten(bad), stats, depth=10)
  with pytest.raises(ValueError) as info:
    load_encoder_init(bad_path, depth=10)
  assert "params/layer1_0/conv1/kernel" in str(info.value) and "missing params/bn1/scale" in str(info.value)
  np.savez(tmp_path / "plain.npz", a=np.zeros(2))
  with pytest.raises(ValueError, match="no __meta__"):
    load_encoder_init(tmp_path / "plain.npz", depth=10)


def test_warn_random_init():
  with pytest.warns(RuntimeWarning, match="RANDOM weights"):
    warn_random_init()


# ---------------------------------------------------------------- Keras


def _write_legacy_h5(path, layers, *, full_model):
  h5py = pytest.importorskip("h5py")
  with h5py.File(path, "w") as f:
    root = f.create_group("model_weights") if full_model else f
    names = ["input_1", "conv1_pad"] + list(layers)  # weightless layers are listed too in real files
    root.attrs["layer_names"] = [n.encode() for n in names]
    for name in names:
      group = root.create_group(name)
      fields = layers.get(name, {})
      group.attrs["weight_names"] = [f"{name}/{k}:0".encode() for k in fields]
      for k, v in fields.items():
        group.create_dataset(f"{name}/{k}:0", data=v)


def _write_keras3_h5(path, layers):
  """Keras 3 `.weights.h5` layout: layers/<snake-case class name>[_k]/vars/<i>."""
  h5py = pytest.importorskip("h5py")
  with h5py.File(path, "w") as f:
    top = f.create_group("layers")
    for i, fields in enumerate(layers.values()):
      group = top.create_group(f"layer_{i}").create_group("vars")
      for j, v in enumerate(fields.values()):
        group.create_dataset(str(j), data=v)


@pytest.fixture(scope="module")
def keras_reference():
  torch.manual_seed(3)
  model = ref.KerasResNetV1(stride_on="3x3")
  ref.randomize_(model, _nchw(_images(7, n=4)) * 60.0, seed=3)
  with torch.no_grad():
    model.predictions.weight.mul_(0.1)  # logits of order 1-10, like the torchvision references
  return model


def _caffe(images_uint8, caffe_mean_bgr):
  x = images_uint8[..., ::-1].astype(np.float32) - np.asarray(caffe_mean_bgr, np.float32)
  return _nchw(x)


def _normalised(images_uint8):
  return jnp.asarray((images_uint8 / 255.0 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD), jnp.float32)


@pytest.mark.parametrize("layout", ["weights_only", "full_model"])
def test_keras_h5_reader(tmp_path, keras_reference, layout):
  layers = keras_reference.layer_weights()
  path = tmp_path / "resnet50.h5"
  _write_legacy_h5(path, layers, full_model=layout == "full_model")
  loaded = read_keras_h5(path)
  assert set(loaded) == set(layers)
  for name, fields in layers.items():
    assert list(loaded[name]) == list(fields)
    for k, v in fields.items():
      np.testing.assert_array_equal(loaded[name][k], v)


def test_keras3_weights_file_refused(tmp_path, keras_reference):
  path = tmp_path / "model.weights.h5"
  _write_keras3_h5(path, {k: v for k, v in list(keras_reference.layer_weights().items())[:3]})
  with pytest.raises(ValueError, match="Keras 3"):
    read_keras_h5(path)


def test_keras_v1_refused_without_opt_in(keras_reference):
  with pytest.raises(ValueError, match="v1.5"):
    keras_resnet_to_flax(keras_reference.layer_weights(), depth=50)


def test_keras_conversion_matches_keras_semantics(keras_reference):
  """Biases, epsilon, BGR/caffe input and names are exact; only the v1 stride and a border term differ."""
  images = np.random.default_rng(5).integers(0, 256, size=(2, 64, 64, 3)).astype(np.uint8)
  layers = keras_reference.layer_weights()
  clf = Classifier(num_classes=1000, depth=50, head="linear")
  exact_mean = tuple(255.0 * np.asarray(IMAGENET_MEAN)[::-1])  # caffe mean without a residual offset
  with torch.no_grad():
    want = keras_reference(_caffe(images, exact_mean)).numpy()
  params, stats, head = keras_resnet_to_flax(layers, depth=50, allow_v1_stride=True, caffe_mean_bgr=exact_mean)
  _, got = clf.apply(_variables(params, stats, head), _normalised(images))
  exact_diff = np.abs(np.asarray(got) - want).max()
  # The real Keras caffe mean leaves a sub-0.5-grey-level offset that differs only where conv1 meets padding.
  with torch.no_grad():
    want_real = keras_reference(_caffe(images, (103.939, 116.779, 123.68))).numpy()
  params, stats, head = keras_resnet_to_flax(layers, depth=50, allow_v1_stride=True)
  _, got_real = clf.apply(_variables(params, stats, head), _normalised(images))
  border_diff = np.abs(np.asarray(got_real) - want_real).max()
  # And the true Keras network (stride on the 1x1 conv) computes something else.
  v1 = ref.KerasResNetV1(stride_on="1x1")
  v1.load_state_dict(keras_reference.state_dict())
  v1.eval()
  with torch.no_grad():
    want_v1 = v1(_caffe(images, (103.939, 116.779, 123.68))).numpy()
  v1_diff = np.abs(np.asarray(got_real) - want_v1).max()
  scale = np.abs(want).max()
  print(f"Keras->Flax max |logit diff|: exact-offset {exact_diff:.2e}, real caffe mean {border_diff:.2e}, "
        f"vs true v1 stride {v1_diff:.2e} (logit scale {scale:.2f})")
  assert scale > 0.1
  assert exact_diff < TOL
  assert border_diff < 0.05 * scale
  assert v1_diff > 100 * exact_diff


def test_convert_weights_launcher(tmp_path):
  """launch/convert_weights.py in a child process: writes the init file, and a depth mismatch exits 1 naming
  the missing key."""
  from tests.test_predict import assert_help, run_launcher

  model = ref.TorchvisionResNet(10, num_classes=5)
  torch.save(model.state_dict(), tmp_path / "r10.pth")
  out = str(tmp_path / "init.npz")
  proc = run_launcher("convert_weights", "--input", str(tmp_path / "r10.pth"), "--depth", "10", "--output", out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--config.init.checkpoint=" + out in proc.stdout
  params, _ = load_encoder_init(out, depth=10)
  np.testing.assert_array_equal(params["conv1"]["kernel"],
                                model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0))
  assert not read_init_file(out)[1]["head"]  # the ImageNet head is left out by default
  with_head = str(tmp_path / "with_head.npz")
  proc = run_launcher("convert_weights", f"--input={tmp_path / 'r10.pth'}", "--depth=10", f"--output={with_head}",
                      "--format=torchvision", "--include_head")
  assert proc.returncode == 0 and "with the source classifier" in proc.stdout, proc.stderr[-3000:]
  assert read_init_file(with_head)[1]["head"]
  proc = run_launcher("convert_weights", "--input", str(tmp_path / "r10.pth"), "--depth", "18", "--output", out)
  assert proc.returncode == 1
  assert "error:" in proc.stderr and "missing params/layer1_1/conv1/kernel" in proc.stderr
  assert_help("convert_weights", "input", "depth", "output", "format", "include_head", "allow_keras_v1")
