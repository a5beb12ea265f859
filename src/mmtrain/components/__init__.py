"""Model parts that know nothing of training or data loading: encoders, fusion, heads, losses, metrics,
LM parts (``lm``) and mmtrain's own decoders. Each is an ``nn.Module`` (or a metric) with explicit
keyword arguments that a YAML ``_target_`` names."""
