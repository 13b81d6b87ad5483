"""The Flax FID Inception against pytorch-fid itself: its network built with random weights (no
download), its state dict saved as a .pth, converted, and the pool3 features compared in float32,
through pytorch-fid's own resize / normalize (any input size) and its PNG -> ToTensor reading."""
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")   # conftest.py: also without its C extension
if not hasattr(torchvision, "__version__"):      # registered bare: pytorch-fid reads the version
    import importlib.metadata
    torchvision.__version__ = importlib.metadata.version("torchvision")
pytest.importorskip("pytorch_fid")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402
from pytorch_fid import inception as pfi  # noqa: E402

from diffjax.convert import inception as convert  # noqa: E402
from diffjax.convert.state_dict import ConvertError  # noqa: E402
from diffjax.metrics import fid, inception  # noqa: E402

REL = 1e-5   # float32, 47 conv layers summed in other orders: measured 3e-7


def random_fid_inception(seed: int = 0):
    """pytorch-fid's ``fid_inception_v3()`` without its ``load_state_dict_from_url``: random He
    conv weights and random BatchNorm affine parameters and running statistics (so they matter)."""
    torch.manual_seed(seed)
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        net.fc.weight.normal_(0.0, 1.0 / math.sqrt(2048))
        net.fc.bias.normal_(0.0, 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    net = random_fid_inception()
    path = str(tmp_path_factory.mktemp("inception") / inception.FID_WEIGHTS)
    torch.save(net.state_dict(), path)
    mp = pytest.MonkeyPatch()
    mp.setattr(pfi, "fid_inception_v3", lambda: net)   # pytorch-fid's wrapper around our net
    wrapper = pfi.InceptionV3([3]).eval()
    raw = pfi.InceptionV3([3], resize_input=False, normalize_input=False).eval()
    mp.undo()
    return net, wrapper, raw, path, inception.load_params(path)


def torch_pool3(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous())[0][:, :, 0, 0].numpy()


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def apply():
    return jax.jit(lambda v, x: inception.InceptionV3().apply(v, x, True))


@pytest.mark.parametrize("hw", [(299, 299), (32, 32), (64, 48), (400, 333)])
def test_pool3_and_logits_equal_pytorch_fid(nets, apply, hw):
    net, wrapper, _, _, variables = nets
    x = np.random.default_rng(hw[0] * hw[1]).uniform(size=(2, *hw, 3)).astype(np.float32)
    want = torch_pool3(wrapper, x)
    pool3, logits = apply(variables, jnp.asarray(x))
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert want.std() > 0.1 and rel_err(want[0], want[1]) > 100 * REL   # inputs are told apart
    assert rel_err(pool3, want) < REL, np.abs(np.asarray(pool3) - want).max()
    with torch.no_grad():
        want_logits = net.fc(torch.from_numpy(want)).numpy()
    assert rel_err(logits, want_logits) < REL


def test_uint8_path_equals_pytorch_fid_reading_saved_pngs(nets, tmp_path):
    """Samples in [-1, 1] saved as EDM saves them (x * 127.5 + 128, cast to uint8), read back by
    pytorch-fid's dataset (PIL -> ToTensor); our Features quantize on the fly."""
    from PIL import Image
    import torchvision.transforms as T
    from pytorch_fid.fid_score import ImagePathDataset

    _, wrapper, _, _, variables = nets
    x = np.random.default_rng(1).uniform(-1.1, 1.1, size=(3, 40, 40, 3)).astype(np.float32)
    u8 = np.clip(x * 127.5 + 128, 0, 255).astype(np.uint8)
    files = []
    for i, im in enumerate(u8):
        files.append(os.path.join(tmp_path, f"{i}.png"))
        Image.fromarray(im).save(files[-1])
    ds = ImagePathDataset(files, transforms=T.ToTensor())
    with torch.no_grad():
        want = wrapper(torch.stack([ds[i] for i in range(len(ds))]))[0][:, :, 0, 0].numpy()
    feats = fid.inception_features(variables, batch_size=2)       # 3 images: one padded batch
    got = feats(x)
    assert rel_err(got, want) < REL
    np.testing.assert_array_equal(feats(u8), got)                 # uint8 input: the same images
    unq = fid.inception_features(variables, batch_size=2, quantize=False)(x)
    assert rel_err(unq, want) > 10 * REL                          # quantization is visible


def test_tf_convention_equals_the_stylegan_edm_detector_preprocessing(nets, apply):
    """'tf': TF1 resize alignment (the StyleGAN2-ADA / EDM detector's affine_grid + grid_sample
    emulation, written out here) and (x - 128) / 128 on [0, 255]."""
    _, _, raw, _, variables = nets
    x = np.random.default_rng(2).uniform(size=(2, 32, 48, 3)).astype(np.float32)
    img = torch.from_numpy(x * 255).permute(0, 3, 1, 2)
    b, c, h, w = img.shape
    theta = torch.eye(2, 3)
    theta[0, 2] += theta[0, 0] / w - theta[0, 0] / 299
    theta[1, 2] += theta[1, 1] / h - theta[1, 1] / 299
    grid = torch.nn.functional.affine_grid(theta.unsqueeze(0).repeat(b, 1, 1), [b, c, 299, 299],
                                           align_corners=False)
    y = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border",
                                        align_corners=False)
    resized = y.permute(0, 2, 3, 1).numpy()
    ours = inception.resize_bilinear(jnp.asarray(x * 255), (299, 299), "tf1")
    assert np.abs(np.asarray(ours) - resized).max() < 4e-3          # on the [0, 255] scale
    want = torch_pool3(raw, (resized - 128) / 128)
    got = jax.jit(lambda v, a: inception.InceptionV3(convention="tf").apply(v, a))(variables, x)
    assert rel_err(got, want) < REL
    assert rel_err(apply(variables, x)[0], want) > 10 * REL         # the conventions differ


