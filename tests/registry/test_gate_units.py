"""The promotion gate without a server: what it says when it cannot read the test split it must score on."""

from __future__ import annotations

import pytest

from pbp.model.finetune import TaskKind
from pbp.registry.gate import evaluate
from pbp.registry.lineage import SplitRef
from pbp.registry.server import RegistryError


class _Task:  # what the gate reads of a loaded model's task before it reads the split
    kind, classes = TaskKind.NUMERIC, []


@pytest.mark.parametrize("where,says", [
    # a job on a cluster records its node's copy of a local task file (its working dir there)
    ("ray/session_1/runtime_resources/working_dir_files/_ray_pkg_1/data/test.csv",
     r"a job on a cluster recorded its node's copy of a local task file: give jobs their test file in s3://"),
    ("moved/test.csv", r"moved or deleted: put the same file back at that path"),
])  # fmt: skip
def test_a_test_split_not_readable_here_says_why_and_what_to_do(tmp_path, where, says):
    """Re-scoring a candidate on a split that is not here ended in a bare 'task file not found'."""
    ref = SplitRef(str(tmp_path / where), "ab" * 32, 120)
    with pytest.raises(RegistryError, match=r"the gate's test split test\.csv \(sha256 abababab, first 120 rows\) "
                       rf"cannot be read here \(.*test\.csv: task file not found\); {says}.*\. Else promote "
                       r"with --force --reason"):  # fmt: skip
        evaluate(None, _Task(), ref)


def test_a_split_recorded_without_a_path_says_how_to_record_one():
    with pytest.raises(RegistryError, match=r"its version records no path: register it again with --test FILE"):
        evaluate(None, _Task(), SplitRef("", "ab" * 32))
