# The x86 lab (issue 12; README "x86 lab"): kvmplat on a real KVM, Debian's kvm-amd inside QEMU's TCG (nested SVM).
# Host packages come from mk/x86.debs; the guest image (Debian's kernel and busybox-static, apt-get download) is
# kvmplat's own, shared with `make test`; modules, the initramfs and logs are cached in $(KVMPLAT_X86_CACHE) (default
# /var/cache/kvmplat/x86) by lab/x86/lab.py, with progress on stderr. The last stdout line is the JSON report.
# X86_LAB_ARGS="--skip demo,boot" leaves inside steps out while iterating.
.PHONY: x86-lab
x86-lab: $(STAMP)
	@scripts/ensure-debs mk/x86.debs
	@$(PY) lab/x86/lab.py $(X86_LAB_ARGS)
