"""Eval stage: FrenchBench, translation and lm-eval interop (being built)."""
