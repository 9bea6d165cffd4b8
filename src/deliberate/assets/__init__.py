"""Data files that ship inside the package: ``quickstart/`` holds the checkpoints ``deliberate quickstart`` runs on
(built, packed and checked by :mod:`deliberate.experiments.quickstart_checkpoints`; docs/checkpoints.md)."""
