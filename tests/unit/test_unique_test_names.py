"""Test modules are collected without packages (rootdir-less, no __init__.py), so two with one basename stop the
whole suite at collection: ``import file mismatch``."""

from collections import Counter
from pathlib import Path


def test_test_module_basenames_are_unique():
    tests = Path(__file__).resolve().parents[1]
    names = Counter(p.name for p in tests.rglob("test_*.py"))
    assert [n for n, k in names.items() if k > 1] == []
