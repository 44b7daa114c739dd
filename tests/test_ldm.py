"""Latent diffusion on diffusers: the schedule and the loss against closed forms, DDIM and
classifier-free guidance against hand-written updates, decoding through the nearest code
(brute force), training through the shared loop (loss, resume, 2 processes), the CLI."""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from two_processes import one_and_two_processes

from vaevq.cli.main import main
from vaevq.config import load_config
from vaevq.generation import LatentDiffusion, load_generator, make_trainer, sample_images
from vaevq.generation.evaluate import spread
from vaevq.generation.ldm import ddim_scheduler
from vaevq.generation.ldm_trainer import SCALE_ITEMS, LatentItems, LDMTrainer, draw_item
from vaevq.metrics import to_uint8
from vaevq.models import VAEVQ
from vaevq.training.checkpoint import load_checkpoint

TOKENIZER = ["model.ch=16", "model.z_channels=32", "model.codebook_size=64", "model.latent_dim=8"]
UNET_FAST = ["generator.unet_channels=32", "generator.unet_mult=[1,1]", "generator.unet_layers=1",
             "generator.unet_attention=[1]"]
LDM_FAST = [*UNET_FAST, "train.batch_size=16", "train.progress=false", "train.log_every=1", "train.eval_every=0",
            "train.image_every=0", "train.checkpoint_every=2", "generator.grid_per_class=2",
            "generator.sample_batch=16", "eval.max_images=32",
            "generator.sample_steps=2", "train.ema_decay=0.9"]


