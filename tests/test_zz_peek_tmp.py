from tests.test_locustfile import runs, trace_file  # noqa
def test_peek(runs):
    for name, (run, rec) in runs.items():
        print(name, {k: (v["num_requests"], v["num_failures"], v["num_reqs_per_sec"]) for k, v in run.stats.items()}, dict(rec.counts))
