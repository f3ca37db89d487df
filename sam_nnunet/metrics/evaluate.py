"""``sam-nnunet evaluate``: nnU-Net's evaluation plus NSD and HD95, in nnU-Net's ``summary.json`` layout and a CSV.

Per case and per label (or region) nnU-Net's own ``compute_metrics`` gives Dice, IoU, TP, FP, FN, TN, n_ref,
n_pred (unchanged, with nnU-Net's conventions: Dice and IoU are NaN where reference and prediction are both empty);
:mod:`sam_nnunet.metrics.surface` adds ``NSD`` (at ``tolerance_mm``) and ``HD95`` (mm), from the reference
image's spacing. Means follow nnU-Net: ``mean[label][metric]`` is the mean over cases, skipping NaN (so Dice
averages the cases where the label is present in the reference or the prediction); ``foreground_mean`` averages
the label means except label 0. NSD and HD95 are never NaN (see ``surface``), so their means use every case.
``cases_counted`` says for every label and metric how many cases entered the mean.

Before any metric, every prediction's geometry (size, spacing, origin, direction, read from the file headers) is
compared with its reference's: metrics of a prediction in another geometry are meaningless, and nnU-Net's own
evaluation would either crash on the shapes or score it silently. Every mismatch is reported, one line each, with
its case and likely cause. nnU-Net has no opt-out for this, neither has sam-nnunet.
"""
import csv
import multiprocessing
import numbers
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from sam_nnunet.metrics.surface import HD95_KEY, NSD_KEY, surface_metrics

LabelOrRegion = Union[int, Tuple[int, ...]]
CSV_METRICS = ("Dice", NSD_KEY, HD95_KEY, "IoU", "TP", "FP", "FN", "TN", "n_ref", "n_pred")
CONVENTIONS = {
    "Dice": "nnU-Net's: NaN when reference and prediction are both empty; means skip NaN",
    NSD_KEY: "normalised surface Dice at the tolerance (MONAI, DeepMind surface elements); "
             "both empty: 1, one empty: 0",
    HD95_KEY: "max of the two directed 95th percentiles of boundary distances in mm (MONAI); both empty: 0, "
              "one empty: the image diagonal in mm",
    "means": "mean over cases skipping NaN (nnU-Net's rule); foreground_mean = mean over labels except 0",
}


def file_ending_of(folder: str) -> str:
    """File ending of the images in a folder (``.nii.gz`` and other double endings kept whole)."""
    names = sorted(f for f in os.listdir(folder) if not f.startswith("."))
    if not names:
        raise ValueError(f"{folder} holds no files")
    for ending in (".nii.gz", ".seg.nrrd"):
        if names[0].endswith(ending):
            return ending
    return os.path.splitext(names[0])[1]


# float noise of headers (float32 NIfTI fields, converters): far below any real difference of grids
SPACING_RTOL = 1e-4         # relative
ORIGIN_TOLERANCE = 0.01     # fraction of the smallest voxel size
DIRECTION_ATOL = 1e-4       # direction cosines (~0.006 degrees)


@dataclass(frozen=True)
class Geometry:
    """An image's grid from its header: along the file's axes i, j, k (SimpleITK's x, y, z)."""
    size: Tuple[int, ...]
    spacing: Tuple[float, ...]                  # mm
    origin: Optional[Tuple[float, ...]]         # mm, world position of voxel (0, 0, 0); None: format without one
    direction: Optional[Tuple[float, ...]]      # direction cosines, row-major; None: format without one


