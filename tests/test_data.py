import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from vaevq.config import ConfigError, load_config
from vaevq.data import BuiltinPhotos, StepBatchSampler, build_datasets, image_folder_splits
from vaevq.data.transforms import prepare_image


@pytest.fixture(scope="module")
def builtin():
    return BuiltinPhotos("train", 32, random_flip=True), BuiltinPhotos("eval", 32)


def test_builtin_is_deterministic_real_and_in_range(builtin):
    train, held = builtin
    again = BuiltinPhotos("eval", 32)
    assert torch.equal(held.tiles, again.tiles)
    assert train.tiles.shape[1:] == (3, 32, 32)
    assert train.tiles.min() >= -1 and train.tiles.max() <= 1
    assert train.tiles.std() > 0.2  # photographs, not blank tiles
    assert {n.split("@")[0] for n in held.names} == {"china", "flower"}
    assert not {n.split("@")[0] for n in train.names} & {"china", "flower"}


def test_builtin_eval_gives_well_over_k_tokens(builtin):
    cfg = load_config("tiny")
    tokens_per_image = (32 // 4) ** 2
    assert len(builtin[1]) * tokens_per_image >= 10 * cfg.model.codebook_size


def test_builtin_first_tile_is_the_photo_corner():
    photo = Image.fromarray(skdata.astronaut())
    w, h = photo.size
    small = photo.resize((128, 128), Image.BICUBIC, reducing_gap=3.0)
    expected = torch.from_numpy(np.asarray(small)[:32, :32].copy()).permute(2, 0, 1).float() / 127.5 - 1
    assert w == h == 512
    torch.testing.assert_close(BuiltinPhotos("train", 32).tiles[0], expected)


def test_augmentation_is_a_function_of_the_seed(builtin):
    train = builtin[0]
    assert torch.equal(train[(5, 123)], train[(5, 123)])
    flips = [torch.equal(train[(5, s)], train.tiles[5].flip(-1)) for s in range(20)]
    assert any(flips) and not all(flips)
    assert torch.equal(train[5], train.tiles[5])


def _write_images(folder, n, size=(50, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    photo = skdata.chelsea()
    for i in range(n):
        crop = photo[i * 5 : i * 5 + size[1], i * 7 : i * 7 + size[0]]
        Image.fromarray(crop).save(folder / f"img{i}.JPEG", quality=95)


def test_imagenet_layout(tmp_path):
    _write_images(tmp_path / "train" / "n01", 3)
    _write_images(tmp_path / "train" / "n02", 2)
    _write_images(tmp_path / "val" / "n01", 2)
    train, held = image_folder_splits(tmp_path, 0.05)
    assert len(train) == 5 and len(held) == 2
    cfg = load_config("tiny", [f"data.root={tmp_path}"])
    train_ds, eval_ds = build_datasets(cfg)
    assert train_ds[0].shape == (3, 32, 32)
    # the evaluation transform: shorter side (40) -> 32, center crop of the 40x32 result
    img = Image.open(held[0]).convert("RGB").resize((40, 32), Image.BICUBIC, reducing_gap=3.0)
    expected = np.asarray(img.crop((4, 0, 36, 32)))
    got = ((eval_ds[0] + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8)
    np.testing.assert_array_equal(got, expected)
    torch.testing.assert_close(prepare_image(held[0], 32), eval_ds[0])


def test_flat_folder_is_split_deterministically(tmp_path):
    _write_images(tmp_path, 12)
    a = image_folder_splits(tmp_path, 0.3)
    b = image_folder_splits(tmp_path, 0.3)
    assert a == b
    assert len(a[0]) + len(a[1]) == 12 and a[1]
    assert not set(a[0]) & set(a[1])


def test_random_crop_stays_inside(tmp_path):
    _write_images(tmp_path / "train" / "c", 2, size=(64, 40))
    _write_images(tmp_path / "val" / "c", 1)
    cfg = load_config("tiny", [f"data.root={tmp_path}", "data.random_crop=true"])
    train_ds, _ = build_datasets(cfg)
    crops = {train_ds[(0, s)].sum().item() for s in range(6)}
    assert len(crops) > 1


def test_data_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        image_folder_splits(tmp_path / "nowhere", 0.1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no training images"):
        image_folder_splits(tmp_path / "empty", 0.1)
    with pytest.raises(ConfigError, match="data.root is not set"):
        build_datasets(load_config("imagenet-f16"))
    bad = tmp_path / "bad" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        prepare_image(bad, 32)


def test_sampler_shards_are_disjoint_and_resume_exactly():
    full = list(StepBatchSampler(100, 4, seed=3, start_step=0, total_steps=30))
    resumed = list(StepBatchSampler(100, 4, seed=3, start_step=12, total_steps=30))
    assert resumed == full[12:]
    ranks = [list(StepBatchSampler(100, 4, seed=3, start_step=0, total_steps=12, rank=r,
                                   world_size=2)) for r in range(2)]
    for step in range(12):
        a = {i for i, _ in ranks[0][step]}
        b = {i for i, _ in ranks[1][step]}
        assert len(a) == len(b) == 4 and not a & b
    epoch = [i for batch in full[:25] for i, _ in batch]  # 25 steps x 4 = one epoch
    assert sorted(epoch) == list(range(100))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(3, 4, seed=0, start_step=0, total_steps=1)
