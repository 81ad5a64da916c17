"""Training memories (and a LoRA adapter on the backbone): `memlm train --config FILE.yaml`.

Example:
    >>> from memlm.train import Trainer, TrainConfig
    >>> result = Trainer(TrainConfig.from_yaml("configs/train/babilong.yaml")).train()
"""

from memlm.train.config import DataSection, ModelSection, TrainConfig, TrainSection
from memlm.train.data import Batch, Example, TrainingData, collate
from memlm.train.trainer import Trainer, TrainResult

__all__ = ["Batch", "DataSection", "Example", "ModelSection", "TrainConfig", "TrainResult", "TrainSection", "Trainer",
           "TrainingData", "collate"]