def read_geometry(path: str, reader_writer=None) -> Geometry:
    """The header of ``path`` (SimpleITK, no voxels read); formats SimpleITK cannot read go through nnU-Net's
    ``reader_writer`` (array axes, spacing only)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        if reader_writer is None:
            raise
        seg, properties = reader_writer.read_seg(path)
        return Geometry(tuple(int(v) for v in seg.shape[1:]), tuple(float(v) for v in properties["spacing"]),
                        None, None)
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()))


def _fmt(values: Optional[Sequence[float]], digits: int = 4) -> str:
    # (+ 0.0: no "-0" in messages)
    return "none" if values is None else "(" + ", ".join(f"{float(v) + 0.0:.{digits}g}" for v in values) + ")"


def geometry_mismatches(case: str, reference: Geometry, prediction: Geometry) -> List[str]:
    """One message per mismatch of ``prediction`` against ``reference`` (size, spacing, origin, direction), each
    naming the case, both grids and the likely cause; empty when they agree within float noise."""
    both = (f"prediction size {prediction.size}, spacing {_fmt(prediction.spacing)} mm, direction "
            f"{_fmt(prediction.direction, 3)}; reference size {reference.size}, spacing {_fmt(reference.spacing)} "
            f"mm, direction {_fmt(reference.direction, 3)}")
    same_spacing = len(prediction.spacing) == len(reference.spacing) and np.allclose(
        prediction.spacing, reference.spacing, rtol=SPACING_RTOL, atol=0)
    problems = []
    if prediction.size != reference.size:
        if sorted(prediction.size) == sorted(reference.size):
            cause = ("transposed axes: the prediction's axes are in another order (an array written without "
                     "nnU-Net's export, e.g. (z, y, x) saved as (x, y, z))")
        elif not same_spacing:
            cause = ("another resampling: the prediction is on another grid (e.g. at the planned or preprocessed "
                     "spacing) instead of the reference image's")
        else:
            cause = "wrong folder: a prediction of another image, or of a cropped one"
        problems.append(f"case {case}: the prediction has {prediction.size} voxels, the reference "
                        f"{reference.size} ({both}). Likely cause: {cause}")
    elif not same_spacing:
        problems.append(f"case {case}: spacing {_fmt(prediction.spacing)} mm, the reference "
                        f"{_fmt(reference.spacing)} mm on the same number of voxels ({both}). Likely cause: another "
                        f"resampling, or a header written by another tool")
    if prediction.origin is not None and reference.origin is not None:
        offset = np.asarray(prediction.origin, float) - np.asarray(reference.origin, float)
        if float(np.abs(offset).max()) > ORIGIN_TOLERANCE * min(reference.spacing):
            problems.append(f"case {case}: origin {_fmt(prediction.origin)} mm, the reference "
                            f"{_fmt(reference.origin)} mm ({float(np.linalg.norm(offset)):.4g} mm apart; {both}). "
                            f"Likely cause: wrong folder (the images of another case or dataset), or images cropped "
                            f"or shifted before prediction")
    if prediction.direction is not None and reference.direction is not None and not (
            len(prediction.direction) == len(reference.direction) and
            np.allclose(prediction.direction, reference.direction, rtol=0, atol=DIRECTION_ATOL)):
        problems.append(f"case {case}: direction {_fmt(prediction.direction, 3)}, the reference "
                        f"{_fmt(reference.direction, 3)} ({both}). Likely cause: transposed or reoriented axes "
                        f"(e.g. reoriented to RAS by another tool)")
    return problems


def check_geometries(reference_folder: str, prediction_folder: str, files: Sequence[str], file_ending: str,
                     reader_writer=None) -> None:
    """ValueError listing every mismatch (see :func:`geometry_mismatches`) of ``files`` (names in both folders)."""
    problems = []
    for f in files:
        case = f[:-len(file_ending)] if file_ending and f.endswith(file_ending) else f
        problems += geometry_mismatches(case, read_geometry(os.path.join(reference_folder, f), reader_writer),
                                        read_geometry(os.path.join(prediction_folder, f), reader_writer))
    if problems:
        raise ValueError(
            f"{len(problems)} geometry mismatch(es) between the predictions in {prediction_folder} and the "
            f"references in {reference_folder}; metrics would be meaningless:\n  " + "\n  ".join(problems) +
            "\nPredictions must be in the reference images' geometry, as nnUNetv2_predict writes them from the "
            "raw images: compare the right folders, or predict again from the original images.")


def evaluate_case(reference_file: str, prediction_file: str, reader_writer, labels_or_regions: List[LabelOrRegion],
                  ignore_label: Optional[int], tolerance_mm: float) -> dict:
    """nnU-Net's metrics of one case, with NSD and HD95 added to each label's entry."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics, region_or_label_to_mask

    seg_ref, properties = reader_writer.read_seg(reference_file)
    seg_pred, _ = reader_writer.read_seg(prediction_file)
    if seg_ref.shape != seg_pred.shape:  # (evaluate_folders checked the headers already)
        raise ValueError(f"{prediction_file} has shape {seg_pred.shape[1:]}, its reference {reference_file} "
                         f"{seg_ref.shape[1:]}: predictions must be in the reference image's geometry")
    result = compute_metrics(reference_file, prediction_file, reader_writer, labels_or_regions, ignore_label)
    seg_ref, seg_pred = seg_ref[0], seg_pred[0]  # (1, z, y, x) -> (z, y, x)
    spacing = [float(s) for s in properties["spacing"]]
    keep = None if ignore_label is None else seg_ref != ignore_label
    for r in labels_or_regions:
        mask_ref = region_or_label_to_mask(seg_ref, r)
        mask_pred = region_or_label_to_mask(seg_pred, r)
        if keep is not None:  # as nnU-Net's counts: voxels under the ignore label do not exist
            mask_ref, mask_pred = mask_ref & keep, mask_pred & keep
        result["metrics"][r].update(surface_metrics(mask_ref, mask_pred, spacing, tolerance_mm))
    return result


