"""`examples/reproduce.py --quick`: one seed and a few steps of every run behind examples/RESULTS.md, and tables built
from the runs' own JSON files; examples/RESULTS.md is left alone, and finished runs are not run again."""

import hashlib
import json
import re
import shutil

import pytest

from .conftest import EXAMPLES, example


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    before = hashlib.sha256((EXAMPLES / "RESULTS.md").read_bytes()).hexdigest()
    text = example("reproduce").main(["--quick", "--output_dir", str(out)])
    return out, text, before


def table_rows(text, heading):
    """{model: [cells]} of the first table after ``heading``."""
    section = text.split(heading, 1)[1]
    rows = {}
    for line in section.splitlines()[2:]:
        if line.startswith("| ") and not line.startswith("| model") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
        elif rows and not line.startswith("|"):
            break
    return rows


def mean_of(cell):
    return float(re.match(r"(-?[\d.]+) ± ", cell).group(1))


def test_quick_tables_come_from_the_runs_json(quick):
    out, text, _ = quick
    assert text == (out / "RESULTS.md").read_text()
    reproduce = example("reproduce")
    runs = reproduce.classification_runs([0], True)
    breast = table_rows(text, "### BreastMNIST")
    assert set(breast) == set(reproduce.CLASSIFIERS)
    for run in runs:
        results = json.loads((out / "runs" / run.name / "all_results.json").read_text())
        record = json.loads((out / "runs" / run.name / "run.json").read_text())
        assert record["command"][0].endswith(run.script) and "--seed" in record["command"]
        row = breast[run.model]
        assert row[0] == "1 of 1"
        assert mean_of(row[1]) == pytest.approx(100 * results["test_accuracy"], abs=0.05)
        assert mean_of(row[2]) == pytest.approx(results["test_auc"], abs=0.0005)
    timing = json.loads((out / "step_times.json").read_text())
    equal_epochs = table_rows(text, "equal epochs (test split")
    equal_time = table_rows(text, "### BUSI lesion segmentation, equal training time")
    for run in reproduce.segmentation_runs([0], True, timing["steps"]):
        results = json.loads((out / "runs" / run.name / "all_results.json").read_text())
        if run.protocol == "equal time":
            tables = [equal_time]
        else:  # VM-UNet's equal-epoch run is also its equal-time row
            tables = [equal_epochs, equal_time] if run.model.startswith("VM-UNet") else [equal_epochs]
        for table in tables:
            row = table[run.model]
            assert mean_of(row[1]) == pytest.approx(100 * results["test_dsc"], abs=0.05)
            assert mean_of(row[2]) == pytest.approx(100 * results["test_miou"], abs=0.05)
    follow_ups = table_rows(text, "### Follow-ups")
    assert set(follow_ups) == set(reproduce.FOLLOW_UPS)
    for run in reproduce.follow_up_runs([0], True):
        results = json.loads((out / "runs" / run.name / "all_results.json").read_text())
        assert run.args[-2:] == reproduce.FOLLOW_UPS[run.model][1]  # the one change, after the equal-epoch arguments
        row = follow_ups[run.model]
        assert row[:2] == [run.protocol, "1 of 1"]
        assert mean_of(row[2]) == pytest.approx(100 * results["test_dsc"], abs=0.05)


def test_examples_results_is_left_unchanged_and_finished_runs_are_skipped(quick, capsys):
    out, text, before = quick
    assert hashlib.sha256((EXAMPLES / "RESULTS.md").read_bytes()).hexdigest() == before
    again = example("reproduce").main(["--quick", "--output_dir", str(out)])  # resumes: every run is done
    assert again == text
    log = capsys.readouterr().out
    assert log.count("skip ") == 11 and "run  " not in log


def test_an_unfinished_reproduction_builds_tables_from_its_finished_runs(quick, tmp_path, capsys):
    out, _, before = quick
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    reproduce = example("reproduce")
    missing = reproduce.classification_runs([0], True)[1]  # one classifier's only seed
    (partial / "runs" / missing.name / "all_results.json").unlink()
    text = reproduce.main(["--quick", "--tables_only", "--output_dir", str(partial)])
    assert "run  " not in capsys.readouterr().out  # --tables_only runs nothing
    assert "Unfinished: 10 of 11 runs so far" in text
    breast = table_rows(text, "### BreastMNIST")
    assert breast[missing.model][:2] == ["0 of 1", "not run yet"]
    assert all(row[0] == "1 of 1" for model, row in breast.items() if model != missing.model)
    assert hashlib.sha256((EXAMPLES / "RESULTS.md").read_bytes()).hexdigest() == before
