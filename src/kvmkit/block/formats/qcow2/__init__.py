"""qcow2 (versions 2 and 3) per QEMU's published specification (docs/interop/qcow2.txt)."""
