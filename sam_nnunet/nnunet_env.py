"""The environment nnU-Net needs to find sam-nnunet (``sam-nnunet env``)."""
import os
import shlex
from typing import Dict, Optional

import sam_nnunet

EXT_TRAINER = "nnUNet_extTrainer"


def ext_trainer_dir() -> str:
    """The folder nnU-Net's nnUNet_extTrainer must list: it holds only a re-export of our trainers."""
    return os.path.join(os.path.dirname(os.path.abspath(sam_nnunet.__file__)), "nnunet_ext")


def required_environment(data_dir: Optional[str] = None, environ: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Variables to export: nnUNet_extTrainer (keeping other folders already listed), and with ``data_dir`` the
    three nnU-Net data folders under it."""
    environ = os.environ if environ is None else environ
    ours = ext_trainer_dir()
    existing = [p for p in environ.get(EXT_TRAINER, "").split(os.pathsep) if p and p != ours]
    env = {EXT_TRAINER: os.pathsep.join([ours] + existing)}
    if data_dir:
        root = os.path.abspath(data_dir)
        env.update({"nnUNet_raw": os.path.join(root, "nnUNet_raw"),
                    "nnUNet_preprocessed": os.path.join(root, "nnUNet_preprocessed"),
                    "nnUNet_results": os.path.join(root, "nnUNet_results")})
    return env


def export_lines(env: Dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())
