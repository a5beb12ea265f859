"""Training over Lightning's public API: tasks (LightningModules), callbacks, the builders that turn a
checked config into data, model, task and trainer, export from a trained task."""
