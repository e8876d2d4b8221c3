"""``convert_torchvision_mobilenetv3 --download``: torchvision's ImageNet weights through
torch.hub's cache, checked against the sha256 prefix in their name; offline (torch.hub's
downloader is replaced), with the cache in a temporary $TORCH_HOME."""

import hashlib
import os
import pickle
import urllib.error
import urllib.parse

import pytest
import torch
import torchvision
from torch import nn

import d2_edwpose.modeling.backbone  # noqa: F401 (registers the backbones)
from d2_edwpose.tools.convert_torchvision_mobilenetv3 import main as convert_main
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_backbone

from test_mobilenetv3 import backbone_cfg

PROG = "python -m d2_edwpose.tools.convert_torchvision_mobilenetv3"
WEIGHTS = {
    "large": torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
    "small": torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1,
}


def _name(url):
    """The file name torch.hub caches ``url`` under."""
    return os.path.basename(urllib.parse.urlparse(url).path)


@pytest.fixture
def checkpoints(tmp_path, monkeypatch):
    """torch.hub's cache folder, empty, under a temporary $TORCH_HOME."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert torch.hub.get_dir() == str(folder.parent)  # torch.hub.set_dir was not called
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def no_download(monkeypatch):
    """Makes a download a test failure (not an error the tool could report)."""

    def download(url, *args, **kwargs):
        pytest.fail(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    monkeypatch.setattr(torch.hub, "urlopen", download)


def _random_weights(arch):
    """A state dict of torchvision's mobilenet_v3_<arch>, BatchNorm statistics included."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, f"mobilenet_v3_{arch}")(weights=None)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0.0, 0.2)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    return model.state_dict()


def _backbone(arch):
    model = nn.Module()  # holds it as a detector does: the .pkl's names are backbone.*
    model.backbone = build_backbone(backbone_cfg(arch))
    return model


@pytest.mark.parametrize("arch", ["large", "small"])
def test_download_converts_a_verified_cached_file(
    tmp_path, checkpoints, no_download, monkeypatch, capsys, arch
):
    state_dict = _random_weights(arch)
    pth = checkpoints / "weights.pth"
    torch.save(state_dict, pth)
    digest = hashlib.sha256(pth.read_bytes()).hexdigest()
    cached = pth.rename(checkpoints / f"mobilenet_v3_{arch}-{digest[:8]}.pth")
    # torchvision's Weights is a plain (not frozen) dataclass: the enum member's url is its.
    monkeypatch.setattr(
        WEIGHTS[arch].value, "url", f"https://download.pytorch.org/models/{cached.name}"
    )
    pkl = tmp_path / f"mobilenet_v3_{arch}.pkl"
    convert_main(["--download", arch, str(pkl)])
    assert f"from {cached} to {pkl}" in capsys.readouterr().out
    assert sorted(os.listdir(checkpoints)) == [cached.name]

    with open(pkl, "rb") as f:
        checkpoint = pickle.load(f)
    assert checkpoint["__author__"] == "torchvision"
    assert checkpoint["matching_heuristics"] is False
    model = _backbone(arch)
    DetectionCheckpointer(model).load(str(pkl))
    loaded = model.backbone.bottom_up.state_dict()
    expected = {
        name: tensor
        for name, tensor in state_dict.items()
        if name.startswith("features.") and not name.endswith("num_batches_tracked")
    }
    assert {"backbone.bottom_up." + name for name in loaded} == set(checkpoint["model"])
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.parametrize(
    "arch,content",
    [
        ("large", "random bytes"),
        ("small", "truncated state dict"),
        ("small", "other weights"),  # loads and converts: only the hash tells
    ],
)
def test_download_rejects_a_cached_file_its_name_does_not_match(
    tmp_path, checkpoints, no_download, arch, content
):
    cached = checkpoints / _name(WEIGHTS[arch].url)  # e.g. mobilenet_v3_large-8738ca79.pth
    if content == "random bytes":
        cached.write_bytes(os.urandom(4096))
    else:
        torch.save(_random_weights(arch), cached)
        if content == "truncated state dict":
            data = cached.read_bytes()
            cached.write_bytes(data[: len(data) // 2])
    pkl = tmp_path / "out.pkl"
    with pytest.raises(SystemExit) as exit_:
        convert_main(["--download", arch, str(pkl)])
    message = exit_.value.code
    assert message.startswith(f"{PROG}: error: {cached}: damaged or incomplete")
    assert "delete it so that it is downloaded again" in message
    assert not pkl.exists()
    assert cached.exists()  # the user decides


def test_download_failure_says_how_to_do_it_by_hand(tmp_path, checkpoints, monkeypatch):
    downloads = []

    def download(url, dst, hash_prefix=None, progress=True):
        downloads.append((url, dst, hash_prefix))
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    url = WEIGHTS["large"].url
    pkl = tmp_path / "out.pkl"
    with pytest.raises(SystemExit) as exit_:
        convert_main(["--download", "large", str(pkl)])
    cached = checkpoints / _name(url)
    # torch.hub was asked to check the download's hash.
    assert downloads == [(url, str(cached), "8738ca79")]
    message = exit_.value.code
    assert message.startswith(f"{PROG}: error: cannot download {url} (URLError: ")
    assert f"run `{PROG} mobilenet_v3_large-8738ca79.pth {pkl}`" in message
    assert f"place it in {checkpoints} " in message
    assert not pkl.exists()
    assert os.listdir(checkpoints) == []


@pytest.mark.parametrize(
    "args,error",
    [
        (["--download", "small", "in.pth"], "argument input: not allowed with argument --download"),
        (["--download", "medium"], "argument --download: invalid choice: 'medium'"),
        ([], "one of the arguments --download input is required"),
    ],
)
def test_download_usage_errors(tmp_path, capsys, args, error):
    with pytest.raises(SystemExit) as exit_:
        convert_main(args + [str(tmp_path / "out.pkl")])
    assert exit_.value.code == 2
    assert error in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
