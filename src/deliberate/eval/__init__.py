"""Evaluation: unbiased pass@k / maj@k with bootstrap CIs, resumable records, plots, the `eval` job."""