def hand_alphas_cumprod(start=0.0015, end=0.0195, steps=1000) -> np.ndarray:
    """LDM's "linear" schedule: betas linear in sqrt(beta), then the running product of 1 - beta."""
    betas = np.linspace(start ** 0.5, end ** 0.5, steps, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def fresh_ldm(num_classes=8) -> LatentDiffusion:
    """LDM's objective (epsilon), a small UNet, random weights."""
    torch.manual_seed(0)
    return LatentDiffusion.from_preset("ldm-tiny", overrides=[*UNET_FAST, f"generator.num_classes={num_classes}",
                                                              "generator.prediction=epsilon"])


def test_forward_process_is_the_closed_form():
    ldm = fresh_ldm()
    ab = hand_alphas_cumprod()
    np.testing.assert_allclose(ldm.scheduler.alphas_cumprod.double().numpy(), ab, rtol=2e-5)
    x0, eps = torch.randn(4, 16, 8, 8), torch.randn(4, 16, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    a = torch.from_numpy(ab[t.numpy()]).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(ldm.scheduler.add_noise(x0, eps, t), a.sqrt() * x0 + (1 - a).sqrt() * eps,
                               rtol=1e-5, atol=1e-5)


def test_epsilon_loss_on_a_hand_made_case():
    ldm = fresh_ldm()
    x0, eps = torch.randn(3, 16, 8, 8), torch.randn(3, 16, 8, 8)
    t, labels = torch.tensor([5, 400, 900]), torch.tensor([0, 7, 8])  # 8: the null class
    a = torch.from_numpy(hand_alphas_cumprod()[t.numpy()]).float().view(-1, 1, 1, 1)
    noisy = a.sqrt() * x0 + (1 - a).sqrt() * eps
    with torch.no_grad():
        pred = ldm.unet(noisy, t, class_labels=labels).sample
        expected = ((pred - eps) ** 2).mean()
        got = ldm(x0, labels, t, eps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # v-prediction: the target is the velocity sqrt(a) eps - sqrt(1 - a) x0
    vldm = LatentDiffusion.from_preset("ldm-tiny", overrides=[*UNET_FAST, "generator.prediction=v_prediction"])
    with torch.no_grad():
        pred = vldm.unet(noisy, t, class_labels=labels).sample
        expected = ((pred - (a.sqrt() * eps - (1 - a).sqrt() * x0)) ** 2).mean()
        torch.testing.assert_close(vldm(x0, labels, t, eps), expected, rtol=1e-5, atol=1e-6)
    # class dropout: the dropped labels become the null class
    drop = torch.tensor([True, False, True])
    assert ldm.null_labels(torch.tensor([1, 2, 3]), drop).tolist() == [8, 2, 8]


def test_ddim_matches_hand_updates_and_repeats_for_a_seed():
    ldm = fresh_ldm().eval()
    ab = torch.from_numpy(hand_alphas_cumprod()).float()
    labels = torch.tensor([1, 5])
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    # two DDIM steps with LDM's discretization: t = 501 then 1, the last one to alpha_bar_0
    sched = ddim_scheduler(ldm.config.generator, 2)
    assert sched.timesteps.tolist() == [501, 1]
    expected = x.clone()
    with torch.no_grad():
        for t, prev in ((501, ab[1]), (1, ab[0])):
            eps = ldm.guided_prediction(expected, torch.tensor(t), labels, 1.5)
            x0 = (expected - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
            expected = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
    got = ldm.sample_latents(labels, num_steps=2, cfg_scale=1.5, eta=0.0, noise=x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # eta 0: the seed decides everything; eta > 0 draws fresh noise at each step from the same generator
    a = ldm.sample_latents(labels, num_steps=3, generator=torch.Generator().manual_seed(0))
    b = ldm.sample_latents(labels, num_steps=3, generator=torch.Generator().manual_seed(0))
    c = ldm.sample_latents(labels, num_steps=3, eta=1.0, generator=torch.Generator().manual_seed(0))
    d = ldm.sample_latents(labels, num_steps=3, eta=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.equal(c, d) and not torch.allclose(a, c)


def test_classifier_free_guidance():
    ldm = fresh_ldm().eval()
    x, t, labels = torch.randn(3, 16, 8, 8), torch.tensor(300), torch.tensor([0, 2, 4])
    with torch.no_grad():
        cond = ldm.unet(x, t, class_labels=labels).sample
        null = ldm.unet(x, t, class_labels=torch.full((3,), 8)).sample
        # scale 1: the conditional model
        torch.testing.assert_close(ldm.guided_prediction(x, t, labels, 1.0), cond)
        torch.testing.assert_close(ldm.guided_prediction(x, t, labels, 3.0), null + 3.0 * (cond - null),
                                   rtol=1e-4, atol=1e-5)
    unconditional = fresh_ldm(num_classes=0)
    assert unconditional.unet.class_embedding is None
    with pytest.raises(ValueError, match="class-conditional"):
        ldm.sample_latents(None, num=2)


def test_decoding_a_latent_is_the_tokenizer_decoding_its_nearest_codes():
    torch.manual_seed(1)
    tok = VAEVQ(load_config("tiny", TOKENIZER)).eval()
    ldm = LatentDiffusion.from_preset("ldm-tiny", tokenizer=tok, overrides=UNET_FAST)
    assert ldm.channels == 8 and ldm.grid == (8, 8)
    ldm.set_latent_scale(4.0)
    z = torch.randn(2, 8, 8, 8)
    images, ids = ldm.decode_latents(z)
    vectors = tok.quantizer.codebook.vectors().detach()  # (K, d)
    rows = (z / 4.0).permute(0, 2, 3, 1).reshape(-1, 8)
    nearest = torch.cdist(rows.double(), vectors.double()).argmin(1).view(2, 8, 8)  # brute force
    assert torch.equal(ids, nearest)
    with torch.no_grad():
        assert torch.equal(images, tok.decode(nearest).clamp(-1, 1))
    # the latent that is diffused quantizes to the tokens of encode, for VAEVQ (mu) and VQGAN (encoder output)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    for model in (tok, VAEVQ(load_config("m0", TOKENIZER)).eval()):
        assert torch.equal(model.quantize_latent(model.encode_latent(x)), model.encode(x))
    # the public API: images in, a loss out; labels in, images out
    loss = ldm.training_loss(x, torch.tensor([0, 3]), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and ldm.unet.conv_in.weight.grad is not None
    assert not any(p.requires_grad for p in tok.parameters())
    out = ldm.sample(torch.tensor([1, 2]), num_steps=2, cfg_scale=1.5, eta=0.0,
                     generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    assert not any(k.startswith("tokenizer") for k in ldm.state_dict())  # frozen, saved on its own
    twin = copy.deepcopy(ldm)  # the weight EMA's copy shares the tokenizer, copies the UNet
    assert twin.tokenizer is tok and twin.unet is not ldm.unet
    assert torch.equal(twin.unet.conv_in.weight, ldm.unet.conv_in.weight)


def test_items_draw_from_their_own_seed():
    latents = np.stack([np.zeros((5, 2, 2, 2)), np.ones((5, 2, 2, 2))], axis=1).astype(np.float32)
    ds = LatentItems(latents, np.arange(5), (2, (2, 2), 1000, 0.5), cached=True)
    a, b = ds[(3, 11)], ds[(3, 11)]
    assert all(torch.equal(torch.as_tensor(u), torch.as_tensor(v)) for u, v in zip(a, b))
    assert {float(ds[(3, s)][0].mean()) for s in range(30)} == {0.0, 1.0}  # both views
    drops = [bool(draw_item(s, 2, (2, 2), 1000, 0.5)[2]) for s in range(200)]
    assert 60 < sum(drops) < 140
    ts = torch.stack([draw_item(s, 2, (2, 2), 1000, 0.1)[0] for s in range(400)])
    assert ts.min() >= 0 and ts.max() <= 999 and ts.float().std() > 200


# ---------------------------------------------------------------- training and the CLI


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = VAEVQ(load_config("tiny", TOKENIZER))
    out = tmp_path_factory.mktemp("tok") / "model"
    model.save_pretrained(out)
    return out


CACHE = {}


def ldm_config(tokenizer_dir, tmp_path, steps, extra=()):
    cache = CACHE.setdefault("dir", str(tmp_path.parent / "latents-shared"))
    return load_config("ldm-tiny", [f"generator.tokenizer={tokenizer_dir}", f"train.steps={steps}",
                                    f"generator.cache_dir={cache}", *LDM_FAST, *extra])


def test_training_lowers_the_loss_resumes_exactly_and_samples_decode(tokenizer_dir, tmp_path):
    trainer = make_trainer(ldm_config(tokenizer_dir, tmp_path, 30, ["train.lr=2e-3"]), tmp_path / "run")
    assert isinstance(trainer, LDMTrainer)
    # the latents: encode_latent of every tile and its flip; the scale is 1/std of them, recorded
    tok = VAEVQ.from_pretrained(tokenizer_dir).eval()
    x = torch.stack([trainer.train_images[i] for i in (0, 50)])
    lat = torch.from_numpy(np.asarray(trainer.train_latents[[0, 50]]))
    torch.testing.assert_close(lat[:, 0], tok.encode_latent(x))
    torch.testing.assert_close(lat[:, 1], tok.encode_latent(x.flip(-1)))
    std = np.asarray(trainer.train_latents, dtype=np.float64).std(ddof=1)
    assert trainer.config.generator.latent_scale == pytest.approx(1 / std, rel=1e-5)
    assert float(trainer.model.latent_scale) == pytest.approx(1 / std, rel=1e-5)
    before = trainer.validation_loss(trainer.model)["val_loss"]
    metrics = trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    mse = [r["loss/mse"] for r in log if "loss/mse" in r]
    assert np.mean(mse[-5:]) < np.mean(mse[:5]) - 0.1
    assert metrics["val_loss"] < before - 0.1
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["config"]["generator"]
    assert saved["latent_scale"] == pytest.approx(1 / std, rel=1e-5)
    assert (tmp_path / "run" / "model" / "tokenizer" / "model.safetensors").is_file()

    # resume: 2 steps, then 2 more = 4 straight, bit for bit (EMA too)
    straight = LDMTrainer(ldm_config(tokenizer_dir, tmp_path, 4), tmp_path / "s")
    straight.train()
    LDMTrainer(ldm_config(tokenizer_dir, tmp_path, 2), tmp_path / "r").train()
    resumed = LDMTrainer(ldm_config(tokenizer_dir, tmp_path, 4), tmp_path / "r", resume=True)
    assert resumed.step == 2
    resumed.train()
    for a, b in ((straight.model, resumed.model), (straight.ema.model, resumed.ema.model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # samples of the run decode through the tokenizer; seeded sampling repeats
    run = load_generator(tmp_path / "run")
    labels = torch.tensor([0, 3, 0])
    batches = list(sample_images(run.model, run.tokenizer, 3, labels, cfg_scale=1.5, num_steps=2, eta=0.0, seed=1,
                                 batch_size=2))
    images, ids = torch.cat([x for x, _, _ in batches]), torch.cat([t for _, t, _ in batches])
    with torch.no_grad():  # the same image up to float batching (the sampler decodes 2 at a time)
        torch.testing.assert_close(images, run.tokenizer.decode(ids.view(3, 8, 8)).clamp(-1, 1), rtol=0, atol=1e-5)
    again = torch.cat([t for _, t, _ in sample_images(run.model, run.tokenizer, 3, labels, cfg_scale=1.5,
                                                       num_steps=2, eta=0.0, seed=1, batch_size=2)])
    assert torch.equal(ids, again)
    # the final model folder is a self-contained pretrained LDM
    ldm = LatentDiffusion.from_pretrained(tmp_path / "run" / "model")
    assert float(ldm.latent_scale) == pytest.approx(1 / std, rel=1e-5)
    assert torch.equal(ldm.sample_latents(labels, num_steps=2, generator=torch.Generator().manual_seed(0)),
                       run.model.sample_latents(labels, num_steps=2, generator=torch.Generator().manual_seed(0)))


def test_latents_encoded_per_batch_as_ldm_4_trains(tokenizer_dir, tmp_path):
    """generator.cache_latents=false (ldm-4's ImageNet mode): images are encoded at each step, with
    the dataset's own flip; the scale is measured on images spread over the split."""
    config = ldm_config(tokenizer_dir, tmp_path, 2, ["generator.cache_latents=false"])
    trainer = LDMTrainer(config, tmp_path / "run")
    assert trainer.cache_dir is None and trainer.train_images.random_flip
    tok = VAEVQ.from_pretrained(tokenizer_dir).eval()
    picks = spread(len(trainer.train_images), SCALE_ITEMS)
    lat = torch.cat([tok.encode_latent(torch.stack([trainer.train_images[i] for i in picks[s:s + 256]]))
                     for s in range(0, len(picks), 256)]).double()
    assert trainer.config.generator.latent_scale == pytest.approx(1 / lat.std().item(), rel=1e-4)
    image, label, t, noise, drop = trainer.train_set[(7, 123)]
    assert image.shape == (3, 32, 32) and noise.shape == (8, 8, 8)
    z, *_ = trainer._to_device(tuple(torch.as_tensor(v)[None] for v in (image, label, t, noise, drop)))
    torch.testing.assert_close(z, tok.encode_latent(image[None]) * trainer.model.latent_scale)
    metrics = trainer.train()
    assert np.isfinite(metrics["val_loss"])


def test_cli_sample_and_eval(tokenizer_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "ldm-tiny", f"generator.tokenizer={tokenizer_dir}", "train.steps=2",
                 f"generator.cache_dir={CACHE.setdefault('dir', str(tmp_path.parent / 'latents-shared'))}",
                 *LDM_FAST, "--out", str(run)]) == 0
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(run), "--num", "3", "--out", str(out), "--classes", "1,2",
                 "--steps", "3", "--eta", "0.5", "--cfg", "2", "--seed", "4"]) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["num_steps"] == 3 and meta["eta"] == 0.5 and meta["cfg_scale"] == 2 and meta["classes"] == [1, 2]
    ids = torch.from_numpy(np.load(out / "ids.npy"))
    tok = VAEVQ.from_pretrained(tokenizer_dir).eval()
    with torch.no_grad():
        expected = to_uint8(tok.decode(ids).clamp(-1, 1)).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(np.asarray(Image.open(out / "000001_class2.png")), expected[1])
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--out", str(out), "--temperature", "0.5"]) == 2
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--out", str(out), "--steps", "0"]) == 2

    ref = tmp_path / "ref"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(ref / f"{i}.png")
    assert main(["eval", "--checkpoint", str(run), "--num", "12", "--ref", str(ref), "--batch-size", "12",
                 "--steps", "2"]) == 0
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["kind"] == "ldm" and result["sampling"]["num_steps"] == 2 and result["samples"] == 12
    assert set(result["baselines"]) == {"noise", "reconstruction"}
    assert (run / "eval" / "noise.png").is_file() and (run / "eval" / "samples.png").is_file()
    for block in (result, *result["baselines"].values()):
        assert block["fid_effnet"] > 0 and 0.0 <= block["precision_effnet"] <= 1.0


def test_hub_layout_loads_offline_and_push_uploads_save_pretrained(tokenizer_dir, tmp_path, monkeypatch):
    import huggingface_hub

    tok = VAEVQ.from_pretrained(tokenizer_dir)
    ldm = LatentDiffusion.from_preset("ldm-tiny", tokenizer=tok, overrides=UNET_FAST)
    ldm.set_latent_scale(2.5)

    # push_to_hub: create the repo and upload what save_pretrained writes (the network is mocked)
    calls = {}

    def create_repo(self, repo_id, **kw):
        calls["create"] = repo_id

    def upload_folder(self, *, repo_id, folder_path, **kw):
        calls["files"] = sorted(str(p.relative_to(folder_path)) for p in __import__("pathlib").Path(
            folder_path).rglob("*") if p.is_file())
        # the uploaded folder as a Hugging Face cache snapshot: models--org--name/snapshots/<sha>/
        import shutil

        repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(folder_path, repo / "snapshots" / ("a" * 40))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("a" * 40)
        return "commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert ldm.push_to_hub("someone/ldm-tiny") == "commit"
    assert calls["create"] == "someone/ldm-tiny"
    assert calls["files"] == ["config.yaml", "model.safetensors", "tokenizer/config.yaml",
                              "tokenizer/model.safetensors"]
    tok.push_to_hub("someone/tok")
    with pytest.raises(ValueError, match="repository id"):
        tok.push_to_hub("not a repo id")

    # from_pretrained("org/name") through huggingface_hub's cache, offline
    hub = tmp_path / "hub"
    again = LatentDiffusion.from_pretrained("someone/ldm-tiny", cache_dir=hub, local_files_only=True)
    assert float(again.latent_scale) == 2.5
    sa, sb = ldm.state_dict(), again.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    st, su = tok.state_dict(), again.tokenizer.state_dict()
    assert all(torch.equal(st[k], su[k]) for k in st)
    tok2 = VAEVQ.from_pretrained("someone/tok", cache_dir=hub, local_files_only=True)
    assert all(torch.equal(st[k], v) for k, v in tok2.state_dict().items())
    with pytest.raises(FileNotFoundError, match="someone/missing"):
        VAEVQ.from_pretrained("someone/missing", cache_dir=hub, local_files_only=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VAEVQ.from_pretrained(tmp_path / "no" / "such" / "folder")


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tokenizer_dir, tmp_path):
    # every item's timestep, noise and class drop come from its own seed: no dropout to switch off
    common = [f"generator.tokenizer={tokenizer_dir}",
              f"generator.cache_dir={CACHE.setdefault('dir', str(tmp_path.parent / 'latents-shared'))}",
              *LDM_FAST, "train.steps=2"]
    one, two = one_and_two_processes(LDMTrainer, "ldm-tiny", common, tmp_path)
    assert two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-5)


@pytest.mark.slow
def test_sweep_with_latent_diffusion_plots_generation_against_k(tmp_path, monkeypatch):
    import vaevq.generation.evaluate as ev

    monkeypatch.setattr(ev, "MAX_REFERENCE", 24)
    out = tmp_path / "sweep"
    assert main(["sweep-codebook", "tiny", *TOKENIZER, "eval.max_images=16", "eval.fid_effnet=false",
                 "eval.lpips_net=null", "data.usage_tokens=0", "train.progress=false", "--sizes", "32", "64",
                 "--steps", "2", "--eval-points", "1", "--generation", "ldm", "--generator-steps", "2",
                 "--generation-samples", "12", "--out", str(out)]) == 0
    data = json.loads((out / "sweep.json").read_text())
    assert [g["generation"]["kind"] for g in data["generation-ldm"]] == ["ldm", "ldm"]
    assert all(g["generation"]["fid_effnet"] > 0 for g in data["generation-ldm"])
    text = (out / "sweep.md").read_text()
    assert "## Generation (ldm)" in text and "| K 32 | ldm-tiny |" in text and "| K 64 | ldm-tiny |" in text
    assert (out / "sweep.png").is_file() and (out / "K64-ldm" / "model" / "model.safetensors").is_file()
