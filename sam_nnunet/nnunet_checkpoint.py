"""Reading nnU-Net's model checkpoints (``fold_X/checkpoint_final.pth``) without running code from them.

nnU-Net reads them with ``torch.load(..., weights_only=False)``: a model folder someone sent you can run any code
when it is loaded. sam-nnunet's own loaders (``sam-nnunet predict-prompted``, the click evaluation, the benchmark)
read them with ``weights_only=True`` instead. What nnU-Net's trainer stores is tensors and plain Python values, plus
numpy scalars in the training log (losses, Dice, ``_best_ema``); those numpy types are the only globals allowed.
"""
import inspect
import os
import pickle
import re
import warnings
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager


def _numpy_globals() -> List:
    scalar = np.core.multiarray.scalar if not hasattr(np, "_core") else np._core.multiarray.scalar
    allowed = [scalar, np.dtype, (scalar, "numpy.core.multiarray.scalar"),  # the name numpy 1.x pickles
               (scalar, "numpy._core.multiarray.scalar")]
    # numpy >= 1.25 pickles a dtype through its class (np.dtypes.Float64DType, ...): the numeric ones nnU-Net logs
    allowed += [type(np.dtype(t)) for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                            np.uint32, np.uint64, np.float16, np.float32, np.float64)]
    return allowed


NNUNET_CHECKPOINT_GLOBALS = _numpy_globals()


class ModelCheckpointError(ValueError):
    """An nnU-Net checkpoint sam-nnunet will not read; the message says why and what to do."""


def load_nnunet_checkpoint(path: str, map_location: Union[str, torch.device] = "cpu") -> dict:
    """The checkpoint dict nnU-Net's trainer saved, read with ``weights_only=True`` (numpy scalars allowed).

    Raises ModelCheckpointError for a missing or damaged file and for one that holds other objects (refused before
    anything in it is built: no code runs)."""
    if not os.path.isfile(path):
        raise ModelCheckpointError(f"{path} does not exist: the model folder has no such checkpoint (train that "
                                   f"fold, or choose the folds that were trained)")
    try:
        with torch.serialization.safe_globals(NNUNET_CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        detail = text[text.find("WeightsUnpickler error:"):].splitlines() if "WeightsUnpickler error:" in text \
            else text.splitlines()
        detail = " ".join(line.strip() for line in detail[:3] if line.strip())
        if "GLOBAL" not in detail and "add_safe_globals" not in detail and "Can only" not in detail:
            raise ModelCheckpointError(
                f"{path} is not a readable nnU-Net checkpoint ({detail}): the file is damaged or was cut short "
                f"while being written. Use another checkpoint of the fold or train it again.") from None
        named = re.search(r"GLOBAL (\S+)", detail)
        detail = f"it calls for {named.group(1)}" if named else detail.split(". ")[0]
        raise ModelCheckpointError(
            f"{path} holds objects other than tensors and plain values ({detail}). sam-nnunet reads model "
            f"checkpoints with torch.load(weights_only=True) and refused it; nothing in it was run. nnUNetv2_train "
            f"writes no such objects: the file was altered or comes from elsewhere. Use model folders from a "
            f"trusted source only, or train the model again.") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ModelCheckpointError(
            f"{path} is not a readable nnU-Net checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}): the file is damaged or was cut short while "
            f"being written. Use another checkpoint of the fold or train it again.") from None
    missing = [k for k in ("network_weights", "trainer_name", "init_args") if not isinstance(checkpoint, dict)
               or k not in checkpoint]
    if missing:
        raise ModelCheckpointError(f"{path} is not an nnU-Net model checkpoint (it has no {', '.join(missing)}); "
                                   f"point at a model folder written by nnUNetv2_train")
    return checkpoint


class SafeCheckpointPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` whose ``initialize_from_trained_model_folder`` reads checkpoints with
    :func:`load_nnunet_checkpoint`; the rest (network from the plans, fold ensembling, compile) is nnU-Net's."""

    def initialize_from_trained_model_folder(self, model_training_output_dir: str,
                                             use_folds: Optional[Sequence[Union[int, str]]],
                                             checkpoint_name: str = "checkpoint_final.pth"):
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        if isinstance(use_folds, str):
            use_folds = [use_folds]
        dataset_json = load_json(join(model_training_output_dir, "dataset.json"))
        plans_manager = PlansManager(load_json(join(model_training_output_dir, "plans.json")))

        parameters, first = [], None
        for f in use_folds:
            f = int(f) if f != "all" else f
            checkpoint = load_nnunet_checkpoint(join(model_training_output_dir, f"fold_{f}", checkpoint_name))
            first = first or checkpoint
            parameters.append(checkpoint["network_weights"])
        trainer_name = first["trainer_name"]
        configuration_manager = plans_manager.get_configuration(first["init_args"]["configuration"])
        mirroring: Optional[Tuple[int, ...]] = first.get("inference_allowed_mirroring_axes")

        trainer_class = recursive_find_trainer_class_by_name(trainer_name)
        num_input_channels = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
        num_output_channels = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
        if "plans_manager" in inspect.signature(trainer_class.build_network_architecture).parameters:
            network = trainer_class.build_network_architecture(
                plans_manager, configuration_manager, num_input_channels, num_output_channels,
                enable_deep_supervision=False)
        else:  # nnU-Net's old signature (trainers written before 2.7)
            warnings.warn(f"Trainer {trainer_name} uses the old build_network_architecture signature",
                          DeprecationWarning, stacklevel=2)
            network = trainer_class.build_network_architecture(
                configuration_manager.network_arch_class_name, configuration_manager.network_arch_init_kwargs,
                configuration_manager.network_arch_init_kwargs_req_import, num_input_channels,
                num_output_channels, enable_deep_supervision=False)
        # as nnU-Net: the first fold's weights in the network from the start (MIC-DKFZ/nnUNet#2520)
        network.load_state_dict(parameters[0])
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                   trainer_name, mirroring)
