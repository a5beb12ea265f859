"""One module per command: train, stages, sweep, kfold, evaluate, predict, data_check."""
