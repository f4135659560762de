"""Evaluation: GPT-1 task transforms and metrics, our log-likelihood scorer, lm-evaluation-harness tasks."""
