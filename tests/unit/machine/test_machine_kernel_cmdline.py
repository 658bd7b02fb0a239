"""The kernel parameters kvmkit appends to describe its machine, never overriding the user's."""

from kvmkit.machine.kernel_cmdline import machine_kernel_cmdline


def test_machine_parameters_follow_the_users_command_line():
    assert machine_kernel_cmdline("console=ttyS0 quiet") == "console=ttyS0 quiet pci=noearly"
    assert machine_kernel_cmdline("") == "pci=noearly"


def test_a_parameter_the_user_set_is_left_alone():
    assert machine_kernel_cmdline("console=ttyS0 pci=nomsi") == "console=ttyS0 pci=nomsi"
    assert machine_kernel_cmdline("pci=noearly") == "pci=noearly"
