"""The nnU-Net trainer every SAM method derives from.

What it adds to ``nnUNetTrainer`` (everything else — data loading, augmentation, loss, validation, checkpoints,
export — is nnU-Net's own):

- the network: the method's class and encoder are written into the plans this trainer saves (``plans.json`` of the
  model folder), so ``nnUNetv2_predict`` rebuilds exactly the trained network without any SAM checkpoint;
- pretrained weights: loaded after nnU-Net built (and initialised) the network; training refuses to start from
  random weights unless nnUNet_SAM_allow_random_init=1; the checkpoint's sha256 goes to the log and, through the
  network's state dict, into every nnU-Net checkpoint;
- the optimiser: AdamW over trainable parameters only (frozen weights get no gradient and no optimiser state),
  each method's learning rate and linear decay; nnU-Net's gradient clipping, or the method's tighter one;
- patch sampling: the method's share of foreground-centred patches where its paper's code differs from nnU-Net's;
- short runs for smoke tests and demos: nnUNet_SAM_num_epochs, nnUNet_SAM_iterations_per_epoch.
- a wall-clock budget (nnUNet_SAM_time_budget_seconds, trainers.budget), as for nnUNetTrainerShortRun.

A method is a short subclass setting ``network_class``, ``network_kwargs``, ``encoder_families`` and its recipe.
"""
import functools
from typing import Dict, List, Optional, Tuple, Union

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn

from sam_nnunet import settings
from sam_nnunet.encoders.checkpoint import CheckpointError
from sam_nnunet.encoders.contract import window_from_plans
from sam_nnunet.encoders.pretrained import PretrainedChoice, choose_encoder, refuse_random_init_message
from sam_nnunet.errors import UserFacingExit
from sam_nnunet.networks.base import SAMNetworkBase
from sam_nnunet.nnunet_prediction import unwrapped
from sam_nnunet.trainers.budget import TimeBudgetMixin
from sam_nnunet.trainers.checkpoints import atomic_write, checkpoint_to_load, hold_fold_lock
from sam_nnunet.trainers.ddp import device_agnostic_ddp, keep_requested_device
from sam_nnunet.trainers.memory_check import check_memory_before_training
from sam_nnunet.trainers.output_folder import refuse_unwritable_results
from sam_nnunet.trainers.seeding import seed_training
from sam_nnunet.trainers.schedulers import LinearDecayLR, WarmupCosineLR


# network arguments newer than the first trained models: a resumed run that lacks one ran without it (None)
ADDED_LATER = ("input_window", "mask_token_source")


def check_settings() -> None:
    """``settings.check_all`` as one line for the user (every trainer and predictor calls it first)."""
    try:
        settings.check_all()
    except ValueError as e:
        raise UserFacingExit(str(e)) from None


