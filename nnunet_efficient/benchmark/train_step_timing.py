"""Seconds per training iteration, parameters and MACs per window of one trainer on one dataset.

Run by ``nnunet-efficient compare`` in a child process (``python -m
nnunet_efficient.benchmark.train_step_timing``) whose ``nnUNet_results`` points at a scratch
folder, because nnU-Net's trainer writes its log file into ``nnUNet_results`` as soon as it is
built, and so that its memory and threads end with it.

The iterations timed are nnU-Net's own ``train_step`` (forward, deep-supervision loss,
backward, optimiser step) on batches from the trainer's own data loader; fetching the batch is
outside the timed span, as nnU-Net's background augmentation workers keep it off the training
process's time. On the CPU the time is the process's CPU time (all its threads), which is what a
CPU-minute budget means and what stays comparable on a machine shared with other jobs; on other
devices it is wall time after a synchronisation.
"""

from __future__ import annotations

import argparse
import time

import torch

from nnunet_efficient.common.files import atomic_write_json


def time_training_steps(dataset: str, configuration: str, fold: int | str, trainer_name: str, plans: str,
                        device: torch.device, iterations: int = 5, warmup: int = 2) -> dict:
    """Build the trainer as ``nnUNetv2_train`` does and time ``iterations`` training steps.

    Returns:
        ``seconds_per_iteration`` (CPU seconds on the CPU, else wall), ``wall_seconds_per_iteration``,
        ``cpu_seconds_per_iteration``, ``clock`` ("cpu" or "wall"), ``parameters``,
        ``macs_per_window`` (one patch, batch 1, no deep supervision, ``torch.utils.flop_counter``),
        ``patch_size``, ``batch_size`` and ``torch_threads``.
    """
    from nnunetv2.run.run_training import get_trainer_from_args

    from nnunet_efficient.benchmark.measure import count_macs
    from nnunet_efficient.common.modules import unwrap_network
    from nnunet_efficient.common.plugin_env import register_plugin_trainers

    register_plugin_trainers()
    trainer = get_trainer_from_args(str(dataset), configuration, fold, trainer_name, plans, device=device)
    trainer.initialize()
    loader, _ = trainer.get_dataloaders()
    trainer.set_deep_supervision_enabled(trainer.enable_deep_supervision)
    trainer.network.train()

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    wall = cpu = 0.0
    for i in range(warmup + iterations):
        batch = next(loader)
        synchronize()
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train_step(batch)
        synchronize()
        if i >= warmup:
            wall += time.perf_counter() - wall_start
            cpu += time.process_time() - cpu_start

    network = unwrap_network(trainer.network)
    trainer.set_deep_supervision_enabled(False)
    network.eval()
    patch = list(trainer.configuration_manager.patch_size)
    window = torch.zeros((1, trainer.num_input_channels, *patch), device=device)
    with torch.no_grad():
        _, macs = count_macs(network, window)
    clock = "cpu" if device.type == "cpu" else "wall"
    return {
        "seconds_per_iteration": (cpu if clock == "cpu" else wall) / iterations,
        "wall_seconds_per_iteration": wall / iterations,
        "cpu_seconds_per_iteration": cpu / iterations,
        "clock": clock,
        "parameters": sum(p.numel() for p in network.parameters()),
        "macs_per_window": macs,
        "patch_size": patch,
        "batch_size": trainer.batch_size,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--configuration", required=True)
    parser.add_argument("--fold", required=True)
    parser.add_argument("--trainer", required=True)
    parser.add_argument("--plans", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--output", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    fold = args.fold if args.fold == "all" else int(args.fold)
    result = time_training_steps(args.dataset, args.configuration, fold, args.trainer, args.plans,
                                 torch.device(args.device), args.iterations, args.warmup)
    atomic_write_json(args.output, result)


if __name__ == "__main__":
    main()
