"""libvirt integration: domain XML <-> VmSpec translation (pure), the `qemu` hook's logic, and live domains read
through libvirt-python."""
