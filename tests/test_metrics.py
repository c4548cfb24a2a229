import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from pbp.model.finetune import IGNORE_INDEX, TaskSpec
from pbp.train.evaluate import annotation_metrics
from pbp.train.metrics import (
    ThroughputWindow,
    baseline_table,
    roc_auc,
    roc_auc_macro,
    spearman,
    task_metric,
    task_metrics,
)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, 500).astype(float)  # many ties
    y = np.round(x + rng.normal(0, 5, 500))  # ties on both sides
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    lab = rng.random(500) < 0.3
    score = np.round(rng.random(500) + lab * 0.3, 1)  # ties in scores
    assert roc_auc(score, lab) == pytest.approx(roc_auc_score(lab, score), abs=1e-12)
    assert roc_auc(np.zeros(500), lab) == 0.5
    assert np.isnan(roc_auc(score, np.zeros(500, dtype=bool)))


def test_roc_auc_macro_matches_sklearn_on_columns_with_both_classes():
    rng = np.random.default_rng(2)
    labels = rng.random((300, 40)) < rng.uniform(0.01, 0.5, 40)
    labels[:, :3] = False  # columns with one class only are skipped
    labels[:, 3] = True
    scores = np.round(rng.random((300, 40)) + labels * 0.4, 1)
    both = labels.any(0) & ~labels.all(0)
    want = roc_auc_score(labels[:, both], scores[:, both], average="macro")
    assert roc_auc_macro(scores, labels) == pytest.approx(want, abs=1e-12)
    assert np.isnan(roc_auc_macro(scores[:, :4], labels[:, :4]))
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        roc_auc_macro(scores.ravel(), labels.ravel())


def test_term_frequency_baseline_scores_high_micro_and_half_macro():
    rng = np.random.default_rng(3)
    freq_T = np.array([0.9, 0.5, 0.1, 0.02])
    labels = (rng.random((2000, 4)) < freq_T).astype(np.float32)
    res = annotation_metrics(rng.random((2000, 4)), labels)  # the model scores at random
    assert res["annotation_auc_micro"] == pytest.approx(0.5, abs=0.03)
    assert res["annotation_auc_macro"] == pytest.approx(0.5, abs=0.03)
    assert res["annotation_auc_micro_baseline"] > 0.8  # term frequencies alone rank the pairs
    assert res["annotation_auc_macro_baseline"] == 0.5  # a constant per term ties every pair within it
    p = labels.mean(0)
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean()
    assert res["annotation_loss_baseline"] == pytest.approx(bce, rel=1e-6)
    empty = annotation_metrics(np.zeros((0, 4)), np.zeros((0, 4)))
    assert all(np.isnan(v) for v in empty.values())


def test_numeric_baselines_predict_the_mean():
    logits, labels = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 3.0, 5.0])
    res = task_metrics(TaskSpec("numeric"), logits, labels)
    assert res["spearman"] == pytest.approx(1.0) and res["spearman_baseline"] == 0.0
    assert res["mse"] == pytest.approx((0 + 1 + 1) / 3)
    assert res["mse_baseline"] == pytest.approx((4 + 0 + 4) / 3)  # mean 3
    res = task_metrics(TaskSpec("numeric"), logits, labels, train_labels=torch.tensor([0.0, 2.0]))
    assert res["mse_baseline"] == pytest.approx((0 + 4 + 16) / 3)  # the training set's mean, 1


def test_binary_baselines():
    logits, labels = torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1.0, 1.0, 1.0, 0.0])
    res = task_metrics(TaskSpec("binary"), logits, labels)
    assert res == {
        "roc_auc": pytest.approx(1.0),
        "roc_auc_baseline": 0.5,
        "accuracy": 0.75,
        "accuracy_baseline": 0.75,  # always 1
    }
    res = task_metrics(TaskSpec("binary"), logits, labels, train_labels=np.array([0, 0, 1]))
    assert res["accuracy_baseline"] == 0.25  # always 0, the training set's majority
    assert task_metric(TaskSpec("binary"), logits, labels) == res["roc_auc"]


