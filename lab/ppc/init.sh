#!/bin/busybox sh
# /init of the PowerPC lab's initramfs (lab/ppc/lab.py): load KVM when the kernel has it as modules (Debian's),
# run kvmplat's own PowerPC code against the real /dev/kvm, print its JSON lines between markers, power off.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mods=/lib/modules/$(uname -r)/kernel/arch/powerpc/kvm
if [ -f "$mods/kvm.ko" ]; then
  insmod "$mods/kvm.ko" || echo "KVMPLAT-LAB-NOTE insmod kvm.ko failed"
  insmod "$mods/kvm-hv.ko" || echo "KVMPLAT-LAB-NOTE insmod kvm-hv.ko failed: $(dmesg | grep -i kvm | tail -1)"
fi
echo "KVMPLAT-LAB-BEGIN kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime) cmdline=$(cat /proc/cmdline)"
PYTHONPATH=/lab:/usr/lib/python3/dist-packages PYTHONDONTWRITEBYTECODE=1 \
  /usr/bin/python3.11 -S -m kvmplat.lab.ppc.guest
echo "KVMPLAT-LAB-END rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)"
poweroff -f
