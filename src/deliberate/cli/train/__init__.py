"""``deliberate train <recipe>``: one module per recipe whose command line lives here (the rest are named
in :data:`deliberate.cli.main.TRAIN_RECIPES` by their library module, which still holds theirs)."""
