"""``deliberate train <recipe>``: one module per recipe (its flags, from the recipe's config dataclass, and
its terminal output); :data:`deliberate.cli.main.TRAIN_RECIPES` names them."""
