import math

import numpy as np
import pytest
import torch

from hf_medmamba.tools.metrics import (
    binary_segmentation_metrics,
    classification_metrics,
    multiclass_segmentation_metrics,
    plot_confusion_matrix,
    synapse_summary,
    volume_dice_hd95,
)


approx = pytest.approx

# ----------------------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------------------

# Three classes, six samples; predictions (argmax) 0, 1, 1, 1, 2, 0.
LABELS = [0, 0, 1, 1, 2, 2]
PROBS = [
    [0.7, 0.2, 0.1],
    [0.3, 0.6, 0.1],
    [0.2, 0.7, 0.1],
    [0.1, 0.8, 0.1],
    [0.1, 0.2, 0.7],
    [0.5, 0.1, 0.4],
]


def check_three_class(result):
    # Confusion (rows true): [1, 1, 0], [0, 2, 0], [1, 0, 1]; 4 of 6 right.
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["accuracy"] == approx(4 / 6)
    # class 0: TP 1, FP 1, FN 1, TN 3; class 1: TP 2, FP 1, FN 0, TN 3; class 2: TP 1, FP 0, FN 1, TN 4.
    per_class = result["per_class"]
    assert per_class["precision"] == approx([1 / 2, 2 / 3, 1])
    assert per_class["sensitivity"] == approx([1 / 2, 1, 1 / 2])
    assert per_class["specificity"] == approx([3 / 4, 3 / 4, 1])
    assert per_class["f1"] == approx([1 / 2, 4 / 5, 2 / 3])
    assert per_class["support"] == [2, 2, 2]
    assert result["precision"] == approx(13 / 18)
    assert result["sensitivity"] == approx(2 / 3)
    assert result["specificity"] == approx(5 / 6)
    assert result["f1"] == approx(59 / 90)
    # AUC, positives ranked above negatives: class 0, positives 0.7 and 0.3 against 0.2, 0.1, 0.1, 0.5: 7 of 8 pairs;
    # class 1, positives 0.7, 0.8 above all of 0.2, 0.6, 0.2, 0.1; class 2, positives 0.7, 0.4 above four 0.1s.
    assert per_class["auc"] == approx([7 / 8, 1, 1])
    assert result["auc"] == approx(23 / 24)
    assert result["auc_excluded_classes"] == []


def test_classification_from_probabilities():
    check_three_class(classification_metrics(np.array(LABELS), np.array(PROBS), num_classes=3))


def test_classification_from_logits_tensor():
    # log-probabilities plus a per-row offset: the softmax gives PROBS back.
    logits = torch.tensor(PROBS, dtype=torch.float64).log() + torch.arange(6.0, dtype=torch.float64)[:, None]
    check_three_class(classification_metrics(torch.tensor(LABELS), logits.float()))


def test_classification_absent_class():
    # Class 2 is in neither labels nor predictions (argmax 0, 1, 1, 1): its AUC is undefined and left out.
    labels = [0, 0, 1, 1]
    probs = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1]]
    result = classification_metrics(labels, probs)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    assert result["auc_excluded_classes"] == [2]
    # class 0: positives 0.6, 0.2 against negatives 0.1, 0.3: 3 of 4 pairs; class 1: 0.8, 0.6 above 0.3, 0.5.
    assert result["per_class"]["auc"][:2] == approx([3 / 4, 1])
    assert math.isnan(result["per_class"]["auc"][2])
    assert result["auc"] == approx(7 / 8)
    # class 0: TP 1, FP 0, FN 1, TN 2; class 1: TP 2, FP 1, FN 0, TN 1; class 2: never predicted, no samples, TN 4.
    assert result["per_class"]["precision"] == approx([1, 2 / 3, 0])
    assert result["per_class"]["sensitivity"] == approx([1 / 2, 1, 0])
    assert result["per_class"]["specificity"] == approx([1, 1 / 2, 1])
    assert result["per_class"]["f1"] == approx([2 / 3, 4 / 5, 0])
    assert result["precision"] == approx(5 / 9)
    assert result["sensitivity"] == approx(1 / 2)
    assert result["specificity"] == approx(5 / 6)
    assert result["f1"] == approx(22 / 45)


