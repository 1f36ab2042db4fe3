"""Data: loading, the built-in dataset, exploration and preparation."""
