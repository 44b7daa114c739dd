import pytest

from vaevq.config import ConfigError, load_config, parse_overrides, preset_names


def test_presets_ship_and_load():
    names = preset_names()
    for name in ("tiny", "imagenet-f16", "imagenet-official"):
        assert name in names
        cfg = load_config(name)
        assert cfg.name == name


def test_paper_preset_matches_the_paper():
    cfg = load_config("imagenet-f16")
    m, t, loss = cfg.model, cfg.train, cfg.loss
    assert (m.resolution, m.latent_dim, m.codebook_size) == (256, 64, 16384)
    assert 2 ** (len(m.ch_mult) - 1) == 16
    assert (t.batch_size, t.lr, t.schedule, t.epochs) == (32, 1e-4, "cosine", 50)
    assert (loss.rcs_weight, loss.dcr_weight, loss.rec, m.quantize) == (1.0, 0.1, "l2", "sample")


def test_official_preset_matches_released_code():
    cfg = load_config("imagenet-official")
    m, t, loss = cfg.model, cfg.train, cfg.loss
    assert 2 ** (len(m.ch_mult) - 1) == 8 and m.attn_resolutions == ()
    assert (m.quantize, m.estimator, m.codebook_projection) == ("mean", "released", True)
    assert (loss.rec, loss.rec_paths, loss.rcs_form, loss.dcr_weight) == ("l1", "mean", "released", 0.0)
    assert (t.betas, t.schedule, t.ema_decay) == ((0.5, 0.9), "constant", 0.999)


def test_overrides_apply_with_types():
    cfg = load_config("tiny", ["train.steps=7", "model.ch_mult=[1,2]", "train.lr=0.5",
                               "data.root=/some/where", "model.quantizer=vlq"])
    assert cfg.train.steps == 7
    assert cfg.model.ch_mult == (1, 2)
    assert cfg.train.lr == 0.5
    assert cfg.data.root == "/some/where" and cfg.data.source == "imagefolder"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config("tiny", ["train.stepz=3"])
    with pytest.raises(ConfigError, match="unknown key modle"):
        load_config("tiny", ["modle.ch=3"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        load_config("tiny", ["train.steps=many"])
    with pytest.raises(ConfigError, match="model.ch_mult"):
        load_config("tiny", ["model.ch_mult=3"])
    with pytest.raises(ConfigError, match="model.quantize must be one of"):
        load_config("tiny", ["model.quantize=sometimes"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  chanels: 3\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("no-such-preset")


def test_yaml_round_trip(tmp_path):
    cfg = load_config("imagenet-official", ["train.steps=3"])
    path = tmp_path / "c.yaml"
    cfg.save(path)
    again = load_config(path)
    assert again == cfg


def test_resolution_must_divide_by_downsampling():
    with pytest.raises(ConfigError, match="not divisible"):
        load_config("tiny", ["data.resolution=30"])


def test_parse_overrides_nested():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_exponent_floats_without_a_dot():
    cfg = load_config("tiny", ["train.lr=1e-4", "loss.kl_weight=5E-6"])
    assert cfg.train.lr == 1e-4 and cfg.loss.kl_weight == 5e-6


def test_base_inherits_a_preset_or_a_file_and_keys_given_win(tmp_path):
    from vaevq.config import load_config

    (tmp_path / "mine.yaml").write_text("base: tiny\nmodel:\n  codebook_size: 1024\ntrain:\n  steps: 7\n")
    mine = load_config(tmp_path / "mine.yaml")
    tiny = load_config("tiny")
    assert mine.model.codebook_size == 1024 and mine.train.steps == 7
    expected = tiny.to_dict()
    expected["model"]["codebook_size"], expected["train"]["steps"], expected["name"] = 1024, 7, "custom"
    assert mine.to_dict() == expected
    # a file as base, relative to the file that names it; overrides still apply last
    (tmp_path / "child.yaml").write_text("base: mine.yaml\ntrain:\n  batch_size: 3\n")
    child = load_config(tmp_path / "child.yaml", ["train.steps=9"])
    assert (child.model.codebook_size, child.train.batch_size, child.train.steps) == (1024, 3, 9)
    # the shipped ablation presets are tiny with their differences
    m2 = load_config("m2")
    assert m2.loss.dcr_weight == 0.0 and m2.model.dead_code_interval == 0
    assert m2.model.ch_mult == tiny.model.ch_mult and m2.train.steps == tiny.train.steps


def test_base_errors_name_the_problem(tmp_path):
    from vaevq.config import ConfigError, load_config

    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: no-such-preset\n")
    with pytest.raises(ConfigError, match="no-such-preset"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [tiny]\n")
    with pytest.raises(ConfigError, match="base must be a preset name"):
        load_config(tmp_path / "d.yaml")
