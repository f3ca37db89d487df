"""One rank of the DDP test (tests/test_ddp.py), run by torch.multiprocessing.spawn: a CPU process of a gloo group
that builds each trainer the way ``nnUNetv2_train -num_gpus 2`` builds it in every rank (nnU-Net's initialize wraps
the network in DistributedDataParallel) and trains two steps on batches of its own."""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def run_rank(rank: int, world_size: int, port: int, dataset: dict, plans_name: str, results: str,
             trainers: list) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "nnUNet_results": results,
                       "nnUNet_SAM_allow_random_init": "1", "nnUNet_n_proc_DA": "0"})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for name, encoder in trainers:
            train_two_steps(rank, world_size, name, encoder, dataset, plans_name)
    finally:
        dist.destroy_process_group()


def train_two_steps(rank: int, world_size: int, name: str, encoder: str, dataset: dict, plans_name: str) -> None:
    from helpers import make_trainer
    from sam_nnunet.trainers.registry import get_trainer_class

    os.environ["nnUNet_SAM_encoder"] = encoder
    trainer = make_trainer(get_trainer_class(name), dataset, plans_name=plans_name)
    assert trainer.is_ddp and trainer.device.type == "cpu", (name, trainer.device)
    trainer.initialize()
    assert isinstance(trainer.network, DistributedDataParallel), type(trainer.network)
    assert trainer.batch_size == 1  # nnU-Net splits the global batch of 2 over the ranks
    net = trainer.sam_network
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}

    generator = torch.Generator().manual_seed(1000 + rank)  # every rank trains on other data
    patch = trainer.configuration_manager.patch_size
    classes = trainer.label_manager.num_segmentation_heads
    for step in range(2):
        if hasattr(trainer, "prompt_free_probability"):
            # the hard case for DDP: in each step one rank trains without clicks (its prompt path unused), the
            # other with clicks
            trainer.prompt_free_probability = 1.0 if (rank + step) % 2 == 0 else 0.0
        target = torch.randint(0, classes, (1, 1, *patch), generator=generator).to(torch.int16)
        data = torch.randn(1, trainer.num_input_channels, *patch, generator=generator) + target
        scales = trainer._get_deep_supervision_scales()
        if scales is not None:  # SAM3DMedTrainer: a target per decoder level, as nnU-Net's loader delivers them
            target = [torch.nn.functional.interpolate(target.float(), [round(p * f) for p, f in zip(patch, s)],
                                                      mode="nearest").to(torch.int16) for s in scales]
        trainer.network.train()
        loss = trainer.train_step({"data": data, "target": target})["loss"]
        assert torch.isfinite(torch.as_tensor(loss)), (name, step, loss)

    for n, p in net.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[n]), f"{name}: frozen parameter {n} changed"
    trained = torch.cat([p.detach().flatten() for p in net.parameters() if p.requires_grad])
    gathered = [torch.empty_like(trained) for _ in range(world_size)]
    dist.all_gather(gathered, trained)
    assert torch.equal(gathered[0], gathered[1]), f"{name}: trainable parameters differ between the ranks"
    changed = [n for n, p in net.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, f"{name}: no trainable parameter changed"
    print(f"rank {rank} {name}: {len(changed)} of {len(before)} trainable tensors changed, identical on the ranks",
          flush=True)
