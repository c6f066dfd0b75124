"""Regional torch.compile (``model.compile: regional``): no graph breaks inside the compiled regions,
the config key, and (only with ``MASKRCNN_TEST_COMPILE=1``: an inductor compile takes minutes on
two busy cores) the compiled model's predictions equal the eager ones."""
import os

import pytest
import torch

from maskrcnn.config import ConfigError, load_config
from maskrcnn.data.synthetic import SyntheticCells
from maskrcnn.model import build_model
from maskrcnn.model.compile import compile_model, compile_regions_of, region_graph_breaks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_RECIPE = os.path.join(REPO, "configs", "dsb2018_cpu.yaml")


def _recipe_model(overrides=()):
    cfg = load_config(CPU_RECIPE, ["model.rpn.pre_nms_topk_train=200", "model.rpn.post_nms_topk_train=100",
                                   "model.roi_heads.batch_size_per_image=64", *overrides])
    torch.manual_seed(0)
    return build_model(cfg.model, load_weights=False, verbose=False)


def _sample(size=64):
    s = SyntheticCells(num_images=1, height=size, width=size, cells_per_image=(3, 5), seed=1,
                       class_agnostic=True).load(0)
    return s.image, s.instances


def test_regions_of_the_cpu_recipe_have_no_graph_breaks():
    model = _recipe_model().train()
    image, target = _sample()
    breaks = region_graph_breaks(model, lambda: model([image], [target]))
    assert set(breaks) == set(compile_regions_of(model))  # a training step reaches every region
    assert breaks == {name: 0 for name in breaks}


def test_a_graph_break_in_a_region_is_reported(monkeypatch):
    model = _recipe_model().eval()
    fpn_forward = model.fpn.forward

    def breaking(features):
        features = [f * 1.0 for f in features]
        torch._dynamo.graph_break()  # as a .item() or an untraceable call would
        return fpn_forward(features)

    monkeypatch.setattr(model.fpn, "forward", breaking)
    image, _ = _sample()
    with torch.no_grad():
        breaks = region_graph_breaks(model, lambda: model([image]))
    assert breaks["fpn"] == 1 and breaks["backbone"] == 0


def test_compile_config_key():
    with pytest.raises(ConfigError, match="model.compile"):
        _recipe_model(["model.compile=everything"])
    eager = _recipe_model()
    model = _recipe_model(["model.compile=regional"])
    assert model.compile_mode == "regional" and eager.compile_mode == "none"
    for name, region in compile_regions_of(model).items():
        assert region._compiled_call_impl is not None, name
    for region in compile_regions_of(eager).values():
        assert region._compiled_call_impl is None
    # Compiled in place: checkpoints keep their parameter names.
    assert list(model.state_dict()) == list(eager.state_dict())


@pytest.mark.skipif(os.environ.get("MASKRCNN_TEST_COMPILE", "0") != "1",
                    reason="an inductor compile takes minutes on 2 CPU cores: set MASKRCNN_TEST_COMPILE=1")
def test_compiled_regions_predict_as_eager():
    eager = _recipe_model().eval()
    compiled = compile_model(_recipe_model().eval(), "regional")
    image, _ = _sample(96)
    with torch.no_grad():
        a = eager([image])[0]
        b = compiled([image])[0]
    assert len(a) == len(b)
    torch.testing.assert_close(b.boxes, a.boxes, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(b.scores, a.scores, atol=1e-4, rtol=1e-4)
