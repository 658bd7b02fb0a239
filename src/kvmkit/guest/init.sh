#!/bin/busybox sh
# kvmkit guest init. Contract: mount /proc /sys /dev, load modules, bring up lo; with kvmkit.cmd=<base64 script>
# on the kernel command line run it, print "kvmkit-guest-exit: <status>" and reboot; otherwise an interactive shell.
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
for module in $(cat /etc/kvmkit-modules); do
    insmod "/lib/modules/$module.ko" || echo "kvmkit-init: could not load $module"
done
ip link set lo up
script=""
for word in $(cat /proc/cmdline); do
    case "$word" in kvmkit.cmd=*) script="${word#kvmkit.cmd=}" ;; esac
done
if [ -n "$script" ]; then
    echo "$script" | base64 -d > /tmp/kvmkit-cmd.sh
    sh /tmp/kvmkit-cmd.sh
    status=$?
    echo "kvmkit-guest-exit: $status"
    sync
    reboot -f
fi
echo "kvmkit guest shell (busybox); 'reboot -f' to restart"
exec setsid cttyhack sh -l