def _evaluate_case_star(args):
    return evaluate_case(*args)


def aggregate(per_case: List[dict], labels_or_regions: List[LabelOrRegion]) -> Tuple[dict, dict, dict]:
    """(mean, foreground_mean, cases_counted) with nnU-Net's rules."""
    metrics = list(per_case[0]["metrics"][labels_or_regions[0]].keys()) if per_case else []
    means, counted = {}, {}
    for r in labels_or_regions:
        means[r], counted[r] = {}, {}
        for m in metrics:
            values = np.array([c["metrics"][r][m] for c in per_case], dtype=float)
            finite = values[~np.isnan(values)]
            means[r][m] = float(finite.mean()) if finite.size else float("nan")
            counted[r][m] = int(finite.size)
    foreground = [r for r in labels_or_regions if r not in (0, "0")]
    foreground_mean = {m: float(np.mean([means[r][m] for r in foreground])) if foreground else float("nan")
                       for m in metrics}
    return means, foreground_mean, counted


def evaluate_folders(reference_folder: str, prediction_folder: str, labels_or_regions: Sequence[LabelOrRegion],
                     output_file: Optional[str] = None, tolerance_mm: float = 5.0, ignore_label: Optional[int] = None,
                     reader_writer=None, file_ending: Optional[str] = None, num_processes: int = 1,
                     chill: bool = False) -> dict:
    """Evaluate every prediction of ``prediction_folder`` against the file of the same name in ``reference_folder``.

    Writes ``output_file`` (nnU-Net's summary.json layout; default PRED/summary.json) and a CSV beside it (same
    name, ``.csv``). ``chill``: do not require a prediction for every reference file (nnU-Net's --chill).
    Returns the summary (labels/regions as ints/tuples, as nnU-Net's load_summary_json gives them).
    """
    from nnunetv2.evaluation.evaluate_predictions import save_summary_json
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_file_ending
    from nnunetv2.utilities.json_export import recursive_fix_for_json_export

    import monai

    labels_or_regions = [int(r) if isinstance(r, numbers.Integral) else tuple(int(i) for i in r)
                         for r in labels_or_regions]
    if not labels_or_regions:
        raise ValueError("no labels to evaluate")
    for folder, what in ((reference_folder, "reference"), (prediction_folder, "prediction")):
        if not os.path.isdir(folder):
            raise ValueError(f"the {what} folder {folder} does not exist")
    file_ending = file_ending or file_ending_of(reference_folder)
    references = sorted(f for f in os.listdir(reference_folder) if f.endswith(file_ending))
    predictions = sorted(f for f in os.listdir(prediction_folder) if f.endswith(file_ending))
    if not predictions:
        raise ValueError(f"{prediction_folder} holds no {file_ending} files")
    unmatched = [f for f in predictions if f not in references]
    if unmatched:
        raise ValueError(f"no reference in {reference_folder} for the predictions {', '.join(unmatched[:5])}"
                         f"{' ...' if len(unmatched) > 5 else ''}")
    missing = [f for f in references if f not in predictions]
    if missing and not chill:
        raise ValueError(f"{len(missing)} reference cases have no prediction (e.g. {missing[0]}); predict them or "
                         f"pass --chill to evaluate only the cases that were predicted")
    if reader_writer is None:
        reader_writer = determine_reader_writer_from_file_ending(
            file_ending, os.path.join(reference_folder, references[0]), allow_nonmatching_filename=True,
            verbose=False)()
    check_geometries(reference_folder, prediction_folder, predictions, file_ending, reader_writer)
    jobs = [(os.path.join(reference_folder, f), os.path.join(prediction_folder, f), reader_writer,
             labels_or_regions, ignore_label, tolerance_mm) for f in predictions]
    num_processes = max(1, min(num_processes, len(jobs)))
    if num_processes == 1:
        per_case = [evaluate_case(*job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
            per_case = pool.map(_evaluate_case_star, jobs)

    means, foreground_mean, counted = aggregate(per_case, labels_or_regions)
    summary = {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground_mean,
               "cases_counted": {str(k): v for k, v in counted.items()},
               "evaluation": {"tolerance_mm": tolerance_mm, "ignore_label": ignore_label,
                              "num_cases": len(per_case), "surface_metrics": f"monai {monai.__version__}",
                              "conventions": CONVENTIONS}}
    [recursive_fix_for_json_export(c) for c in per_case]
    recursive_fix_for_json_export(means)
    recursive_fix_for_json_export(foreground_mean)
    output_file = output_file or os.path.join(prediction_folder, "summary.json")
    if not output_file.endswith(".json"):
        raise ValueError(f"the output file must end with .json: {output_file}")
    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    save_summary_json(summary, output_file)
    write_csv(summary, labels_or_regions, output_file[:-len(".json")] + ".csv", file_ending)
    return summary


def write_csv(summary: dict, labels_or_regions: Sequence[LabelOrRegion], path: str, file_ending: str) -> None:
    """One row per case and label, then one row per label with the means and one with the foreground mean."""
    def label_name(r):
        return str(r) if isinstance(r, int) else "(" + ",".join(str(i) for i in r) + ")"

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "label", *CSV_METRICS])
        for case in summary["metric_per_case"]:
            name = os.path.basename(case["prediction_file"])[:-len(file_ending)]
            for r in labels_or_regions:
                writer.writerow([name, label_name(r), *[case["metrics"][r].get(m, "") for m in CSV_METRICS]])
        for r in labels_or_regions:
            writer.writerow(["mean", label_name(r), *[summary["mean"][r].get(m, "") for m in CSV_METRICS]])
        writer.writerow(["foreground_mean", "", *[summary["foreground_mean"].get(m, "") for m in CSV_METRICS]])


