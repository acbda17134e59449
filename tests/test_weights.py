import time
from dataclasses import replace

import pytest

from pipeline.errors import PipelineError
from pipeline.training.pretrained import check_arch, lite_source_file, timm_kwargs
from tests.factories import make_run

RUN = make_run(resize="squish", item_size=(32,), size=(32,), accum=1, batch_size=8)


def test_converted_lite_weights_equal_the_package_tensors(weights_dir):
    import timm
    import torch
    from safetensors.torch import load_file

    converted = load_file(weights_dir / "tf_efficientnet_lite0.safetensors")
    source = torch.load(lite_source_file("tf_efficientnet_lite0"), weights_only=True)
    timm_keys = list(timm.create_model("tf_efficientnet_lite0").state_dict())
    assert len(converted) == len(source) == len(timm_keys) == 296
    for key, tensor in zip(timm_keys, source.values(), strict=True):  # safetensors sorts keys on disk
        assert torch.equal(converted[key], tensor)
    # timm loads them through the same keyword arguments training uses, with no network
    kwargs = timm_kwargs(replace(RUN, weights=str(weights_dir / "tf_efficientnet_lite0.safetensors")))
    model = timm.create_model("tf_efficientnet_lite0", pretrained=True, **kwargs)
    assert torch.equal(model.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


def test_unknown_architecture():
    with pytest.raises(PipelineError, match="unknown architecture 'resnet_9000': not a timm model"):
        check_arch("resnet_9000")


def test_unknown_pretrained_tag():
    with pytest.raises(PipelineError, match="Invalid pretrained tag"):
        check_arch("convnext_large.no_such_tag")


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(PipelineError, match=r"weights file .*absent.pth for tf_efficientnet_lite0 not found"):
        timm_kwargs(replace(RUN, weights=str(tmp_path / "absent.pth")))


def test_a_broken_safetensors_file_is_named_before_any_model_is_built(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\xff" * 1000)  # its first 8 bytes, the header's length, are far beyond the file
    with pytest.raises(PipelineError) as e:
        timm_kwargs(replace(RUN, weights=str(broken)))
    assert str(e.value).startswith(f"weights file {broken} for tf_efficientnet_lite0 is not a readable safetensors")
    assert "replace it, or fix model.weights" in str(e.value) and "\n" not in str(e.value)


def test_no_network_and_no_cache_fails_at_once(tmp_path, monkeypatch):
    # An empty cache, and the hub pointed at a loopback port where nothing listens.
    from huggingface_hub import constants

    from pipeline.training import pretrained

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored afterwards; the check sets it
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    pretrained.hub_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises(PipelineError) as err:
        timm_kwargs(replace(RUN, arch="vit_large_patch16_224"))
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert "no pretrained weights for vit_large_patch16_224" in message
    assert "set model.weights=" in message and "\n" not in message
    pretrained.hub_reachable.cache_clear()


def test_random_init_needs_no_weights():
    assert timm_kwargs(replace(RUN, pretrained=False, arch="vit_large_patch16_224")) == {}