def test_classification_binary():
    labels = np.array([0, 0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.6, 0.35, 0.8])  # predictions 0, 0, 1, 0, 1
    # class 1: TP 1, FP 1, FN 1, TN 2; class 0: TP 2, FP 1, FN 1, TN 1.
    # AUC of class 1: positives 0.35, 0.8 against negatives 0.1, 0.4, 0.6: 1 + 3 of 6 pairs.
    expected = {"accuracy": 3 / 5, "precision": 7 / 12, "sensitivity": 7 / 12, "specificity": 7 / 12, "auc": 2 / 3}
    two_columns = np.stack([1 - p1, p1], axis=1)
    logits = np.log(p1 / (1 - p1))
    for scores in (p1, two_columns, logits, torch.from_numpy(two_columns)):
        result = classification_metrics(labels, scores)
        assert result["confusion_matrix"] == [[2, 1], [1, 1]]
        assert {key: result[key] for key in expected} == approx(expected)
        assert result["f1"] == approx((2 / 3 + 1 / 2) / 2)


def test_classification_rejects_bad_inputs():
    with pytest.raises(ValueError, match="num_classes=4"):
        classification_metrics(LABELS, PROBS, num_classes=4)
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics([0, 0, 1, 1, 2, 3], PROBS)
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(LABELS[:5], PROBS)


def test_plot_confusion_matrix_writes_png(tmp_path):
    path = plot_confusion_matrix([[5, 1], [2, 7]], ["benign", "malignant"], tmp_path / "cm.png")
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix([[5, 1], [2, 7]], ["a", "b", "c"], tmp_path / "bad.png")


# ----------------------------------------------------------------------------------------------------------------------
# Binary segmentation
# ----------------------------------------------------------------------------------------------------------------------


def test_binary_segmentation_hand_computed():
    # Image 1 (2 × 3): prediction (>= 0.5, so 0.5 counts) [[1, 0, 1], [0, 1, 0]]: TP 2, FP 1, FN 1, TN 2; Dice 4/6.
    prob1 = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.5, 0.4]])
    target1 = torch.tensor([[1, 1, 0], [0, 1, 0]])
    # Image 2 (3 × 2): empty prediction and target: TN 6; Dice 1.
    prob2, target2 = np.full((3, 2), 0.2), np.zeros((3, 2), dtype=bool)
    # Image 3 (1 × 4): one false positive on an empty target: FP 1, TN 3; Dice 0.
    prob3, target3 = np.array([[0.7, 0.0, 0.0, 0.0]]), np.zeros((1, 4))
    result = binary_segmentation_metrics([prob1, prob2, prob3], [target1, target2, target3])
    # Pooled: TP 2, FP 2, FN 1, TN 11 over 16 pixels.
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (2, 2, 1, 11)
    assert result["miou"] == approx(2 / 5)
    assert result["dsc"] == approx(4 / 7)
    assert result["accuracy"] == approx(13 / 16)
    assert result["specificity"] == approx(11 / 13)
    assert result["sensitivity"] == approx(2 / 3)
    assert result["mean_image_dice"] == approx((2 / 3 + 1 + 0) / 3)


def test_binary_segmentation_threshold():
    # With threshold 0.7, image 1 keeps only 0.9: TP 1, FP 0, FN 2, TN 3.
    prob = np.array([[0.9, 0.2, 0.6], [0.1, 0.5, 0.4]])
    target = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    result = binary_segmentation_metrics([prob], [target], threshold=0.7)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (1, 0, 2, 3)
    assert result["dsc"] == approx(2 / 4)
    assert result["mean_image_dice"] == approx(2 / 4)


def test_binary_segmentation_no_foreground_anywhere():
    # Nothing to find and nothing found: every 0/0 is 1.
    result = binary_segmentation_metrics([np.zeros((4, 4)), torch.zeros(2, 5)], [np.zeros((4, 4)), torch.zeros(2, 5)])
    for key in ("miou", "dsc", "accuracy", "specificity", "sensitivity", "mean_image_dice"):
        assert result[key] == 1.0, key


