"""One helper for the generator trainers' "two processes equal one" tests (GPT and latent
diffusion): the same trainer on the same config, once in this process with the global batch and
once in two spawned gloo processes with half of it each."""

import os
import socket

import torch
import torch.multiprocessing as mp

from vaevq.config import load_config
from vaevq.distributed import shutdown


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, trainer_cls, preset, config_args, run_dir, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        trainer = trainer_cls(load_config(preset, config_args), run_dir, device="cpu")
        metrics = trainer.train()
        torch.save({"params": trainer.model.state_dict(), "metrics": metrics}, f"{out}/rank{rank}.pt")
    finally:
        shutdown()


def one_and_two_processes(trainer_cls, preset, common, tmp_path, global_batch=16):
    """Train ``preset`` with ``common`` overrides at ``global_batch`` in one process, then in two
    processes of half the batch each; assert both ranks hold the same weights and that they equal
    the single process's (float tolerance). Returns (single-process metrics, rank-0 metrics)."""
    single = trainer_cls(load_config(preset, [*common, f"train.batch_size={global_batch}"]), tmp_path / "one")
    one = single.train()
    out = tmp_path / "two"
    out.mkdir()
    args = (2, _free_port(), trainer_cls, preset, [*common, f"train.batch_size={global_batch // 2}"],
            str(tmp_path / "run2"), str(out))
    mp.spawn(_worker, args=args, nprocs=2)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for k, v in single.model.state_dict().items():
        assert torch.equal(ranks[0]["params"][k], ranks[1]["params"][k]), k  # identical on both ranks
        torch.testing.assert_close(ranks[0]["params"][k], v, rtol=0, atol=2e-5)
    return one, ranks[0]["metrics"]
