"""VMDK: monolithicSparse (hosted sparse extent), monolithicFlat and multi-extent descriptors."""
