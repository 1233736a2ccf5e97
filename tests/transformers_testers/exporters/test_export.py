"""Stand-in for transformers' ``tests/exporters/test_export.py`` (not in the 5.24.0 sdist; written for hf_recperc).

``ModelTesterMixin`` inherits ``ExportTesterMixin``, whose tests drive transformers' exporters (ONNX, ExecuTorch,
OpenVINO, TensorRT, AOTInductor) and need those packages. hf_recperc ships no exporter support, so the stand-in
contributes no tests: an empty base class.
"""


class ExportTesterMixin:
    """No export tests (see the module docstring)."""
