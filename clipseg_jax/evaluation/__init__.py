"""Evaluation protocols of the paper and their report (JSON, Markdown table, prediction PNGs)."""

from clipseg_jax.evaluation.protocols import PROTOCOLS, run_protocol

__all__ = ["PROTOCOLS", "run_protocol"]
