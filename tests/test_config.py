import pytest

import yaml

from maskrcnn.config import ConfigError, TestConfig as _TestConfig, apply_thresholds, dump_config, from_dict, load_config, to_dict


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("solver:\n  lr: 0.1\n  max_iter: 50\nmodel:\n  roi_heads:\n    num_classes: 3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nsolver:\n  lr: 0.05\n")
    cfg = load_config(str(tmp_path / "child.yaml"), ["solver.max_iter=7", "model.anchors.sizes=[4, 8, 16, 32, 64]"])
    assert cfg.solver.lr == 0.05  # child wins over base
    assert cfg.solver.max_iter == 7  # override wins over both
    assert cfg.model.roi_heads.num_classes == 3  # inherited untouched
    assert cfg.model.anchors.sizes == (4.0, 8.0, 16.0, 32.0, 64.0)
    # Nested sections merge key by key, at every depth.
    (tmp_path / "base2.yaml").write_text("model:\n  backbone:\n    name: resnet50\n    freeze_at: 3\n  roi_heads:\n    num_classes: 3\n")
    (tmp_path / "child2.yaml").write_text("base: base2.yaml\nmodel:\n  backbone:\n    name: resnet101\n")
    cfg = load_config(str(tmp_path / "child2.yaml"), ["model.roi_heads.num_classes=5"])
    assert cfg.model.backbone.name == "resnet101" and cfg.model.backbone.freeze_at == 3
    assert cfg.model.roi_heads.num_classes == 5  # override wins over the base


