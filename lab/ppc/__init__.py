"""The PowerPC lab: the ioctl plans, their executor, the host learner, a simulated kernel and the probe payload,
run inside QEMU-emulated POWER9 guests against real KVM-HV and KVM-PR (lab.py drives it; see README "PowerPC lab")."""
