# The PowerPC lab (issue 8; README "PowerPC lab"): kvmplat's PowerPC code against real KVM-HV and KVM-PR kernels
# inside QEMU's emulated POWER9. Host packages come from mk/ppc.debs; everything else is fetched or built into
# $(KVMPLAT_PPC_CACHE) (default /var/cache/kvmplat/ppc) by lab/ppc/lab.py, with progress on stderr. The last stdout
# line is the JSON report. PPC_LAB_ARGS="--only hv" boots one configuration.
.PHONY: ppc-lab
ppc-lab: $(STAMP)
	@scripts/ensure-debs mk/ppc.debs
	@$(PY) lab/ppc/lab.py $(PPC_LAB_ARGS)
