"""The one exception hierarchy of kvmkit: every message names what is at fault."""


class KvmkitError(Exception):
    """Base of every error kvmkit reports to a user; the CLI prints its message, not a traceback."""


class ConfigError(KvmkitError):
    """A command line option, a device property or a configuration value is wrong."""


class HostError(KvmkitError):
    """The host cannot do what was asked (no /dev/kvm, a missing capability, a missing tool)."""


class BootError(KvmkitError):
    """The kernel, initrd or memory layout cannot boot."""


class ImageError(KvmkitError):
    """A disk image is malformed, corrupt or unsupported."""


class GuestError(KvmkitError):
    """The guest did something invalid (a bad address, a malformed ring); the device, not the VMM, pays."""
