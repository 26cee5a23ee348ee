"""SwAV's swapped-prediction loss (the face of mmgraph/components/prototypes.py).

The codes are balanced over the batch (every prototype gets an equal share), so they look
across examples: under DDP/FSDP they are computed over the global batch, as SwAV's
`distributed_sinkhorn` does, and each process keeps its own rows."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgraph.components.nn.global_batch import gather, share_of_mean, world


@torch.no_grad()
def sinkhorn(scores, *, epsilon: float, iterations: int):
    """Codes [N, K] for scores [N, K]: exp(scores / epsilon) scaled alternately so that every
    prototype holds 1/K of the mass and every row 1/N, then rows to sum 1 (SwAV)."""
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).t()  # [K, N]
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).t()


class Prototypes(nn.Module):
    """-(q_b . log p_a + q_a . log p_b) / 2 per example, p = softmax(z . c / temperature) over
    unit prototypes c, q the Sinkhorn codes of the other view (no gradient)."""

    def __init__(self, *, in_width: int, prototypes: int, temperature: float, epsilon: float,
                 iterations: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(prototypes, in_width) / in_width ** 0.5)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, iterations

    def forward(self, a, b):
        protos = F.normalize(self.weight.float(), dim=-1)
        za = F.normalize(a.reshape(-1, a.shape[-1]).float(), dim=-1) @ protos.t()
        zb = F.normalize(b.reshape(-1, b.shape[-1]).float(), dim=-1) @ protos.t()
        qa, qb = self._codes(za), self._codes(zb)
        la = F.log_softmax(za / self.temperature, dim=-1)
        lb = F.log_softmax(zb / self.temperature, dim=-1)
        total = -((qb * la).sum() + (qa * lb).sum()) / 2
        return share_of_mean(total, torch.tensor(len(za), device=za.device))

    def _codes(self, scores):
        """Codes of this process's rows, balanced over the global batch."""
        rank, _ = world()
        every = gather(scores)
        rows = len(scores)
        return sinkhorn(every, epsilon=self.epsilon,
                        iterations=self.iterations)[rank * rows:(rank + 1) * rows]
