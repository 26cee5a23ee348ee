"""Training on several processes (torchrun): the process group, each rank's device, and the
model wrapped for data parallelism, either replicated (DDP) or sharded (FSDP2).

One global batch is cut into equal slices, one per process; the losses that look across
examples gather the others' slices (mmgraph/components/nn/global_batch.py), and DDP/FSDP
average the gradients, so k steps on N processes match k steps of one process on the same
global batch.

FSDP (`mmgraph train --fsdp`) shards every block (each child of a ModuleList: transformer
layers, repeat stacks), then the root, with `torch.distributed.fsdp.fully_shard`; parameters
and optimizer state live 1/N per rank, and checkpoints are written sharded with
torch.distributed.checkpoint (mmgraph/train/checkpoint.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from mmgraph.errors import UsageError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: a CUDA device becomes cuda:LOCAL_RANK (and the current one),
    so eight ranks on one node use eight GPUs instead of all landing on cuda:0."""
    if device.type != "cuda" or "LOCAL_RANK" not in os.environ:
        return device
    index = int(os.environ["LOCAL_RANK"])
    if index >= torch.cuda.device_count():
        raise UsageError(f"LOCAL_RANK {index} but this node has {torch.cuda.device_count()} "
                         "CUDA devices: start at most that many processes per node "
                         "(torchrun --nproc_per_node)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def blocks(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The repeated blocks of a generated model: every child of every ModuleList (transformer
    layers, repeat stacks), innermost first. A mixture of experts' `experts` are left whole:
    which experts run depends on the data, and a shard per expert would have ranks wait on
    collectives the others never start."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and not name.endswith("experts"):
            found += [(f"{name}.{i}", child) for i, child in enumerate(module)]
    return iter(sorted(found, key=lambda item: -item[0].count(".")))


def checkpoint_activations(model: nn.Module) -> int:
    """Recompute each block's activations in the backward pass instead of keeping them
    (activation checkpointing: less memory for about one more forward). Returns the number of
    blocks. The module tree and the weights' names stay as they were."""
    from torch.utils.checkpoint import checkpoint

    count = 0
    for _, block in blocks(model):
        if getattr(block, "_mmgraph_checkpointed", False):
            continue
        forward = block.forward

        def run(*args, _forward=forward, _block=block, **kwargs):
            if _block.training and torch.is_grad_enabled():
                return checkpoint(_forward, *args, use_reentrant=False, **kwargs)
            return _forward(*args, **kwargs)

        block.forward = run
        block._mmgraph_checkpointed = True
        count += 1
    return count


class World:
    """The process group of a torchrun launch (or one process for `--fsdp` alone): NCCL for
    GPUs, gloo for CPUs."""

    def __init__(self, device: torch.device, *, fsdp: bool = False):
        self.device = local_device(device)
        self.fsdp = fsdp
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            if env_world_size() > 1 or "MASTER_ADDR" in os.environ:
                dist.init_process_group(backend, device_id=self.device
                                        if backend == "nccl" else None)
            else:  # `--fsdp` without torchrun: a group of one
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self._sharded: nn.Module | None = None
        self.replicated: list[nn.Parameter] = []  # scalars FSDP cannot shard (see shard_model)

    def wrap(self, module: nn.Module, precision: torch.dtype | None = None) -> nn.Module:
        """DDP around the module (anew each stage: which parameters train may change), or the
        module sharded in place by FSDP2 (once: later stages change requires_grad only)."""
        if self.fsdp:
            return self.shard_model(module, precision)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=False)

    def shard_model(self, module: nn.Module, precision: torch.dtype | None) -> nn.Module:
        """fully_shard each block, then the root; bf16/fp16 compute with fp32 gradient
        reduction when the spec's precision asks for it (MixedPrecisionPolicy).

        FSDP2 shards no 0-dim parameter (a contrastive loss's learnable temperature): those
        stay whole on every rank, and `average_replicated_grads` averages their gradients."""
        if self._sharded is module:
            return module
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32) \
            if precision is not None else MixedPrecisionPolicy()
        from torch.distributed.device_mesh import init_device_mesh

        # the mesh on this rank's device (the default would be the GPU even under --device cpu)
        mesh = init_device_mesh(self.device.type, (self.size,))
        self.replicated = [p for p in module.parameters() if p.dim() == 0]
        scalars = set(self.replicated)
        for _, block in blocks(module):
            if any(p not in scalars for p in block.parameters()) and not _is_sharded(block):
                fully_shard(block, mesh=mesh, mp_policy=mp, ignored_params=scalars)
        fully_shard(module, mesh=mesh, mp_policy=mp, ignored_params=scalars)
        self._sharded = module
        return module

    def param_groups(self, params: list[nn.Parameter]) -> list:
        """The optimizer's parameter groups: under FSDP the shards (DTensors) apart from the
        replicated scalars, since one fused update cannot mix the two kinds."""
        if not self.fsdp:
            return params
        sharded = [p for p in params if _is_dtensor(p)]
        plain = [p for p in params if not _is_dtensor(p)]
        return [{"params": group} for group in (sharded, plain) if group]

    def average_replicated_grads(self) -> None:
        """The mean over ranks of the gradients FSDP does not reduce (the replicated scalars);
        DDP averages every gradient itself."""
        for p in self.replicated:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.size)

    def clip_grad_norm(self, params: list[nn.Parameter], max_norm: float) -> None:
        """clip_grad_norm_ over sharded and replicated gradients together: the norm of the
        whole (global) gradient, then one scale for all."""
        if not self.fsdp:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            return
        norms = []
        for kind in (True, False):
            grads = [p.grad for p in params if p.grad is not None and _is_dtensor(p) == kind]
            if grads:
                norm = torch.nn.utils.get_total_norm(grads)
                norms.append(norm.full_tensor() if _is_dtensor(norm) else norm)
        if not norms:
            return
        total = float(torch.linalg.vector_norm(torch.stack(norms)))
        scale = min(1.0, max_norm / (total + 1e-6))
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)

    def batch_slice(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n = next(iter(batch.values())).shape[0]
        if n % self.size:
            raise UsageError(f"batch size {n} does not divide over {self.size} processes; "
                             f"use a multiple of {self.size}")
        per = n // self.size
        return {k: v[self.rank * per:(self.rank + 1) * per] for k, v in batch.items()}

    shard = batch_slice  # the name the trainer's loop uses

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t)
        return {k: float(v) / self.size for k, v in zip(keys, t)}

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Every process done (checkpoints written) before teardown; a group this object did
        not start (a test's, a caller's) is left to its owner."""
        dist.barrier()
        if self.owns_group:
            dist.destroy_process_group()


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)
