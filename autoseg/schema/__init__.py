"""Frozen dataclasses for every file that crosses a stage boundary, with JSON (de)serialisation."""
