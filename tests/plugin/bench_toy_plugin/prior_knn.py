"""prior-knn: each class's frequency among an image's k nearest train images (cosine on frozen CLIP embeddings)."""

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.data import batch_indices
from bench.methods.base import Method, MethodConfig


class PriorKNNConfig(MethodConfig):
    k: int = Field(default=5, gt=0)


class PriorKNN(Method):
    name = "prior-knn"
    Config = PriorKNNConfig
    trainer = "fit"  # fitted by fit(), not by the engine's SGD loop
    deterministic = True  # no random numbers: run once, whatever the seeds
    family, display_name = "Reference points", "CLIP kNN prior"

    def __init__(self, config, backbone, data, device) -> None:
        super().__init__(config, backbone, data, device)
        self.model.requires_grad_(False)
        self.bank: torch.Tensor | None = None  # normalised train embeddings [N, D]
        self.bank_labels: torch.Tensor | None = None  # [N, C]

    def learnable_parameters(self) -> dict:
        return {}  # nothing is trained; the memory bank is data

    @torch.no_grad()
    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_image(images).float(), dim=-1)

    def fit(self, data, ctx) -> dict:
        train = data.splits["train"]
        self.model.eval()
        batches = [self._embed(self.prepare(train.images[i])) for i in batch_indices(len(train), ctx.eval_batch_size)]
        self.bank, self.bank_labels = torch.cat(batches), torch.as_tensor(train.labels, dtype=torch.float32)
        return {"k": self.config.k, "bank": len(self.bank)}

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        nearest = (self._embed(images) @ self.bank.T).topk(self.config.k, dim=1).indices
        p = (self.bank_labels[nearest].sum(1) + 0.5) / (self.config.k + 1)  # smoothed away from 0 and 1
        return (p.log() - (1 - p).log()).double()
