# kvmplat's 32-bit Book3S probe (issue 13 item 3): abi BARE_METAL, arch PPC under book3s_pr with a 32-bit PVR
# (PowerPC 7400). Loaded at 0x100 and entered in real mode with MSR = ME: SF clear, big-endian, no hypervisor.
# Assembled by lab/ppc/ppc_prepare.py with powerpc64le-linux-gnu-as -a32 -mbig (mk/ppc.debs) into a flat binary.
	.text
	.globl	_start
_start:
	lis	4, 0x6b70	# r4 = 0x6b706c74, "kplt" (ppc_payload.PROBE_MAGIC)
	ori	4, 4, 0x6c74
	lis	5, 0x4000	# PROBE_MMIO: unbacked, so the store exits to userspace (KVM_EXIT_MMIO)
	stw	4, 0(5)
	lis	5, 0x8000	# 64-bit mode would make this 0xffffffff80000000; 32-bit mode addresses 0x80000000
	stw	4, 0(5)
1:	b	1b
