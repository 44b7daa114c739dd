"""The autoregressive generator's model and sampling (issue 14, part 1) against independent
references: the full forward for the key/value cache, a hand computation for the filters, a
shift test for the 2D rotary embedding."""

import numpy as np
import pytest
import torch

from vaevq.generation.gpt import GPT, GPTConfig, apply_rope, filter_logits, rope_2d, sample_logits


def small(num_classes=5, **kw):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=37, grid=(3, 4), dim=32, n_layer=2, n_head=2, num_classes=num_classes,
                       class_dropout=0.0, token_dropout=0.0, resid_dropout=0.0, **kw)
    return GPT(config).eval()


def cached_logits(gpt, tokens, labels):
    """Logits of incremental decoding through the cache, one position at a time."""
    from vaevq.generation.gpt import KVCache

    b, length = tokens.shape
    cache = KVCache(len(gpt.layers), b, gpt.config.n_head, gpt.config.length, gpt.config.head_dim,
                    torch.float32, torch.device("cpu"))
    out = [gpt._step(gpt._embed(None, labels), cache, 0)]
    for i in range(1, length):
        out.append(gpt._step(gpt.token_embedding(tokens[:, i - 1:i]), cache, i))
    return torch.stack(out, dim=1)


def test_cached_incremental_logits_equal_the_full_forward_at_every_position():
    gpt = small()
    tokens = torch.randint(37, (3, 12))
    labels = torch.tensor([0, 4, 5])  # 5: the null class
    with torch.no_grad():
        full = gpt(tokens, labels)
        inc = cached_logits(gpt, tokens, labels)
    assert full.shape == (3, 12, 37)
    torch.testing.assert_close(inc, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_sampling_with_and_without_the_cache_gives_the_same_ids(cfg):
    gpt = small()
    labels = torch.tensor([1, 2, 3, 1])
    a = gpt.generate(labels, cfg_scale=cfg, top_k=10, generator=torch.Generator().manual_seed(7))
    b = gpt.generate(labels, cfg_scale=cfg, top_k=10, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert a.shape == (4, 12) and a.dtype == torch.int64
    assert torch.equal(a, b)
    c = gpt.generate(labels, cfg_scale=cfg, top_k=10, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, c)  # seeded: deterministic


def test_changing_a_token_never_changes_earlier_logits():
    gpt = small()
    tokens = torch.randint(37, (1, 12))
    labels = torch.tensor([2])
    with torch.no_grad():
        base = gpt(tokens, labels)
        for t in range(12):
            changed = tokens.clone()
            changed[0, t] = (changed[0, t] + 1) % 37
            other = gpt(changed, labels)
            # logits[:, i] predicts token i from tokens < i: positions <= t are unaffected
            torch.testing.assert_close(other[:, :t + 1], base[:, :t + 1], rtol=0, atol=0)
            if t < 11:
                assert not torch.allclose(other[:, t + 1:], base[:, t + 1:])


def test_rope_scores_depend_only_on_the_relative_offset_and_follow_the_grid():
    grid, head_dim = (5, 6), 16
    table = rope_2d(grid, head_dim, prefix=1)
    assert table.shape == (1 + 30, 8, 2)
    torch.testing.assert_close(table[0, :, 0], torch.ones(8))  # the class token: identity
    torch.testing.assert_close(table[0, :, 1], torch.zeros(8))
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(head_dim, generator=gen)
    k = torch.randn(head_dim, generator=gen)

    def rotated(v, r, c):
        pos = 1 + r * grid[1] + c  # row-major after the class token
        return apply_rope(v.view(1, 1, 1, -1), table[pos:pos + 1])[0, 0, 0]

    def score(r1, c1, r2, c2):
        return float(rotated(q, r1, c1) @ rotated(k, r2, c2))

    assert score(0, 0, 1, 2) == pytest.approx(score(2, 3, 3, 5), abs=1e-5)  # same offset (1, 2)
    assert score(1, 1, 1, 4) == pytest.approx(score(3, 0, 3, 3), abs=1e-5)  # (0, 3)
    assert score(0, 0, 1, 2) != pytest.approx(score(0, 0, 2, 1), abs=1e-3)  # a different offset
    # by hand: the row angle of pair j at row r is r * base^(-j / (head_dim / 4)), column pairs follow
    r, c = 2, 3
    pos = 1 + r * grid[1] + c
    quarter = head_dim // 4
    freqs = 10000.0 ** (-np.arange(quarter) / quarter)
    angles = np.concatenate([r * freqs, c * freqs])
    np.testing.assert_allclose(table[pos, :, 0].numpy(), np.cos(angles), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table[pos, :, 1].numpy(), np.sin(angles), rtol=1e-6, atol=1e-6)


def test_cfg_scale_one_equals_the_conditional_logits():
    gpt = small()
    labels = torch.tensor([1, 3])
    # temperature 0 (argmax): guided with scale 1 must pick exactly the conditional argmax path
    guided = gpt.generate(labels, cfg_scale=1.0, temperature=0.0)
    tokens = torch.zeros(2, 0, dtype=torch.long)
    for _ in range(12):
        with torch.no_grad():
            logits = gpt(torch.cat([tokens, torch.zeros(2, 1, dtype=torch.long)], 1), labels)[:, -1]
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(guided, tokens)


def test_guidance_mixes_conditional_and_null_logits_by_hand():
    gpt = small()
    labels = torch.tensor([2])
    with torch.no_grad():
        cond = gpt(torch.zeros(1, 1, dtype=torch.long), labels)[:, 0]
        uncond = gpt(torch.zeros(1, 1, dtype=torch.long), torch.tensor([5]))[:, 0]
    expected = (uncond + (cond - uncond) * 3.0).argmax(-1)
    first = gpt.generate(labels, cfg_scale=3.0, temperature=0.0)[:, 0]
    assert torch.equal(first, expected)


def test_top_k_and_top_p_filters_by_hand():
    logits = torch.log(torch.tensor([[0.1, 0.4, 0.05, 0.3, 0.15]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[False, True, False, True, False]]
    # top-p 0.75: sorted 0.4, 0.3 (0.7 < 0.75), then 0.15 reaches 0.85: keep those three
    p = filter_logits(logits, top_p=0.75)
    assert torch.isfinite(p).tolist() == [[False, True, False, True, True]]
    p_small = filter_logits(logits, top_p=0.01)  # the largest is always kept
    assert torch.isfinite(p_small).tolist() == [[False, True, False, False, False]]
    assert torch.equal(filter_logits(logits), logits)


def test_temperature_zero_is_argmax_and_sampling_follows_the_probabilities():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample_logits(logits, temperature=0.0).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_logits(logits[:1].expand(4000, 3), 1.0, generator=gen)])
    freq = torch.bincount(draws.flatten(), minlength=3).double() / 4000
    np.testing.assert_allclose(freq.numpy(), torch.softmax(logits[0].double(), 0).numpy(), atol=0.03)


def test_unconditional_model_and_label_range():
    gpt = small(num_classes=0)
    ids = gpt.generate(num=3, generator=torch.Generator().manual_seed(0))
    assert ids.shape == (3, 12) and int(ids.max()) < 37
    with pytest.raises(ValueError, match="class labels"):
        small().generate(torch.tensor([6]))


def test_gpt_b_shape_has_about_111_million_parameters():
    config = GPTConfig(vocab_size=16384, grid=(16, 16), dim=768, n_layer=12, n_head=12, num_classes=1000)
    with torch.device("meta"):
        gpt = GPT(config)
    n = sum(p.numel() for p in gpt.parameters())
    assert 105e6 < n < 115e6, n


def test_save_and_load_round_trip(tmp_path):
    gpt = small()
    gpt.save_pretrained(tmp_path / "gpt")
    loaded = GPT.from_pretrained(tmp_path / "gpt")
    assert loaded.config == gpt.config
    tokens = torch.randint(37, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(tokens, torch.tensor([0, 1])), gpt(tokens, torch.tensor([0, 1])),
                                   rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        GPT.from_pretrained(tmp_path)


def test_unigram_baseline_follows_the_code_frequencies():
    from vaevq.generation import unigram_samples

    codes = np.array([[0, 0, 0, 1], [0, 2, 2, 0]])  # frequencies 5/8, 1/8, 2/8
    draws = unigram_samples(codes, 5000, torch.Generator().manual_seed(0))
    assert draws.shape == (5000, 4)
    freq = torch.bincount(draws.flatten(), minlength=3).double() / draws.numel()
    np.testing.assert_allclose(freq.numpy(), [5 / 8, 1 / 8, 2 / 8], atol=0.01)


def test_codes_are_extracted_once_and_reused(tmp_path):
    from vaevq.config import load_config
    from vaevq.data import BuiltinPhotos
    from vaevq.generation.codes import extract_codes
    from vaevq.models import VAEVQ

    torch.manual_seed(0)
    model = VAEVQ(load_config("tiny", ["model.ch=16", "model.z_channels=16", "model.codebook_size=64",
                                       "model.latent_dim=8"]))
    dataset = BuiltinPhotos("eval", 32, stride=64)
    codes, labels, folder = extract_codes(model, dataset, tmp_path, flip=True)
    n = len(dataset)
    assert codes.shape == (n, 2, 64) and codes.dtype == np.int64
    x = torch.stack([dataset[i] for i in range(n)])
    np.testing.assert_array_equal(codes[:, 0], model.encode(x).flatten(1).numpy())
    np.testing.assert_array_equal(codes[:, 1], model.encode(x.flip(-1)).flatten(1).numpy())
    # labels: the source photo of each tile (china, flower), sorted names
    expected = [0 if name.startswith("china") else 1 for name in dataset.names]
    assert labels.tolist() == expected and set(expected) == {0, 1}
    stamp = (folder / "codes.npy").stat().st_mtime_ns
    again, _, folder2 = extract_codes(model, dataset, tmp_path, flip=True)
    assert folder2 == folder and (folder / "codes.npy").stat().st_mtime_ns == stamp  # reused, not recomputed
    np.testing.assert_array_equal(again, codes)
    with torch.no_grad():
        model.codebook.embedding.add_(1.0)  # another tokenizer: another key, another folder
    _, _, folder3 = extract_codes(model, dataset, tmp_path, flip=True)
    assert folder3 != folder
