"""The KVM layer: one object per kernel fd (Kvm, Vm, Vcpu), ioctl numbers, the cffi definitions and the compiled C
side (the vCPU exit loop, the devices, the built-in payloads). Never imports grpc."""