def _logs_refusals(method):
    """A refusal (UserFacingExit) raised in ``method`` also goes to the fold's training log, where it is found with
    the rest of the run, not only to the terminal."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except UserFacingExit as e:
            if not getattr(e, "logged", False) and getattr(self, "log_file", None):
                e.logged = True  # once, however many decorated methods it passes through
                self.print_to_log_file(f"sam-nnunet: {e.message}", also_print_to_console=False)
            raise
    return wrapper


class SAMTrainerBase(TimeBudgetMixin, nnUNetTrainer):
    # ---- what a method sets --------------------------------------------------------------------------------
    network_class: str = ""                    # dotted path of a SAMNetworkBase subclass
    network_kwargs: Dict = {}                  # extra constructor arguments written into the plans
    encoder_families: Tuple[str, ...] = ("sam_vit",)
    default_encoder: Optional[str] = None      # where neither checkpoint nor nnUNet_SAM_encoder names one (else vit_b)
    checkpoint_example: Optional[str] = None   # checkpoint file named in the random-init refusal
    spatial_dims: int = 3                      # patch dimensionality the network accepts
    sam_initial_lr: float = 1e-4
    sam_weight_decay: float = 0.0
    lr_end_factor: float = 0.01                # decay to this fraction of the initial lr
    # "linear": linear decay per epoch over num_epochs (the papers' schedules); "warmup_cosine": warm-up over the
    # first lr_warmup share, then cosine, set every step from the share of the run done (budget or schedule)
    lr_schedule: str = "linear"
    lr_warmup: float = 0.0
    # CUDA peak under nnU-Net's autocast / fp32 memory estimate, the lowest measured (ViT-B methods 0.65-0.75 on an
    # H100, documentation/cuda.md): the start-up memory check stops only where even this share cannot fit
    cuda_autocast_memory_factor: float = 0.65
    sam_oversample_foreground_percent: Optional[float] = None  # foreground-centred share of patches (None: nnU-Net's)
    grad_clip_norm: Optional[float] = None     # the method's gradient-norm clip, per part (None: nnU-Net's 12 over all)
    grad_clip_parts: Tuple[str, ...] = ()      # submodules clipped each on its own; the other parameters form one part

    # ---- planning rules (SAMPlanner and _write_architecture_into_plans call the same) ----------------------
    @classmethod
    def label_kwargs(cls, has_regions: bool) -> Dict:
        """Network arguments the labels decide (nnU-Net region-based training or not), written into the plans."""
        return {}

    @classmethod
    def encoder_kwargs(cls, encoder: str) -> Dict:
        """Network arguments whose default depends on the encoder (ZAP: the in-plane scale); the trainer's
        ``network_kwargs`` override them, and a resumed run keeps the values its plans recorded."""
        return {}

    @classmethod
    def maps_intensity(cls, encoder: str) -> bool:
        """Whether the encoder gets the input it was trained on (``encoders.contract``: nnU-Net's values through an
        intensity window into the encoder's range); False: nnU-Net's values as they are."""
        return True

    def input_window(self, encoder: str) -> Optional[List[List[float]]]:
        """The ``input_window`` network argument: per input channel, the nnU-Net value range the encoder sees as
        [0, 1], from the plans' normalisation and intensity statistics (or None, ``maps_intensity``)."""
        if not self.maps_intensity(encoder):
            return None
        return window_from_plans(self.plans_manager.plans, self.configuration_name).to_kwargs()

    @classmethod
    def planned_arch_kwargs(cls, spacing) -> Dict:
        """Network arguments SAMPlanner decides from a configuration's spacing (the trainer keeps planned ones)."""
        return {}

    @classmethod
    def training_clicks(cls) -> Tuple[int, int]:
        """(positive clicks per foreground class, clicks anywhere) of a training patch: (0, 0) without prompts."""
        return 0, 0

    @_logs_refusals
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        check_settings()  # every nnUNet_SAM_* value, before any work (also read late: final validation)
        # before nnU-Net creates the fold folder and writes its log there
        refuse_unwritable_results(self.__class__.__name__, plans, configuration, fold)
        continue_training = bool(plans.get("continue_training", False))  # nnU-Net's __init__ pops it (--c)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.sam_continue_training = continue_training
        keep_requested_device(self, device)  # nnU-Net's DDP path would move a CPU trainer to cuda:<rank>
        self.enable_deep_supervision = False
        self.initial_lr = self.sam_initial_lr
        self.weight_decay = self.sam_weight_decay
        if self.sam_oversample_foreground_percent is not None:
            self.oversample_foreground_percent = self.sam_oversample_foreground_percent
            # drawn per patch, as the papers draw each crop's kind: the share then holds at any batch size (nnU-Net's
            # fixed scheme forces B - round(B * (1 - share)) patches: 1 of 2 for 0.67 at batch 2, all at batch 1)
            self.probabilistic_oversampling = True
        self._deferred_refusal: Optional[str] = None
        try:
            self._apply_short_run_settings()
            self._check_configuration()
            self.sam_choice: PretrainedChoice = self._choose_encoder()
        except (CheckpointError, ValueError) as e:
            raise UserFacingExit(str(e)) from None
        self._write_architecture_into_plans(self.sam_choice.encoder.name)
        self._weights_from_nnunet_checkpoint = False
        seed_training(self.print_to_log_file)  # before initialize() builds and initialises the network

    # ---- configuration -----------------------------------------------------------------------------------------
    def _apply_short_run_settings(self) -> None:
        epochs = settings.get_positive_int(settings.NUM_EPOCHS)
        iterations = settings.get_positive_int(settings.ITERATIONS_PER_EPOCH)
        if epochs:
            self.num_epochs = epochs
        if iterations:
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = min(self.num_val_iterations_per_epoch, iterations)

    def _check_configuration(self) -> None:
        patch = self.configuration_manager.patch_size
        if len(patch) != self.spatial_dims:
            raise ValueError(
                f"{self.__class__.__name__} segments {self.spatial_dims}D patches, but configuration "
                f"'{self.configuration_name}' plans {len(patch)}D patches {list(patch)}. Train a "
                f"{'3d_fullres or 3d_lowres' if self.spatial_dims == 3 else '2d'} configuration instead.")

    def _choose_encoder(self) -> PretrainedChoice:
        previous = self._encoder_of_previous_run()
        try:
            return choose_encoder(self.__class__.__name__, self.encoder_families, previous or self.default_encoder)
        except CheckpointError as e:
            # --val and --c take every weight from nnU-Net's checkpoint: a stale or broken nnUNet_SAM_checkpoint
            # must not stop them; a training from the start still refuses it (initialize)
            if previous is None or not settings.get_str(settings.CHECKPOINT) or not any(
                    isfile(join(self.output_folder, f"checkpoint_{k}.pth")) for k in ("final", "latest", "best")):
                raise
            self._deferred_refusal = str(e)
            self.print_to_log_file(f"{settings.CHECKPOINT} is not usable, and not needed to validate or resume "
                                   f"this fold (its weights come from nnU-Net's checkpoint): {e}")
            return choose_encoder(self.__class__.__name__, self.encoder_families, previous, ignore_checkpoint=True)

    def _architecture_of_previous_run(self) -> Optional[Dict]:
        """The network arguments an earlier run of this trainer recorded in the same output folder (resume, --val);
        read once, before this run writes its own plans.json there."""
        previous = self._previous_architecture
        return None if previous is None else dict(previous)

    @functools.cached_property
    def _previous_architecture(self) -> Optional[Dict]:
        plans_file = join(self.output_folder_base, "plans.json") if self.output_folder_base else None
        if not plans_file or not isfile(plans_file):
            return None
        try:
            arch = load_json(plans_file)["configurations"][self.configuration_name]["architecture"]
        except (KeyError, ValueError):
            return None
        if arch.get("network_class_name") == self.network_class:
            return dict(arch.get("arch_kwargs", {}))
        return None

    def _encoder_of_previous_run(self) -> Optional[str]:
        """Encoder recorded by an earlier run of this trainer in the same output folder (resume, --val)."""
        return (self._architecture_of_previous_run() or {}).get("encoder")

    def _write_architecture_into_plans(self, encoder: str) -> None:
        # the plans saved to the model folder then name our network; nnU-Net's predictor rebuilds it from there
        defaults = {**self.encoder_kwargs(encoder), "input_window": self.input_window(encoder)}
        previous = self._architecture_of_previous_run()
        if previous is not None:  # a resumed run keeps its values; arguments added later it ran without (None)
            defaults.update({k: previous.get(k) for k in defaults if k in previous or k in ADDED_LATER})
        self.network_kwargs = {**defaults, **self.network_kwargs,
                               **self.label_kwargs(bool(self.label_manager.has_regions))}
        self.plans_manager.plans["configurations"][self.configuration_name]["architecture"] = {
            "network_class_name": self.network_class,
            "arch_kwargs": {"encoder": encoder, **self.network_kwargs},
            "_kw_requires_import": [],
        }
        # get_configuration is lru-cached; resolve the (possibly inherited) configuration afresh
        self.configuration_manager = ConfigurationManager(
            self.plans_manager._internal_resolve_configuration_inheritance(self.configuration_name))

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        check_settings()  # nnUNetv2_predict's and our predictors' start: before the first case
        if configuration_manager.network_arch_class_name != cls.network_class:
            raise UserFacingExit(
                f"The plans name the network {configuration_manager.network_arch_class_name}, not "
                f"{cls.network_class}: they were not written by {cls.__name__}. Predict with the model folder "
                f"{cls.__name__} trained (its plans.json names the network).")
        return get_network_from_plans(
            configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
            allow_init=True, deep_supervision=enable_deep_supervision)

    # ---- network and weights -----------------------------------------------------------------------------------
    @property
    def sam_network(self) -> SAMNetworkBase:
        """The network without DDP / torch.compile wrappers."""
        return unwrapped(self.network)

    @_logs_refusals
    def initialize(self):
        hold_fold_lock(self)  # one training per fold folder (documentation/reliability.md)
        if not self._weights_from_nnunet_checkpoint and self._deferred_refusal:
            raise UserFacingExit(self._deferred_refusal)  # a training from the start needs the SAM weights
        if not self._weights_from_nnunet_checkpoint and not self.sam_choice.has_weights and \
                not settings.get_flag(settings.ALLOW_RANDOM_INIT):
            # refuse before building anything
            raise UserFacingExit(refuse_random_init_message(
                self.__class__.__name__, self.sam_choice.encoder.name,
                *((self.checkpoint_example,) if self.checkpoint_example else ())))
        with device_agnostic_ddp():
            super().initialize()
        report = self.sam_network.parameter_report()
        self.print_to_log_file(
            f"{self.__class__.__name__}: encoder {self.sam_choice.encoder.name}, parameters: "
            f"{report['trainable']:,} trainable, {report['frozen']:,} frozen, {report['added']:,} added")
        if self.num_epochs != 1000 or self.num_iterations_per_epoch != 250:
            self.print_to_log_file(f"Training length: {self.num_epochs} epochs x {self.num_iterations_per_epoch} "
                                   f"iterations (+{self.num_val_iterations_per_epoch} validation iterations)")
        if not self._weights_from_nnunet_checkpoint:
            self._load_pretrained_weights()

    def on_train_start(self):
        # training only (not --val), before data loaders start: stop here if the step cannot fit on the device
        if not self.was_initialized:
            self.initialize()
        check_memory_before_training(self)
        super().on_train_start()

    def _load_pretrained_weights(self) -> None:
        net, choice = self.sam_network, self.sam_choice
        if choice.has_weights:
            self.print_to_log_file(f"Pretrained weights: {choice.checkpoint}")
            self.print_to_log_file(f"Pretrained weights sha256: {choice.sha256}")
            try:
                net.load_pretrained(choice.state_dict, choice.checkpoint)
            except CheckpointError as e:
                raise UserFacingExit(str(e)) from None
            net.record_pretrained(choice.checkpoint, choice.sha256)
            choice.state_dict = None  # the weights now live in the network
        else:  # initialize() refused already unless random init was asked for
            banner = "!" * 100
            self.print_to_log_file(
                f"\n{banner}\nWARNING: {settings.ALLOW_RANDOM_INIT}=1 and no {settings.CHECKPOINT}: the "
                f"{choice.encoder.name} encoder of {self.__class__.__name__} starts from RANDOM weights. This is a "
                f"smoke test, not a foundation model; results say nothing about the method.\n{banner}\n")
            net.record_pretrained(None, None)

    @_logs_refusals
    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        # resuming (--c) or validating (--val): all weights come from nnU-Net's checkpoint, not from SAM's
        self._weights_from_nnunet_checkpoint = True
        if isinstance(filename_or_checkpoint, str):
            hold_fold_lock(self)
            # --c falls back to the newest intact checkpoint; a damaged file ends the run with the fix
            filename_or_checkpoint = checkpoint_to_load(self, filename_or_checkpoint)
        try:
            super().load_checkpoint(filename_or_checkpoint)
        except RuntimeError as e:
            if "state_dict" not in str(e):
                raise
            raise UserFacingExit(
                f"The nnU-Net checkpoint does not fit the network built now (encoder "
                f"{self.sam_choice.encoder.name}): it was trained with another encoder or method. Set "
                f"{settings.ENCODER} / {settings.CHECKPOINT} as for the original training, or train anew. "
                f"Details: {str(e).splitlines()[0]}") from None
        info = self.sam_network.pretrained_info
        self.print_to_log_file(f"Network weights from nnU-Net checkpoint; pretrained encoder {info.get('encoder')}, "
                               f"checkpoint {info.get('checkpoint')}, sha256 {info.get('sha256')}")

    @_logs_refusals
    def run_training(self):
        super().run_training()

    @_logs_refusals
    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            return super().save_checkpoint(filename)  # writes nothing (says so where checkpointing is disabled)
        # nnU-Net's checkpoint through a temporary file: a kill during the write leaves the previous file whole
        with atomic_write(filename) as f:
            super().save_checkpoint(f)  # nnU-Net only hands its argument on to torch.save, which takes a file

    # ---- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        trainable = [p for p in self.network.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.initial_lr, weight_decay=self.weight_decay)
        if self.grad_clip_norm is not None:
            # nnU-Net's train_step clips everything at norm 12, then steps: the method's clip runs as the optimiser's
            # step pre-hook, after that clip and after the grad scaler's unscaling (skipped with the step on inf)
            parts = self._gradient_clip_parts()
            max_norm = self.grad_clip_norm

            def clip_parts(optimizer, args, kwargs):
                for part in parts:
                    torch.nn.utils.clip_grad_norm_(part, max_norm)

            optimizer.register_step_pre_hook(clip_parts)
            self.print_to_log_file(f"Gradient clipping: norm {max_norm} for each of {len(parts)} parts "
                                   f"({', '.join(self.grad_clip_parts + ('the rest',))}), after nnU-Net's 12")
        if self.lr_schedule == "warmup_cosine":
            self.print_to_log_file(f"Learning rate: {self.initial_lr:g}, warm-up over {self.lr_warmup:.0%} of the run, "
                                   f"cosine decay to {self.lr_end_factor:g}x over the run's length, set every step")
            return optimizer, WarmupCosineLR(optimizer, self.initial_lr, self.num_epochs, self.lr_end_factor,
                                             self.lr_warmup)
        return optimizer, LinearDecayLR(optimizer, self.initial_lr, self.num_epochs, self.lr_end_factor)

    def on_train_epoch_start(self):
        self.steps_in_epoch = 0
        super().on_train_epoch_start()

    def train_step(self, batch: dict) -> dict:
        if isinstance(self.lr_scheduler, WarmupCosineLR):
            self.lr_scheduler.set_progress(self.run_progress())
        result = super().train_step(batch)
        self.steps_in_epoch += 1
        return result

    def _gradient_clip_parts(self) -> List[List[nn.Parameter]]:
        """Trainable parameters of each ``grad_clip_parts`` submodule, and of the rest, as lists."""
        net = unwrapped(self.network)  # not DDP-wrapped yet when nnU-Net configures the optimiser
        parts = [[p for p in getattr(net, name).parameters() if p.requires_grad] for name in self.grad_clip_parts]
        taken = {id(p) for part in parts for p in part}
        parts.append([p for p in net.parameters() if p.requires_grad and id(p) not in taken])
        return [part for part in parts if part]

    def set_deep_supervision_enabled(self, enabled: bool):
        # only a network that declares multi-scale heads (SAMNetworkBase.supports_deep_supervision) switches them
        if self.sam_network.supports_deep_supervision:
            self.sam_network.decoder.deep_supervision = enabled
