"""A wall-clock training budget for any nnU-Net trainer (``nnUNet_SAM_time_budget_seconds``).

Equal compute for a comparison means the same wall-clock time on the same machine, whatever a trainer's iterations
cost. With the variable set, ``run_training`` is nnU-Net's loop with one check after every training iteration: the
first iteration that ends after the budget is spent is the last one; that epoch's training loss is logged, its
validation iterations are skipped (they would only run past the budget), and ``on_train_end`` writes
``checkpoint_final.pth`` as at the end of any training. Without the variable nothing changes.

Two clocks, so that no trainer gets hidden compute:
  - the budget itself starts with the first training iteration: the set-up before it (network, pretrained weights,
    the loaders; for the ZAP trainers the one-off embedding-cache build) is timed and reported beside it;
  - the same budget counted from the start of ``run_training`` (set-up included): when it is spent, the weights are
    saved as ``checkpoint_budget_with_setup.pth`` (the same kind of file as checkpoint_final), so both readings come
    from one training. A set-up longer than the budget gives that checkpoint before any iteration.

What was reached goes to the training log and to ``time_budget.json`` in the fold folder (written atomically):
iterations, epoch, seconds, set-up seconds, and the same for the with-set-up checkpoint. A budgeted run of fold
``all`` skips nnU-Net's final validation: its validation cases are the training cases (in-sample, and on a CPU the
dearest part of a short run); ``nnUNetv2_train ... --val`` still runs it on request.
"""
import json
import time
from typing import Optional

import torch
from batchgenerators.utilities.file_and_folder_operations import join

from sam_nnunet import settings
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.trainers.checkpoints import atomic_write

WITH_SETUP_CHECKPOINT = "checkpoint_budget_with_setup.pth"
RECORD_FILE = "time_budget.json"


def time_budget_seconds() -> Optional[float]:
    try:
        return settings.get_positive_float(settings.TIME_BUDGET_SECONDS)
    except ValueError as e:
        raise UserFacingExit(str(e)) from None


