"""Image formats stacked on a protocol."""