def test_binary_segmentation_false_positives_on_empty_targets():
    # Targets empty, 2 of 8 pixels predicted: TP 0, FP 2, FN 0, TN 6. Overlap scores 0, sensitivity 0/0 = 1.
    prob = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    result = binary_segmentation_metrics([prob], [np.zeros((2, 4))])
    assert result["miou"] == 0.0
    assert result["dsc"] == 0.0
    assert result["mean_image_dice"] == 0.0
    assert result["sensitivity"] == 1.0
    assert result["specificity"] == approx(6 / 8)
    assert result["accuracy"] == approx(6 / 8)


def test_binary_segmentation_shape_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        binary_segmentation_metrics([np.zeros((4, 4)), np.zeros((2, 3))], [np.zeros((4, 4)), np.zeros((3, 2))])
    with pytest.raises(ValueError, match="2 predictions but 1 targets"):
        binary_segmentation_metrics([np.zeros((2, 2))] * 2, [np.zeros((2, 2))])


# ----------------------------------------------------------------------------------------------------------------------
# Multi-organ segmentation (Synapse)
# ----------------------------------------------------------------------------------------------------------------------


def synapse_volumes():
    """(prediction, target) on an 8×8×8 grid with six classes, one edge case each."""
    prediction = np.zeros((8, 8, 8), dtype=np.int64)
    target = np.zeros_like(prediction)
    # class 1: single voxels, offsets (3, 4, 0) voxels apart: no overlap, distance 5.
    prediction[1, 1, 1], target[4, 5, 1] = 1, 1
    # class 2: prediction only; class 3: target only; class 4: in neither.
    prediction[0, 7, 7] = 2
    target[7, 0, 0] = 3
    # class 5: 2×2×2 cubes shifted by one voxel along axis 0: 4 shared voxels, Dice 2·4 / 16. Each cube is all surface;
    # half of each cube's voxels are 1 voxel from the other, half 0, so every percentile above 50 % is 1.
    prediction[5:7, 5:7, 5:7] = 5
    target[6:8, 5:7, 5:7] = 5
    return prediction, target


def test_volume_dice_hd95_synapse_convention():
    prediction, target = synapse_volumes()
    result = volume_dice_hd95(prediction, target, num_classes=6)
    assert result["classes"] == [1, 2, 3, 4, 5]
    # class 2: prediction without target -> (1, 0); classes 3 and 4: empty prediction -> (0, 0).
    assert result["dice"] == approx([0, 1, 0, 0, 1 / 2])
    assert result["hd95"] == approx([5, 0, 0, 0, 1], abs=1e-5)


def test_volume_dice_hd95_spacing():
    prediction, target = synapse_volumes()
    result = volume_dice_hd95(torch.from_numpy(prediction), torch.from_numpy(target), 6, spacing=(2.0, 0.5, 1.0))
    # class 1: offsets (3·2, 4·0.5, 0) mm -> sqrt(36 + 4); class 5: a one-voxel shift along axis 0 -> 2 mm.
    assert result["hd95"] == approx([math.sqrt(40), 0, 0, 0, 2], abs=1e-5)
    assert volume_dice_hd95(prediction, target, 6, spacing=3.0)["hd95"] == approx([15, 0, 0, 0, 3], abs=1e-5)


def test_volume_dice_hd95_nan_convention():
    prediction, target = synapse_volumes()
    result = volume_dice_hd95(prediction, target, num_classes=6, empty_convention="nan")
    # class 2 and 3: one mask empty -> Dice 0, HD95 undefined; class 4: both empty -> both undefined.
    assert result["dice"] == approx([0, 0, 0, math.nan, 1 / 2], nan_ok=True)
    assert result["hd95"] == approx([5, math.nan, math.nan, math.nan, 1], nan_ok=True, abs=1e-5)


def test_volume_hd95_ignores_outliers_beyond_the_95th_percentile():
    # Target: a line of 40 voxels; prediction: the same line plus one voxel 10 voxels away. Distances from the
    # prediction: 40 zeros and one 10, so the 95th percentile is 0 while the plain Hausdorff distance is 10.
    target = np.zeros((12, 1, 40), dtype=np.int64)
    target[0, 0, :] = 1
    prediction = target.copy()
    prediction[10, 0, 0] = 1
    result = volume_dice_hd95(prediction, target, num_classes=2)
    assert result["dice"] == approx([2 * 40 / 81])
    assert result["hd95"] == approx([0], abs=1e-6)