def labels_from_dataset_json(dataset_json_file: str, plans_file: Optional[str] = None
                             ) -> Tuple[List[LabelOrRegion], Optional[int], dict]:
    """Labels or regions to evaluate, the ignore label and dataset.json, as nnU-Net's evaluation derives them
    (regions when the dataset is region-based)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = load_json(dataset_json_file)
    labels = dataset_json.get("labels") or {}
    if labels and all(str(k).isdigit() for k in labels) and all(isinstance(v, str) for v in labels.values()):
        # a Decathlon download's dataset.json ({"0": "background", "1": "Anterior"}), read as nnU-Net's converter
        # reads it
        dataset_json["labels"] = {name: int(value) for value, name in labels.items()}
    try:
        if plans_file:
            label_manager = PlansManager(plans_file).get_label_manager(dataset_json)
        else:
            label_manager = LabelManager(dataset_json["labels"], regions_class_order=dataset_json.get(
                "regions_class_order"))
    except (KeyError, RuntimeError, AssertionError) as e:
        raise ValueError(f"cannot read the labels of {dataset_json_file} ({type(e).__name__}: {e}); give the "
                         f"labels with -l or another dataset.json with --dataset-json") from None
    labels = label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels
    return list(labels), label_manager.ignore_label, dataset_json


def find_dataset_files(reference_folder: str, prediction_folder: str, dataset_json: Optional[str],
                       plans: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """dataset.json / plans.json to take labels from: given ones, else those nnUNetv2_predict copies into the
    prediction folder, else the raw dataset's dataset.json beside the reference folder (labelsTr/..)."""
    if dataset_json is None:
        for candidate in (os.path.join(prediction_folder, "dataset.json"),
                          os.path.join(os.path.dirname(os.path.abspath(reference_folder)), "dataset.json")):
            if os.path.isfile(candidate):
                dataset_json = candidate
                break
    if plans is None and dataset_json is not None:
        candidate = os.path.join(os.path.dirname(dataset_json), "plans.json")
        plans = candidate if os.path.isfile(candidate) else None
    return dataset_json, plans


