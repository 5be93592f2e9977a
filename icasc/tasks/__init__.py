"""Tasks: ``run(cfg)`` functions behind the entry points (the only library code that sees DictConfig)."""
