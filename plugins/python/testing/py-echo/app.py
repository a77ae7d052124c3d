"""Test-only node plugin `py-echo`: `plugins/testing/test-echo` in Python, for the benchmark
`host/benches/plugin_python.rs`. Returns each record's text unchanged, without parsing it: what
calling into Python costs per record (the strings lifted into Python and lowered back, the
interpreter's loop), apart from any JSON work.
"""

from componentize_py_types import Ok
from wit_world import exports

import trellis

NAME = "py-echo"
VERSION = "1.0.0"


class Meta(exports.Meta):
    def describe(self):
        return trellis.describe(NAME, VERSION, kind="node")


class Transform(exports.Transform):
    def transform(self, records):
        return [Ok(record) for record in records]


class Mask(exports.Mask):
    def mask(self, requests):
        return trellis.not_this_kind(NAME, "node", len(requests))
