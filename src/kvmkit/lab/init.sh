#!/bin/busybox sh
# kvmkit lab init: a nested KVM host. Mount the host's root (read-only) and the job's folders over 9p, chroot
# into the host's root and run the job with its stdout on ttyS1 and stderr on ttyS2; leave the status in /io.
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in $(cat /etc/kvmkit-modules); do
    insmod "/lib/modules/$module.ko" 2>/dev/null || echo "kvmkit-lab: could not load $module"
done
fail() { echo "kvmkit-lab: $*" | tee /dev/ttyS2; echo 125 > /io/status 2>/dev/null; sync; reboot -f; }
P9="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /io /host
mount -t 9p -o "$P9" io /io || fail "cannot mount the io share"
mount -t 9p -o "$P9,ro,cache=loose" host /host || fail "cannot mount the host's root"
R=/host
mount -t proc proc $R/proc && mount -t sysfs sysfs $R/sys && mount -t devtmpfs devtmpfs $R/dev \
    || fail "cannot mount /proc, /sys, /dev in the host root"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
for dir in /tmp /run /var/tmp; do mount -t tmpfs -o mode=1777 tmpfs $R$dir || fail "cannot mount $dir"; done
mkdir -p $R/run/kvmkit-lab
mount --bind /io $R/run/kvmkit-lab || fail "cannot bind the io share"
workdir=$(cat /io/workdir)
mkdir -p "$R$workdir" 2>/dev/null  # a folder under /tmp or /run lives on the fresh tmpfs
mount -t 9p -o "$P9,cache=loose" work "$R$workdir" || fail "cannot mount the working directory $workdir"
ip link set lo up
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
# A heartbeat for the host (kvmkit lab): it stops only if the lab's own kernel stops running its processes.
( while :; do date +%s > /io/heartbeat; sleep 5; done ) </dev/null >/dev/null 2>&1 &
echo $! > /io/heartbeat.pid
echo "kvmkit-lab: ready"
# Enter the host root as switch_root does (move it over / and chroot there): after a plain chroot the kernel
# sees the job as chrooted and refuses it user namespaces (EPERM), which passt's sandbox needs. Init keeps
# resolving /io, /dev and its applets in the initramfs, its own root.
cd $R && mount -o move . / || fail "cannot move the host root over /"
chroot . /bin/sh /run/kvmkit-lab/job.sh </dev/null >/dev/ttyS1 2>/dev/ttyS2
echo $? > /io/status
sync
reboot -f
