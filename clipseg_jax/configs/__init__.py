"""The recipes: one `ml_collections` config file per recipe, resolvable by name (`--config synthetic`)."""
