"""Published SSL checkpoint layouts, written as fixtures with torch.save, loaded into torchvision ResNets."""

import pytest
import torch
import torchvision

from kdutils.errors import MissingDataError
from kdutils.ssl_checkpoints import CheckpointError, backbone_state_dict, detect_format, load_ssl_resnet

LIGHTLY_CHILD = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def _reference(arch="resnet18", seed=0):
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None)
    return model, {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def _moco(backbone, fc):
    """Official MoCo-v2: encoder_q with its MLP head in fc.*, the key encoder and the queue beside it."""
    sd = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    sd.update({f"module.encoder_k.{k}": v + 1 for k, v in backbone.items()})
    sd.update({"module.encoder_q.fc.0.weight": fc, "module.encoder_q.fc.0.bias": torch.zeros(len(fc)),
               "module.queue": torch.randn(8, 4), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}


def _backbone_nested(backbone, fc):
    """mmselfsup / solo-learn: backbone.* beside neck/projector/momentum copies, under state_dict."""
    sd = {f"backbone.{k}": v for k, v in backbone.items()}
    sd.update({f"momentum_backbone.{k}": v * 0 for k, v in backbone.items()})
    sd.update({"projector.0.weight": fc, "neck.mlp.0.weight": fc, "classifier.weight": fc})
    return {"meta": {"epoch": 200}, "state_dict": sd}


def _backbone_flat(backbone, fc):
    sd = {f"backbone.{k}": v for k, v in backbone.items()}
    sd["head.predictor.weight"] = fc
    return sd


def _lightly(backbone, fc):
    """lightly: backbone = nn.Sequential(*list(resnet.children())[:-1]) -> numeric child names."""
    sd = {}
    for k, v in backbone.items():
        first, _, rest = k.partition(".")
        sd[f"backbone.{LIGHTLY_CHILD[first]}.{rest}"] = v
    sd["projection_head.layers.0.weight"] = fc
    return {"state_dict": sd, "hyper_parameters": {"lr": 0.1}}


@pytest.mark.parametrize("writer,fmt", [(_moco, "moco"), (_backbone_nested, "backbone"),
                                        (_backbone_flat, "backbone"), (_lightly, "lightly")])
def test_each_format_round_trips_into_resnet18(tmp_path, writer, fmt):
    model, backbone = _reference()
    path = tmp_path / "ckpt.pth"
    torch.save(writer(backbone, torch.randn(16, 512)), path)
    loaded, report = load_ssl_resnet(path, "resnet18")
    assert report["format"] == fmt and report["tensors_loaded"] == len(backbone)
    assert isinstance(loaded.fc, torch.nn.Identity) and not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    model.fc = torch.nn.Identity()
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x)) and loaded(x).shape == (2, 512)


def test_plain_torchvision_state_dict_with_module_prefix(tmp_path):
    model, backbone = _reference()
    full = {f"module.{k}": v for k, v in model.state_dict().items()}  # with its fc
    path = tmp_path / "plain.pt"
    torch.save(full, path)
    _, report = load_ssl_resnet(path, "resnet18")
    assert report["format"] == "torchvision" and report["stripped"] == 2


def test_real_resnet50_round_trip_official_moco_layout(tmp_path):
    model, backbone = _reference("resnet50", seed=1)
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(_moco(backbone, torch.randn(2048, 2048)), path)
    loaded, report = load_ssl_resnet(path, "resnet50")
    assert report["format"] == "moco" and report["tensors_loaded"] == len(backbone)
    model.fc = torch.nn.Identity()
    model.eval()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        out = loaded(x)
        assert out.shape == (1, 2048) and torch.allclose(out, model(x))


def test_missing_backbone_tensor_fails_with_its_name(tmp_path):
    _, backbone = _reference()
    del backbone["layer4.1.bn2.running_var"]
    path = tmp_path / "broken.pth"
    torch.save(_backbone_nested(backbone, torch.randn(4, 4)), path)
    with pytest.raises(CheckpointError, match="layer4.1.bn2.running_var"):
        load_ssl_resnet(path, "resnet18")


def test_unexpected_keys_and_wrong_architecture_fail(tmp_path):
    _, backbone = _reference()
    backbone["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(_backbone_flat(backbone, torch.randn(4, 4)), path)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_ssl_resnet(path, "resnet18")
    _, r18 = _reference()
    path = tmp_path / "r18.pth"
    torch.save(_moco(r18, torch.randn(4, 4)), path)
    with pytest.raises(CheckpointError, match="resnet50"):
        load_ssl_resnet(path, "resnet50")


def test_missing_file_names_path_and_source(tmp_path):
    with pytest.raises(MissingDataError, match="nowhere.pth.*dl.fbaipublicfiles"):
        load_ssl_resnet(tmp_path / "nowhere.pth", "resnet50", how_to_get="Download dl.fbaipublicfiles.com/moco")


def test_detect_format_and_key_mapping():
    sd = {"backbone.4.0.conv1.weight": torch.zeros(1), "backbone.0.weight": torch.zeros(1)}
    assert detect_format(sd) == "lightly"
    out, _ = backbone_state_dict(sd)
    assert set(out) == {"layer1.0.conv1.weight", "conv1.weight"}
    assert detect_format({"module.encoder_q.conv1.weight": 0}) == "moco"
    assert detect_format({"backbone.conv1.weight": 0}) == "backbone"
    assert detect_format({"conv1.weight": 0}) == "torchvision"
    with pytest.raises(CheckpointError, match="child 3 of a ResNet holds no weights"):
        backbone_state_dict({"backbone.3.weight": torch.zeros(1)})  # the max-pool holds no weights


class _Namespace:
    """Stands for the argparse / omegaconf objects Lightning pickles beside the weights."""

    lr = 0.1


def test_pickled_objects_load_only_when_the_user_trusts_the_file(tmp_path):
    _, backbone = _reference()
    path = tmp_path / "solo.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.items()},
                "hyper_parameters": _Namespace()}, path)
    with pytest.raises(CheckpointError, match="solo.ckpt holds pickled Python objects.*trust_pickle=True"):
        load_ssl_resnet(path, "resnet18")
    with pytest.warns(UserWarning, match="weights_only=False"):
        _, report = load_ssl_resnet(path, "resnet18", trust_pickle=True)
    assert report["format"] == "backbone"


@pytest.mark.parametrize("zip_format", [True, False])
def test_truncated_checkpoint_names_the_file_and_never_unpickles_unsafely(tmp_path, monkeypatch, zip_format):
    _, backbone = _reference()
    path = tmp_path / "moco.pth.tar"
    torch.save(_moco(backbone, torch.randn(4, 4)), path, _use_new_zipfile_serialization=zip_format)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    real_load, weights_only = torch.load, []

    def recording_load(*args, **kwargs):  # records, not asserts: the loader turns any error into CheckpointError
        weights_only.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    with pytest.raises(CheckpointError, match=r"moco.pth.tar cannot be read.*truncated or corrupt.*dl.fbaipublic"):
        load_ssl_resnet(path, "resnet18", how_to_get="Download dl.fbaipublicfiles.com/moco")
    assert weights_only == [True], "a published checkpoint was unpickled with weights_only=False"
