"""Character backends (stdio, file, socket, pty, null, mux) and QEMU -chardev/-serial parsing."""
