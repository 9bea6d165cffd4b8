"""Training recipes (one file each) over shared plumbing in ``common.py``; ``sft.py`` for now."""
