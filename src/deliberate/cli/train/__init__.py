"""``deliberate train <recipe>``: one module per recipe (its flags, from the recipe's config dataclass, and
its terminal output); :data:`deliberate.cli.recipes.RECIPES` registers them (plug-ins add their own)."""
