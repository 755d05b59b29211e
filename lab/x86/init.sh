#!/bin/busybox sh
# /init of the x86 lab's initramfs (lab/x86/lab.py): load KVM for AMD and virtio-9p, mount the host's / read-only,
# build a new root of tmpfs with the host's usr, etc, Python, checkout and guest image bound in at their own paths
# (mounting proc or tmpfs onto the read-only 9p tree fails), then run lab/x86/inside.py there against the real
# /dev/kvm, between markers on the console, and power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
arg() { tr ' ' '\n' </proc/cmdline | sed -n "s/^kvmplat\.$1=//p"; }
note() { echo "KVMPLAT-LAB-NOTE $*"; }
for m in irqbypass kvm ccp kvm-amd virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
         9pnet 9pnet_virtio netfs fscache 9p; do
  [ -f "/modules/$m.ko" ] && { insmod "/modules/$m.ko" || note "insmod $m failed: $(dmesg | tail -1)"; }
done
[ -c /dev/kvm ] || note "no /dev/kvm: $(dmesg | grep -i -E 'kvm|svm' | tail -2 | tr '\n' ' ')"
mkdir -p /host /new
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host || note "9p mount failed"
mount -t tmpfs -o mode=755 tmpfs /new
# /tmp first: the binds below may live under it (a checkout in /tmp), and a tmpfs mounted later would hide them
mkdir -p /new/tmp && mount -t tmpfs -o mode=1777 tmpfs /new/tmp
for d in $(arg binds | tr ':' ' '); do
  mkdir -p "/new$d" && mount -o bind "/host$d" "/new$d" || note "bind $d failed"
done
for d in bin lib lib64 sbin; do
  if [ -L "/host/$d" ]; then ln -s "$(readlink "/host/$d")" "/new/$d"; elif [ -d "/host/$d" ]; then
    mkdir -p "/new/$d" && mount -o bind "/host/$d" "/new/$d"; fi
done
mkdir -p /new/proc /new/sys /new/dev /new/tmp /new/run /new/var/tmp /new/root
mount -t proc proc /new/proc
mount -t sysfs sysfs /new/sys
mount -t devtmpfs devtmpfs /new/dev
repo=$(arg repo)
echo "KVMPLAT-LAB-BEGIN kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) nproc=$(nproc)"
chroot /new /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C.UTF-8 \
  PYTHONDONTWRITEBYTECODE=1 KVMPLAT_IMAGE_DIR="$(arg images)" KVMPLAT_LAB_SKIP="$(arg skip)" \
  KVMPLAT_LAB_EXTRA="$(arg extra)" KVMPLAT_BOOTDIFF_BARE="$(arg diffbare)" KVMPLAT_LAB_DIFF_EXTRA="$(arg diffextra | tr , ' ')" \
  /bin/sh -c "cd '$repo' && exec .venv/bin/python lab/x86/inside.py"
echo "KVMPLAT-LAB-END rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
