"""One process of a training run: alone, or one of several started by ``torchrun`` that train with
DistributedDataParallel, each taking its share of the same global batch."""

import os

import torch
import torch.distributed as dist


class Process:
    """This process's place in a run: rank, number of processes and device (one process unless under torchrun)."""

    def __init__(self, device):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.world_size > 1:
            if device.type == "cuda":
                device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
                torch.cuda.set_device(device)
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.device = device

    @property
    def main(self):
        return self.rank == 0

    def agree(self, decision):
        """Process 0's decision, shared by all, so that every process stops at the same step."""
        if self.world_size == 1:
            return decision
        flag = torch.tensor([float(decision)], device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def share(self, indices):
        """This process's contiguous slice of a global batch."""
        size = len(indices) // self.world_size
        return indices[self.rank * size : (self.rank + 1) * size]