def test_unknown_key_lists_valid_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("solver:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "c.yaml"))
    assert "solver.learning_rate" in str(e.value) and "max_iter" in str(e.value)
    (tmp_path / "a.yaml").write_text("model:\n  backbone:\n    nam: resnet50\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(tmp_path / "a.yaml"))
    assert "model.backbone.nam" in str(e.value)
    for valid in ("name", "norm", "freeze_at", "stride_in_1x1"):
        assert valid in str(e.value)
    (tmp_path / "b.yaml").write_text("model:\n  rpn:\n    pre_nms_topk_train: many\n")
    with pytest.raises(ConfigError, match="model.rpn.pre_nms_topk_train"):  # a bad value in a file
        load_config(str(tmp_path / "b.yaml"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("solver.max_iter=ten", "solver.max_iter: expected an integer"),
        ("train.seed=1.5", "train.seed: expected an integer"),
        ("data.class_agnostic=3", "expected true or false"),
        ("solver.betas=[0.9]", "expected 2 values"),
        ("model.channels_last=3", "model.channels_last: expected true or false"),
        ("nonsense", "must look like key.path=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_circular_base_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(tmp_path / "a.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_base_lists_replace_and_chains_resolve_relative_to_each_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "root.yaml").write_text("model:\n  anchors:\n    sizes: [4, 8, 16, 32, 64]\n    aspect_ratios: [0.5, 1.0, 2.0]\n"
                                        "test:\n  tta: [hflip, vflip]\n")
    (tmp_path / "sub" / "mid.yaml").write_text("base: ../root.yaml\nmodel:\n  anchors:\n    aspect_ratios: [1.0]\n")
    (tmp_path / "sub" / "leaf.yaml").write_text("base: mid.yaml\ntest:\n  tta: [rot90]\n")
    cfg = load_config(str(tmp_path / "sub" / "leaf.yaml"))
    assert cfg.model.anchors.aspect_ratios == (1.0,)  # a list replaces the base's list, it does not extend it
    assert cfg.model.anchors.sizes == (4.0, 8.0, 16.0, 32.0, 64.0)  # from the root, two files up
    assert cfg.test.tta == ("rot90",)


def test_base_errors_name_the_chain_and_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: c.yaml\n")
    (tmp_path / "c.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"circular 'base:' chain .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(str(tmp_path / "self.yaml"))
    (tmp_path / "child.yaml").write_text("base: gone.yaml\nsolver:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"base file not found: .*gone\.yaml \(the 'base:' of .*child\.yaml\)"):
        load_config(str(tmp_path / "child.yaml"))
    (tmp_path / "two.yaml").write_text("base: [a.yaml, b.yaml]\n")
    with pytest.raises(ConfigError, match="base: must name one YAML file"):
        load_config(str(tmp_path / "two.yaml"))


def test_every_key_is_declared_with_key_and_checked_when_a_section_is_built():
    import dataclasses

    from maskrcnn.config import AnchorConfig, Config, InputConfig, SolverConfig, config_keys, may_change_on_resume

    def fields(cls):
        for f in dataclasses.fields(cls):
            sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            yield f
            if sub is not None and dataclasses.is_dataclass(sub):
                yield from fields(sub)

    assert all("resume" in f.metadata for f in fields(Config))  # key(...) or section(...), nothing bare
    with pytest.raises(ConfigError, match=r"model\.anchors\.scales_per_octave must be >= 1"):
        dataclasses.replace(AnchorConfig(), scales_per_octave=0)  # replace builds a section: the same checks run
    solver = SolverConfig(lr=0.0, max_iter=7)  # training-only sections validate where training starts
    with pytest.raises(ConfigError, match=r"solver\.lr must be > 0"):
        solver.validate()
    with pytest.raises(ConfigError, match=r"model\.input\.pixel_mean: need 1 or 3 values"):
        InputConfig(pixel_mean=(0.1, 0.2))  # a rule between two keys, the section's check()
    resumable = [k for k in config_keys() if may_change_on_resume(k)]
    assert "solver.lr" in resumable and "train.seed" not in resumable and "model.backbone.name" not in resumable


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["solver.lr=0.003", "test.score_thresh=[0.2, 0.3, 0.4]"])
    path = tmp_path / "cfg.yaml"
    dump_config(cfg, str(path))
    assert load_config(str(path)) == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_retired_keys_of_old_files_and_checkpoints_are_dropped(tmp_path):
    import warnings

    old = to_dict(load_config(None))
    old["model"]["mask_head"]["mask_threshold"] = 0.5  # what every earlier checkpoint holds
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_dict(old) == load_config(None)
    old["model"]["mask_head"]["mask_threshold"] = 0.3  # it never changed anything: dropped, with a note
    with pytest.warns(UserWarning, match=r"model\.mask_head\.mask_threshold=0\.3 is ignored.*test\.mask_thresh"):
        cfg = from_dict(old, source="old.pth")
    assert cfg == load_config(None) and cfg.test.mask_thresh == (0.5,)
    (tmp_path / "old.yaml").write_text("model:\n  mask_head:\n    mask_threshold: 0.5\n    num_convs: 2\n")
    assert load_config(str(tmp_path / "old.yaml")).model.mask_head.num_convs == 2
    with pytest.raises(ConfigError, match="mask_threshold"):  # a new setting of it is a mistake
        load_config(None, ["model.mask_head.mask_threshold=0.3"])


def test_thresholds_file_overrides_test_fields(tmp_path):
    base = _TestConfig()
    p = tmp_path / "tuned.yaml"
    p.write_text(yaml.safe_dump({"test": {"score_thresh": [0.15, 0.35, 0.55], "min_area": [75, 150, 75]},
                                 "tuning": {"mAP": 0.31}}))
    cfg = apply_thresholds(base, str(p))
    assert cfg.score_thresh == (0.15, 0.35, 0.55) and cfg.min_area == (75, 150, 75)
    assert cfg.mask_thresh == base.mask_thresh
    p.write_text(yaml.safe_dump({"mask_thresh": 0.45}))
    assert apply_thresholds(base, str(p)).mask_thresh == (0.45,)
    p.write_text(yaml.safe_dump({"score_treshold": 0.45}))
    with pytest.raises(ConfigError, match="score_treshold"):
        apply_thresholds(base, str(p))
    p.write_text(yaml.safe_dump({"min_area": "big"}))
    with pytest.raises(ConfigError, match="min_area"):
        apply_thresholds(base, str(p))
    p.write_text("score_thresh: [0.3]\nbogus: 1\n")  # a tuned file's top-level keys are TestConfig fields
    with pytest.raises(ConfigError, match="bogus"):
        apply_thresholds(base, str(p))
    p.write_text("test:\n  score_thresh: 0.4\n  min_area: [10, 20]\n")
    cfg = apply_thresholds(base, str(p))
    assert (cfg.score_thresh, cfg.min_area, cfg.mask_thresh) == ((0.4,), (10, 20), base.mask_thresh)
