"""Data: the built-in world, text loaders, tokenizer, token shards and batching."""
