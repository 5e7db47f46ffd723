"""models/torch_resnet.py: a torch ResNet in torchvision's layout (``benchmarks/torch_reference.py``'s
``TorchModel``, and a bottleneck ResNet written out here as torchvision's) converted to the Flax
variables of ucmkd_jax's ResNet ``Model`` must give the torch model's eval-mode forward to 1e-5 in
float32, with every BatchNorm running statistic moved off its init so that the batch_stats mapping is
exercised; plus the refusals and the 3 -> 1 channel adaptation of ``load_torch_resnet``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the converter tests need torch: pip install -e '.[bench]'")
from torch import nn  # noqa: E402

from benchmarks import torch_reference as tr  # noqa: E402
from ucmkd_jax.models import build_model, load_torch_resnet, torch_resnet_layout, torch_resnet_variables  # noqa: E402
from ucmkd_jax.models.resnet import ResNetEncoder  # noqa: E402

TOL = 1e-5


def _perturb(module: nn.Module, seed: int) -> nn.Module:
    """BatchNorm affine parameters and running statistics moved off their init (1, 0, 0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        if hasattr(module, "fc"):
            module.fc.bias.copy_(0.1 * torch.randn(module.fc.bias.shape, generator=g))
    return module.eval()


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("modality,shape", [("audio", (40, 36, 1)), ("video", (2, 32, 32, 3))])
def test_resnet18_forward_matches_torch(modality, shape):
    torch.manual_seed(0)
    net = _perturb(tr.build_model(modality, 5, width=4, stem="imagenet"), 1)
    state = net.state_dict()
    assert torch_resnet_layout(state) == {"stage_sizes": (2, 2, 2, 2), "block": "basic", "width": 4,
                                          "in_channels": shape[-1], "num_classes": 5}
    model = build_model(modality, shape, 5, width=4, stem="imagenet")
    variables = load_torch_resnet(model, jax.random.PRNGKey(0), state)
    x = np.random.default_rng(0).standard_normal((3,) + shape).astype(np.float32)
    x_torch = torch.from_numpy(np.moveaxis(x, -1, 1).copy())  # (B, C, [T,] H, W)
    with torch.no_grad():
        want_logits, want_z = net(x_torch).numpy(), net.forward_encoder(x_torch).numpy()
    logits, z, _ = jax.jit(lambda v, xx: model.apply(v, xx, train=False))(variables, jnp.asarray(x))
    assert _rel(z, want_z) < TOL and _rel(logits, want_logits) < TOL
    # The running statistics are those of the checkpoint (not the init's zeros and ones).
    np.testing.assert_array_equal(variables["batch_stats"]["stem_bn"]["var"], net.bn1.running_var.numpy())
    np.testing.assert_array_equal(variables["batch_stats"]["stage4_block1"]["proj_bn"]["mean"],
                                  net.layer4[0].downsample[1].running_mean.numpy())


class _Bottleneck(nn.Module):  # torchvision's: stride on the 3x3, expansion 4
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if stride != 1 or cin != 4 * planes:
            self.downsample = nn.Sequential(nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class _ResNetBottleneck(nn.Module):
    def __init__(self, width=4, stages=(2, 1, 1, 1), num_classes=3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = width
        for i, n in enumerate(stages):
            blocks = []
            for j in range(n):
                blocks.append(_Bottleneck(c, width * 2**i, 2 if i > 0 and j == 0 else 1))
                c = 4 * width * 2**i
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_bottleneck_forward_matches_torch():
    torch.manual_seed(0)
    net = _perturb(_ResNetBottleneck(), 2)
    state = net.state_dict()
    layout = torch_resnet_layout(state)
    assert (layout["stage_sizes"], layout["block"]) == ((2, 1, 1, 1), "bottleneck")
    variables = torch_resnet_variables(state)
    enc = ResNetEncoder(stage_sizes=(2, 1, 1, 1), block="bottleneck", width=4, stem="imagenet")
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    z = jax.jit(lambda v, xx: enc.apply(v, xx, train=False))(
        {"params": variables["params"]["encoder"], "batch_stats": variables["batch_stats"]}, jnp.asarray(x))
    logits = z @ variables["params"]["head"]["kernel"] + variables["params"]["head"]["bias"]
    with torch.no_grad():
        want = net(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
    assert _rel(logits, want) < TOL


def test_head_none_adapt_channels_and_refusals():
    torch.manual_seed(0)
    net = _perturb(tr.build_model("video", 1000, width=4), 3)  # an ImageNet-like classifier
    state = {"module." + k: v for k, v in net.state_dict().items()}
    audio = build_model("audio", (32, 32, 1), 6, width=4, stem="imagenet")
    rng = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="input channels"):
        load_torch_resnet(audio, rng, state, prefix="module.", head=None)
    v = load_torch_resnet(audio, rng, state, prefix="module.", head=None, in_channels="sum")
    np.testing.assert_allclose(v["params"]["encoder"]["stem_conv"]["kernel"][..., 0, :],
                               net.conv1.weight.detach().numpy().sum(axis=1).transpose(1, 2, 0), rtol=1e-6)
    init_head = audio.init(rng)["params"]["head"]
    np.testing.assert_array_equal(v["params"]["head"]["kernel"], init_head["kernel"])  # the model's own head kept
    video = build_model("video", (2, 32, 32, 3), 6, width=4, stem="imagenet")
    with pytest.raises(ValueError, match="does not fit"):  # a 1000-class head for a 6-class model
        load_torch_resnet(video, rng, state, prefix="module.")
    with pytest.raises(ValueError, match="does not fit"):  # another width
        load_torch_resnet(build_model("video", (2, 32, 32, 3), 6, width=8), rng, state, prefix="module.", head=None)
    with pytest.raises(ValueError, match="not a torchvision-layout ResNet"):
        torch_resnet_variables({"encoder.conv1.weight": np.zeros((4, 3, 7, 7))})
    with pytest.raises(ValueError, match="no place"):
        torch_resnet_variables({**net.state_dict(), "layer1.0.se.weight": torch.zeros(3)})
