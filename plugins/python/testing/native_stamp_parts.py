"""`py-stamp-parts`'s phases under the machine's own CPython, outside WebAssembly, on the records
`host/benches/plugin_python.rs` sends: how much of a Python plugin's time per record is CPython's
`json` module itself, and how much running it as a component adds. Run from anywhere:

    python3 plugins/python/testing/native_stamp_parts.py

Prints the median of 21 batches of 1,000 records (after one to warm up), per record.
"""

import json
import statistics
import sys
import time

RECORDS = [
    '{"id":%d,"first":"Ada","last":"Lovelace","department":"engineering","salary":%d,"active":true}'
    % (i, 100_000 + i)
    for i in range(1_000)
]
CALLS = 21


def phases(records):
    clock = time.perf_counter_ns
    t0 = clock()
    values = [json.loads(text) for text in records]
    t1 = clock()
    for value in values:
        value["served_by"] = "1.0.0"
    t2 = clock()
    texts = [json.dumps(value) for value in values]
    t3 = clock()
    assert len(texts) == len(records)
    return {"loads": t1 - t0, "stamp": t2 - t1, "dumps": t3 - t2}


def main():
    phases(RECORDS)
    runs = [phases(RECORDS) for _ in range(CALLS)]
    per_record = {
        key: statistics.median(run[key] for run in runs) / len(RECORDS) for key in runs[0]
    }
    shown = ", ".join(f"{key} {ns / 1000:.2f} µs" for key, ns in per_record.items())
    print(f"CPython {sys.version.split()[0]}, native, per record: {shown}")


if __name__ == "__main__":
    main()