def test_volume_dice_hd95_rejects_bad_inputs():
    with pytest.raises(ValueError, match=r"\(4, 4, 4\).*\(4, 4, 5\)"):
        volume_dice_hd95(np.zeros((4, 4, 4), dtype=int), np.zeros((4, 4, 5), dtype=int), num_classes=2)
    with pytest.raises(ValueError, match="class indices"):
        volume_dice_hd95(np.full((2, 2, 2), 3), np.zeros((2, 2, 2), dtype=int), num_classes=3)
    with pytest.raises(ValueError, match="empty_convention"):
        volume_dice_hd95(np.zeros((2, 2, 2), dtype=int), np.zeros((2, 2, 2), dtype=int), 2, empty_convention="medpy")


def test_synapse_summary():
    cases = [
        {"classes": [1, 2], "dice": [0.8, 0.4], "hd95": [2.0, 10.0]},
        {"classes": [1, 2], "dice": [0.6, 1.0], "hd95": [4.0, 0.0]},
    ]
    summary = synapse_summary(cases, ["liver", "spleen"])
    # liver: Dice (0.8 + 0.6) / 2 = 0.7, HD95 3; spleen: Dice 0.7, HD95 5; means over the two classes.
    assert summary["per_class"] == {
        "liver": approx({"dice": 0.7, "hd95": 3.0}),
        "spleen": approx({"dice": 0.7, "hd95": 5.0}),
    }
    assert summary["mean_dice"] == approx(0.7)
    assert summary["mean_hd95"] == approx(4.0)
    # NaNs are skipped: spleen's Dice from case 2 only, its HD95 from no case at all (NaN, left out of the mean).
    cases[0]["dice"][1] = cases[0]["hd95"][1] = cases[1]["hd95"][1] = math.nan
    summary = synapse_summary(cases, ["liver", "spleen"])
    assert summary["per_class"]["spleen"]["dice"] == approx(1.0)
    assert math.isnan(summary["per_class"]["spleen"]["hd95"])
    assert summary["mean_dice"] == approx(0.85)
    assert summary["mean_hd95"] == approx(3.0)
    with pytest.raises(ValueError, match="3 dice and hd95"):
        synapse_summary(cases, ["liver", "spleen", "kidney"])


def test_multiclass_segmentation_metrics_by_hand():
    # 3 classes over 8 pixels (one ignored). Rows: target, prediction.
    targets = np.array([[0, 0, 1, 1, 1, 2, 2, 255]])
    predictions = np.array([[0, 1, 1, 1, 2, 2, 0, 2]])
    result = multiclass_segmentation_metrics(predictions, targets, num_classes=3)
    # class 0: TP 1, FP 1 (pixel 6), FN 1 (pixel 1) -> 2/4; class 1: TP 2, FP 1, FN 1 -> 4/6; class 2: TP 1, FP 1,
    # FN 1 -> 2/4. The ignored pixel (predicted 2) counts nowhere.
    assert result["dice"] == approx([0.5, 2 / 3, 0.5])
    assert result["mean_dice"] == approx((2 / 3 + 0.5) / 2)
    # IoU = TP / (TP + FP + FN): 1/3, 2/4, 1/3; the mean runs over the foreground classes 1 and 2
    assert result["iou"] == approx([1 / 3, 1 / 2, 1 / 3])
    assert result["mean_iou"] == approx((1 / 2 + 1 / 3) / 2)
    assert result["pixel_accuracy"] == approx(4 / 7)
    # A class absent from targets and predictions has an undefined (NaN) Dice and IoU and stays out of the means.
    result = multiclass_segmentation_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), num_classes=3)
    assert math.isnan(result["dice"][2]) and result["mean_dice"] == approx(2 / 3)
    assert math.isnan(result["iou"][2]) and result["mean_iou"] == approx(1 / 2)
    with pytest.raises(ValueError, match="class indices"):
        multiclass_segmentation_metrics(np.array([0, 3]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        multiclass_segmentation_metrics(np.zeros((2, 2)), np.zeros((2, 3)), num_classes=3)
