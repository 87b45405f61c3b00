"""Access-trace recording in the server (Settings.trace_path) and synthetic traces (tuning.synth)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hybridserve.cli import main
from tests.helpers import running
from tuning.traces import read_trace


def test_server_records_requested_keys(make_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "live.csv"
    sent = ["17:42", "3:8", "17:42", "5:1"]
    with running(make_settings(mode="hybrid", trace_path=path)) as (_, client):
        for key in sent[:2]:
            assert client.get(f"/v1/predict/{key}").status_code == 200
        assert client.post("/v1/predict", json={"keys": sent[2:]}).status_code == 200
        assert client.get("/v1/predict/not-a-key").status_code >= 400  # failed requests are not traffic
    trace = read_trace(path)  # the server flushed and closed it on shutdown
    assert [trace.keys[i] for i in trace.ids.tolist()] == sent
    assert trace.times is not None and (trace.times > 0).all()


def test_trace_synth_writes_keys_of_the_distribution(tmp_path: Path) -> None:
    out = tmp_path / "zipf.keys.txt"
    assert main(["trace", "synth", "--dist", "zipf:1.1", "--requests", "5000", "--segments", "20",
                 "--seed", "4", "--out", str(out)]) == 0
    trace = read_trace(out)
    assert trace.n_requests == 5000
    counts = Counter(trace.ids.tolist())
    assert counts.most_common(1)[0][1] > 5000 / trace.n_unique * 10  # peaked, not uniform
    assert all(0 <= int(k.split(":")[0]) < 20 for k in trace.keys)