class TimeBudgetMixin:
    """Mixed in before ``nnUNetTrainer`` (SAMTrainerBase, nnUNetTrainerShortRun): ``run_training`` stops at
    ``nnUNet_SAM_time_budget_seconds``."""

    time_budget_record: Optional[dict] = None  # set by a budgeted run_training; also what time_budget.json holds
    steps_in_epoch: int = 0  # training steps done in the current epoch (counted by the trainer's train_step)
    _budget_clock: Optional[tuple] = None  # (start of the budgeted loop, budget seconds)

    def run_progress(self) -> float:
        """Share of the run done, in [0, 1]: iterations of the schedule (epochs x iterations), or under a wall-clock
        budget the elapsed share of the budget where that is further."""
        total = self.num_epochs * self.num_iterations_per_epoch
        progress = (self.current_epoch * self.num_iterations_per_epoch + self.steps_in_epoch) / max(total, 1)
        if self._budget_clock is not None:
            start, budget = self._budget_clock
            progress = max(progress, (time.perf_counter() - start) / budget)
        return min(progress, 1.0)

    def run_training(self):
        budget = time_budget_seconds()
        if budget is None:
            return super().run_training()
        start = time.perf_counter()
        self._time_loader_setup()
        self.on_train_start()
        setup = time.perf_counter() - start
        record = {"budget_seconds": budget, "setup_seconds": round(setup, 3),
                  "loader_setup_seconds": round(self._loader_setup_seconds, 3), "iterations": 0,
                  "start_epoch": int(self.current_epoch), "with_setup": None}
        self.time_budget_record = record
        self.print_to_log_file(f"Time budget: {budget:g} s of training iterations from now; the set-up took "
                               f"{setup:.1f} s (data loaders {self._loader_setup_seconds:.1f} s)")
        if setup >= budget:  # the with-set-up reading is the untrained network
            self._save_with_setup_checkpoint(record, epoch=int(self.current_epoch), iteration=0, seconds=setup)
        loop_start = time.perf_counter()
        self._budget_clock = (loop_start, budget)
        stopped = False
        for epoch in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for batch_id in range(self.num_iterations_per_epoch):
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                record["iterations"] += 1
                now = time.perf_counter()
                if record["with_setup"] is None and now - start >= budget:
                    self._save_with_setup_checkpoint(record, epoch, batch_id + 1, now - start)
                if self._budget_spent(now - loop_start >= budget):
                    stopped = True
                    record.update({"stopped_in_epoch": epoch, "stopped_after_iteration_of_epoch": batch_id + 1})
                    break
            self.on_train_epoch_end(train_outputs)
            if stopped:
                break
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = []
                for batch_id in range(self.num_val_iterations_per_epoch):
                    val_outputs.append(self.validation_step(next(self.dataloader_val)))
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
        record.update({"stopped_by_budget": stopped, "seconds": round(time.perf_counter() - loop_start, 3),
                       "epochs_completed": int(self.current_epoch)})
        if stopped:
            self.print_to_log_file(
                f"Time budget of {budget:g} s spent: stopped after iteration "
                f"{record['stopped_after_iteration_of_epoch']} of epoch {record['stopped_in_epoch']} "
                f"({record['iterations']} training iterations, {record['seconds']:.1f} s); writing the final checkpoint")
        else:
            self.print_to_log_file(f"The schedule ended within the time budget of {budget:g} s "
                                   f"({record['iterations']} training iterations, {record['seconds']:.1f} s)")
        if record["with_setup"] is None:  # the whole training fitted into the budget counted with its set-up
            record["with_setup"] = {"checkpoint": "checkpoint_final.pth", "iterations": record["iterations"],
                                    "seconds": round(time.perf_counter() - start, 3), "whole_training": True}
        self.on_train_end()
        self._write_budget_record(record)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.time_budget_record is not None and self.fold == "all":
            self.print_to_log_file("Final validation skipped: a time-budgeted run of fold 'all' would validate on its "
                                   "own training cases (nnUNetv2_train ... --val runs it)")
            return
        return super().perform_actual_validation(save_probabilities)

    # ---- helpers ---------------------------------------------------------------------------------------------------
    def _time_loader_setup(self) -> None:
        """Times get_dataloaders (the embedding cache's build for the ZAP trainers) inside on_train_start."""
        self._loader_setup_seconds = 0.0
        original = self.get_dataloaders

        def timed():
            t = time.perf_counter()
            try:
                return original()
            finally:
                self._loader_setup_seconds += time.perf_counter() - t
        self.get_dataloaders = timed

    def _budget_spent(self, spent: bool) -> bool:
        # every DDP rank must stop after the same iteration, or the others wait forever in the next all-reduce
        if not self.is_ddp:
            return spent
        flag = torch.tensor([1.0 if spent else 0.0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _save_with_setup_checkpoint(self, record: dict, epoch: int, iteration: int, seconds: float) -> None:
        path = join(self.output_folder, WITH_SETUP_CHECKPOINT)
        self.save_checkpoint(path)  # our trainers write it atomically; nnU-Net's trainer writes it in place
        saved = self.local_rank == 0 and not self.disable_checkpointing
        record["with_setup"] = {"checkpoint": WITH_SETUP_CHECKPOINT if saved else None,
                                "iterations": record["iterations"], "epoch": int(epoch),
                                "iteration_of_epoch": int(iteration), "seconds": round(seconds, 3)}
        self.print_to_log_file(f"Time budget counted with the set-up spent after {record['iterations']} iterations: "
                               f"weights saved as {WITH_SETUP_CHECKPOINT}")

    def _write_budget_record(self, record: dict) -> None:
        if self.local_rank != 0:
            return
        with atomic_write(join(self.output_folder, RECORD_FILE)) as f:
            f.write(json.dumps(record, indent=2).encode())
