"""The package's layers: each folder imports only the folders below it, no function-level import hides an arrow, and
the dotted network paths that trained models store in their plans.json keep resolving."""
import ast
import pathlib
import pydoc

import pytest

import sam_nnunet
from sam_nnunet.trainers.registry import trainer_classes

PACKAGE = pathlib.Path(sam_nnunet.__file__).parent

# low to high: a module may import its own unit and the units before it (README.md, "Layout")
LAYERS = ["sam_nnunet", "errors", "settings", "synthetic", "fold_lock", "nnunet_env", "commands", "nnunet_prediction",
          "nnunet_checkpoint", "encoders", "prompts", "blocks", "decoders", "losses", "networks", "trainers", "metrics",
          "inference", "planners", "evaluation", "napari_plugin", "nnunet_ext", "info", "demo", "cli"]

# what models trained with sam-nnunet name in plans.json ("network_class_name"); a moved class keeps an alias here
STORED_NETWORK_PATHS = {
    "sam_nnunet.networks.sam_adapter.SAMAdapterNetwork": "SAMAdapterTrainer",
    "sam_nnunet.networks.sam_adapter_prompted.SAMAdapterPromptedNetwork": "SAMAdapterTrainer_prompted",
    "sam_nnunet.networks.zap25d.ZAP25DNetwork": "ZAP25DSAMTrainer",
    "sam_nnunet.networks.zap25d_prompted.ZAP25DPromptedNetwork": "ZAP25DSAMTrainer_prompted",
    "sam_nnunet.networks.sam3dmed.SAM3DMedNetwork": "SAM3DMedTrainer",
    "sam_nnunet.networks.sam2_3dmed.SAM2_3dMedNetwork": "SAM2_3dMedTrainer",
}


def _unit(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return "sam_nnunet" if parts == ("__init__",) else parts[0]


def _imported_units(node: ast.AST):
    if isinstance(node, ast.ImportFrom) and node.module:
        names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "sam_nnunet" else [node.module]
    elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        return []
    return [n.split(".")[1] if "." in n else "sam_nnunet" for n in names if n.split(".")[0] == "sam_nnunet"]


def _modules():
    return [(p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))]


def test_every_unit_has_a_layer():
    units = {_unit(p) for p, _ in _modules()}
    assert units <= set(LAYERS), f"place {sorted(units - set(LAYERS))} in LAYERS (and README's layout)"


def test_no_folder_imports_a_higher_one():
    rank = {u: i for i, u in enumerate(LAYERS)}
    upward = [f"{p.relative_to(PACKAGE)}:{node.lineno} imports {target}"
              for p, tree in _modules() for node in ast.walk(tree)
              for target in _imported_units(node) if rank[target] > rank[_unit(p)]]
    assert not upward, "\n".join(upward)


# blocks are built from what their caller passes in (an encoder's modules or tensors), never from an encoder they
# import; left: pseudo_slices.py builds the frozen ZAP encoders itself (networks/zap25d.py imports its builder)
BLOCKS_THAT_IMPORT_ENCODERS = {"blocks/pseudo_slices.py"}


def test_blocks_do_not_import_encoders():
    importing = {str(p.relative_to(PACKAGE)) for p, tree in _modules() if _unit(p) == "blocks"
                 for node in ast.walk(tree) if "encoders" in _imported_units(node)}
    assert importing == BLOCKS_THAT_IMPORT_ENCODERS, sorted(importing ^ BLOCKS_THAT_IMPORT_ENCODERS)


def test_at_most_five_function_level_imports_of_the_package_outside_the_cli():
    hidden = [f"{p.relative_to(PACKAGE)}:{node.lineno}"
              for p, tree in _modules() if p.name != "cli.py"
              for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if _imported_units(node)]
    assert len(hidden) <= 5, hidden


@pytest.mark.parametrize("path, trainer", sorted(STORED_NETWORK_PATHS.items()))
def test_network_paths_stored_in_trained_models_still_resolve(path, trainer):
    cls = pydoc.locate(path)
    assert isinstance(cls, type), f"{path} no longer resolves: models trained before the move need an alias module"
    assert issubclass(pydoc.locate(trainer_classes()[trainer].network_class), cls)