@pytest.mark.parametrize("hw,out", [((32, 32), (299, 299)), ((512, 384), (299, 299)),
                                    ((17, 90), (40, 41)), ((299, 299), (299, 299))])
def test_half_pixel_resize_equals_torch_interpolate(hw, out):
    x = np.random.default_rng(3).normal(size=(2, *hw, 3)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out,
                                           mode="bilinear", align_corners=False)
    got = inception.resize_bilinear(jnp.asarray(x), out, "half_pixel")
    np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), rtol=0, atol=2e-6)


def test_parameter_count_equals_torch(nets):
    net, _, _, _, variables = nets
    n_torch = sum(p.numel() for p in net.parameters())
    n_ours = sum(a.size for a in jax.tree.leaves(variables["params"]))
    # torchvision's Inception3 (27,161,264) minus its aux head (3,326,696), 1008 classes (+8 * 2049)
    assert n_ours == n_torch == 27_161_264 - 3_326_696 + 8 * 2049
    n_stats = sum(a.size for a in jax.tree.leaves(variables["batch_stats"]))
    assert n_stats == sum(b.numel() for k, b in net.state_dict().items()
                          if k.endswith(("running_mean", "running_var")))


def test_convert_errors_name_the_key(nets):
    _, _, _, path, _ = nets
    sd = {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}
    missing = dict(sd)
    del missing["Mixed_6b.branch7x7_2.conv.weight"]
    with pytest.raises(ConvertError, match=r"missing tensor 'Mixed_6b\.branch7x7_2\.conv\.weight'"):
        convert.convert(missing)
    bad = dict(sd, **{"Mixed_7c.branch3x3_2a.conv.weight": np.zeros((384, 384, 3, 1), np.float32)})
    with pytest.raises(ConvertError, match=r"'Mixed_7c\.branch3x3_2a\.conv\.weight' has shape "
                                           r"\(384, 384, 3, 1\).*\(384, 384, 1, 3\)"):
        convert.convert(bad)
    wrong_fc = dict(sd, **{"fc.weight": np.zeros((1000, 2048), np.float32)})
    with pytest.raises(ConvertError, match=r"'fc\.weight' has shape \(1000, 2048\)"):
        convert.convert(wrong_fc)
    extra = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1008, 768), np.float32)})
    with pytest.raises(ConvertError, match="AuxLogits.fc.weight"):
        convert.convert(extra)


def test_load_params_reads_pth_and_converted_files_alike(nets, tmp_path):
    _, _, _, path, variables = nets
    for name in ("v.safetensors", "v.npz"):
        inception.save_params(str(tmp_path / name), variables)
        again = inception.load_params(str(tmp_path / name))
        fa, fb = (traverse_util.flatten_dict(t) for t in (again, variables))
        assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
