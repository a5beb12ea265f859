"""One module per command: train, stages, kfold, evaluate, predict, data_check."""
