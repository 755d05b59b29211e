"""The x86 lab (issue 12): kvmplat on a real KVM, Debian's kvm-amd inside QEMU's TCG; lab.py is the entry point."""
