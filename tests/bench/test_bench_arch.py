"""`pbp bench arch` (ProteinBERT against a TAPE-sized Transformer) and `pbp bench report` (make bench's table)."""

from __future__ import annotations

import json

import pytest

from pbp.bench.arch import Transformer, TransformerConfig, n_params
from pbp.bench.report import figures
from pbp.cli.main import main
from pbp.config import load_config
from pbp.model import ModelConfig, ProteinBERT

from ..conftest import REPO


def test_bench_arch_then_one_report_holding_every_figure(tmp_path, capsys):
    tiny = REPO / "configs/model/tiny.yaml"
    rc = main(["bench", "arch", "--config", str(tiny), "--seq-lens", "32,64", "--batch-size", "2", "--steps", "1",
               "--json", str(tmp_path / "arch.json")])  # fmt: skip
    assert rc == 0
    rows = json.loads((tmp_path / "arch.json").read_text())["rows"]
    assert [r["seq_len"] for r in rows] == [32, 64]
    pb_params = ProteinBERT(load_config(ModelConfig, tiny, [], section="model")).num_parameters()
    tf_params = n_params(Transformer(TransformerConfig()))
    assert 37e6 < tf_params < 40e6  # TAPE's Transformer: ~38M
    for r in rows:
        pb, tf = r["proteinbert"], r["transformer"]
        assert pb["params"] == pb_params and tf["params"] == tf_params
        assert r["params_ratio"] == pytest.approx(pb_params / tf_params)
        assert r["speed_ratio"] == pytest.approx(pb["samples_per_s"] / tf["samples_per_s"])
        assert r["memory_ratio"] == pytest.approx(pb["peak_mib"] / tf["peak_mib"])
        # The Transformer's gradients alone (38.9M fp32 = 148 MiB) exceed all the tiny model's step needs.
        assert pb["samples_per_s"] > 0 and tf["peak_mib"] > 140 and tf["peak_mib"] > pb["peak_mib"] >= 0
    # Another benchmark's JSON beside it; the report holds every ratio of both, and the machine.
    other = {"predict": {"ratio": 0.97, "n": 10}, "results": [{"dtype": "fp32", "fraction_of_peak": 0.3}],
             "worst_up_over_target": 0.5, "seconds": 12.0}  # fmt: skip
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert main(["bench", "report", str(tmp_path)]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["machine"]["cpu_bf16"] in ("native", "emulated") and rep["machine"]["cpus"] >= 1
    got = {b: {r["figure"]: r["ratio"] for r in rs} for b, rs in rep["benchmarks"].items()}
    assert got["other"] == {"predict.ratio": 0.97, "results[dtype=fp32].fraction_of_peak": 0.3,
                            "worst_up_over_target": 0.5}  # fmt: skip
    assert set(got["arch"]) == {f"rows[seq_len={L}].{k}" for L in (32, 64)
                                for k in ("params_ratio", "speed_ratio", "memory_ratio")}  # fmt: skip
    md = (tmp_path / "report.md").read_text()
    assert md.count("\n| arch |") == 6 and "| other | `predict.ratio` | 0.97 |" in md


def test_report_refuses_an_empty_directory_and_bad_json(tmp_path, capsys):
    assert main(["bench", "report", str(tmp_path)]) != 0
    assert "no benchmark JSON here" in capsys.readouterr().err
    (tmp_path / "x.json").write_text("{oops")
    assert main(["bench", "report", str(tmp_path)]) != 0
    assert "x.json: not JSON" in capsys.readouterr().err
    assert figures({"a": {"b_ratio": 2}, "c": True, "d_ratio": "x"}) == [("a.b_ratio", 2.0)]
