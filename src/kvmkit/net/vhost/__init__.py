"""vhost-net: the kernel moves virtio-net rings to and from a tap; kvmkit only sets it up."""
