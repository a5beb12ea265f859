"""Language-model parts: decoders, projectors, prompts, tokenizers."""
