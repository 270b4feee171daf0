"""The morphable model: its data and torch module, the registry of named models, Loop
subdivision, and point-set geometry."""
