"""Coverage-guided fuzzing of the parsers that take an upstream's bytes (``python -m tests.fuzz.<target>``).

Not a lane: :mod:`tests.fuzz.targets` holds the targets, which the atheris harnesses here and the
hypothesis tests in ``tests/unit/test_upstream_hostile.py`` both drive.
"""