def parse_labels(values: Sequence[str]) -> List[LabelOrRegion]:
    """``1 2 3`` are labels; ``1,2,3`` (or ``(1,2,3)``) is one region, as nnU-Net writes region keys."""
    parsed = []
    for v in values:
        v = v.strip().strip("()")
        parts = [p for p in v.split(",") if p.strip()]
        try:
            numbers = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"label {v!r} is not an integer or a comma-separated region like 1,2") from None
        if not numbers:
            raise ValueError("empty label")
        parsed.append(numbers[0] if len(numbers) == 1 and "," not in v else numbers)
    return parsed


def evaluate(reference_folder: str, prediction_folder: str, output_file: Optional[str] = None,
             labels: Optional[Sequence[str]] = None, tolerance_mm: float = 5.0, dataset_json: Optional[str] = None,
             plans: Optional[str] = None, num_processes: int = 1, chill: bool = False) -> dict:
    """What ``sam-nnunet evaluate`` does: labels from ``labels`` or from dataset.json (regions and ignore label as
    nnU-Net handles them), the image reader of the dataset, then :func:`evaluate_folders`."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    dataset_json, plans = find_dataset_files(reference_folder, prediction_folder, dataset_json, plans)
    reader_writer, file_ending, ignore_label = None, None, None
    if dataset_json is not None:
        from_json, ignore_label, meta = labels_from_dataset_json(dataset_json, plans)
        file_ending = meta.get("file_ending")
        examples = sorted(f for f in os.listdir(reference_folder) if file_ending and f.endswith(file_ending)) \
            if os.path.isdir(reference_folder) else []
        if examples:
            reader_writer = determine_reader_writer_from_dataset_json(
                meta, os.path.join(reference_folder, examples[0]), allow_nonmatching_filename=True, verbose=False)()
    if labels:
        labels_or_regions = parse_labels(labels)
    elif dataset_json is not None:
        labels_or_regions = from_json
    else:
        raise ValueError("which labels? Give them (-l 1 2, or -l 1,2 for a region) or a dataset.json "
                         "(--dataset-json); none was found in the prediction folder or beside the reference folder")
    return evaluate_folders(reference_folder, prediction_folder, labels_or_regions, output_file, tolerance_mm,
                            ignore_label, reader_writer, file_ending, num_processes, chill)