def test_categorical_baseline_is_the_majority_class():
    labels = torch.tensor([2, 2, 0, 1, 2])
    logits = torch.nn.functional.one_hot(torch.tensor([2, 0, 0, 0, 1]), 3).float()
    res = task_metrics(TaskSpec("categorical", 3), logits, labels)
    assert res == {"accuracy": 0.4, "accuracy_baseline": 0.6}
    res = task_metrics(TaskSpec("categorical", 3), logits, labels, train_labels=torch.tensor([1, 1, 0]))
    assert res["accuracy_baseline"] == 0.2


def test_residue_kinds_skip_ignored_positions():
    task = TaskSpec("residue_categorical", 3)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1, IGNORE_INDEX]])
    logits = torch.zeros(1, 4, 3)
    logits[0, 1, 0] = logits[0, 2, 2] = 5.0  # right, wrong
    assert task_metric(task, logits, labels) == 0.5
    train = torch.tensor([[IGNORE_INDEX, 1, 1, 0, IGNORE_INDEX, IGNORE_INDEX]])  # majority 1, not IGNORE_INDEX
    assert task_metrics(task, logits, labels, train_labels=train) == {"accuracy": 0.5, "accuracy_baseline": 0.5}

    task = TaskSpec("residue_binary")
    labels = torch.tensor([[IGNORE_INDEX, 1, 0, 0, IGNORE_INDEX]])
    logits = torch.tensor([[-9.0, 1.0, -1.0, 2.0, 9.0]])  # the ignored scores would change every figure
    res = task_metrics(task, logits, labels)
    assert res == {"roc_auc": 0.5, "roc_auc_baseline": 0.5, "accuracy": pytest.approx(2 / 3),
                   "accuracy_baseline": pytest.approx(2 / 3)}  # fmt: skip


def test_baseline_table_puts_each_figure_beside_its_baseline():
    text = baseline_table({"proteins": 10, "loss": 0.25, "loss_baseline": 0.5, "orphan_baseline": 1.0})
    rows = [line.split() for line in text.splitlines()]
    assert rows == [
        ["metric", "model", "baseline"],
        ["proteins", "10", "-"],  # a count as such
        ["loss", "0.2500", "0.5000"],
        ["orphan_baseline", "1.0000", "-"],  # a baseline without its metric is still shown
    ]


def test_throughput_window_rates_with_an_injected_clock():
    ticks = iter([100.0, 104.0, 104.0, 105.0])
    window = ThroughputWindow(clock=lambda: next(ticks))  # t0 = 100
    window.add(tokens=1000, samples=10, wait_s=0.5)
    window.add(tokens=3000, samples=30, wait_s=1.5)
    assert window.rates() == {"tokens_per_s": 1000.0, "samples_per_s": 10.0, "data_wait_fraction": 0.5}  # 4 s
    window.reset()  # t0 = 104
    window.add(tokens=50, samples=1, wait_s=0.25)
    assert window.rates() == {"tokens_per_s": 50.0, "samples_per_s": 1.0, "data_wait_fraction": 0.25}


def test_progress_line_shows_step_losses_throughput_and_eta():
    from pbp.train.metrics import progress_line

    line = progress_line("tiny", 150, 200, {"loss": 0.47, "token_loss": 0.27, "annotation_loss": 0.2},
                         {"tokens_per_s": 1234.5, "data_wait_fraction": 0.031}, steps_per_s=0.5)  # fmt: skip
    assert line == ("[tiny] step 150/200: loss 0.4700 (token 0.2700, annotation 0.2000), 1,234 tokens/s, "
                    "data wait 3%, ETA 00:01:40")  # fmt: skip
    assert progress_line("t", 1, 2, {}, {}, steps_per_s=0.0).endswith("ETA ?")
