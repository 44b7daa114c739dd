"""Training loop, evaluation, checkpoints."""

from vaevq.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from vaevq.training.evaluate import evaluate
from vaevq.training.trainer import Trainer

__all__ = ["Trainer", "evaluate", "load_checkpoint", "load_model", "save_checkpoint"]
