"""Test-only node plugin `py-stamp-parts`: `py-stamp`'s work timed in parts, for the benchmark
`host/benches/plugin_python.rs` (where a Python plugin's time per record goes).

Each call does the stamp twice over the batch: once in bare phases, each timed with the
monotonic clock (`json.loads` of every record, adding `served_by`, `json.dumps`, wrapping each
text in `Ok`), then once through `trellis.transform_each` as `py-stamp` does, timed whole. It
returns the records of the first pass, except that record 0's result is the timings in
nanoseconds for the whole batch: `{"loads": ..., "stamp": ..., "dumps": ..., "wrap": ...,
"helper": ...}`.
"""

import json
import time

from componentize_py_types import Ok
from wit_world import exports

import trellis

NAME = "py-stamp-parts"
VERSION = "1.0.0"


def stamp(record):
    record["served_by"] = VERSION
    return record


class Meta(exports.Meta):
    def describe(self):
        return trellis.describe(NAME, VERSION, kind="node")


class Transform(exports.Transform):
    def transform(self, records):
        clock = time.perf_counter_ns
        t0 = clock()
        values = [json.loads(text) for text in records]
        t1 = clock()
        for value in values:
            value["served_by"] = VERSION
        t2 = clock()
        texts = [json.dumps(value) for value in values]
        t3 = clock()
        out = [Ok(text) for text in texts]
        t4 = clock()
        trellis.transform_each(records, stamp)
        t5 = clock()
        if out:
            parts = {"loads": t1 - t0, "stamp": t2 - t1, "dumps": t3 - t2, "wrap": t4 - t3}
            parts["helper"] = t5 - t4
            out[0] = Ok(json.dumps(parts))
        return out


class Mask(exports.Mask):
    def mask(self, requests):
        return trellis.not_this_kind(NAME, "node", len(requests))
