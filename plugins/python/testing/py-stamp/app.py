"""Test-only node plugin `py-stamp`: `plugins/testing/test-stamp` in Python, for the benchmark
`host/benches/plugin_python.rs`. Each record is parsed, gets `served_by` (the plugin's version)
and is serialized again, through the SDK helper `trellis.transform_each`, as a Python plugin
author would write it. Nothing more: the benchmark compares it with the Rust build.
"""

from wit_world import exports

import trellis

NAME = "py-stamp"
VERSION = "1.0.0"


def stamp(record):
    record["served_by"] = VERSION
    return record


class Meta(exports.Meta):
    def describe(self):
        return trellis.describe(NAME, VERSION, kind="node")


class Transform(exports.Transform):
    def transform(self, records):
        return trellis.transform_each(records, stamp)


class Mask(exports.Mask):
    def mask(self, requests):
        return trellis.not_this_kind(NAME, "node", len(requests))
