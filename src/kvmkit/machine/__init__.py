"""The board: assembling a VM (memory, CPUs, devices, boot) from a MachineConfig, and running it."""
