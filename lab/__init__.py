"""kvmplat's labs: code that runs only to check kvmplat against real kernels it cannot run in CI."""
