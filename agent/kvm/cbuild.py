"""All cffi definitions of kvmplat, and the out-of-line build of `kvmplat.agent.kvm._kvmc`.

Struct layouts follow the uapi <linux/kvm.h> of the 6.1 series (x86-64 and powerpc64). They are written out here,
not included from the host's header, because the PowerPC ones must exist on an x86 host too; tests compile a C
program against the installed kernel header and compare every size and offset (tests/kvm/test_layouts.py).

The compiled module also holds the runner's vCPU fast loop (fastloop.c: the common exits handled in C without
returning to Python), bulk page and device-state copying for snapshots and migration (pages.c), and the built-in
guest payloads (payloads.S, assembled by the same compiler).
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

# x86-64 structs (uapi linux/kvm.h, asm/kvm.h; kernel 6.1 headers).
X86_STRUCTS = """
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags; uint64_t guest_phys_addr; uint64_t memory_size; uint64_t userspace_addr;
};
struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};
struct kvm_segment {
    uint64_t base; uint32_t limit; uint16_t selector;
    uint8_t type, present, dpl, db, s, l, g, avl, unusable, padding;
};
struct kvm_dtable { uint64_t base; uint16_t limit; uint16_t padding[3]; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    uint64_t interrupt_bitmap[4];
};
struct kvm_cpuid_entry2 {
    uint32_t function; uint32_t index; uint32_t flags;
    uint32_t eax, ebx, ecx, edx; uint32_t padding[3];
};
struct kvm_cpuid2 { uint32_t nent; uint32_t padding; struct kvm_cpuid_entry2 entries[]; };
struct kvm_pit_config { uint32_t flags; uint32_t pad[15]; };
struct kvm_irq_level { uint32_t irq; uint32_t level; };
struct kvm_mp_state { uint32_t mp_state; };
struct kvm_enable_cap { uint32_t cap; uint32_t flags; uint64_t args[4]; uint8_t pad[64]; };
struct kvm_one_reg { uint64_t id; uint64_t addr; };
struct kvm_run_io { uint8_t direction; uint8_t size; uint16_t port; uint32_t count; uint64_t data_offset; };
struct kvm_run_mmio { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; };
struct kvm_run_internal { uint32_t suberror; uint32_t ndata; uint64_t data[16]; };
struct kvm_run_system_event { uint32_t type; uint32_t ndata; uint64_t data[16]; };
struct kvm_run_fail_entry { uint64_t hardware_entry_failure_reason; uint32_t cpu; };
struct kvm_run_ex { uint32_t exception; uint32_t error_code; };
struct kvm_run_papr_hcall { uint64_t nr; uint64_t ret; uint64_t args[9]; };
struct kvm_run {
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint8_t padding1[6];
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct kvm_run_io io;
        struct kvm_run_mmio mmio;
        struct kvm_run_internal internal;
        struct kvm_run_system_event system_event;
        struct kvm_run_fail_entry fail_entry;
        struct kvm_run_ex ex;
        struct kvm_run_papr_hcall papr_hcall;
        uint64_t hardware_exit_reason;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union { char padding2[2048]; } s;
};
struct kvm_fpu {
    uint8_t fpr[8][16]; uint16_t fcw; uint16_t fsw; uint8_t ftwx; uint8_t pad1; uint16_t last_opcode;
    uint64_t last_ip; uint64_t last_dp; uint8_t xmm[16][16]; uint32_t mxcsr; uint32_t pad2;
};
struct kvm_msr_entry { uint32_t index; uint32_t reserved; uint64_t data; };
struct kvm_msrs { uint32_t nmsrs; uint32_t pad; struct kvm_msr_entry entries[]; };
struct kvm_msr_list { uint32_t nmsrs; uint32_t indices[]; };
struct kvm_lapic_state { char regs[1024]; };
struct kvm_vcpu_events {
    struct { uint8_t injected; uint8_t nr; uint8_t has_error_code; uint8_t pending; uint32_t error_code; } exception;
    struct { uint8_t injected; uint8_t nr; uint8_t soft; uint8_t shadow; } interrupt;
    struct { uint8_t injected; uint8_t pending; uint8_t masked; uint8_t pad; } nmi;
    uint32_t sipi_vector;
    uint32_t flags;
    struct { uint8_t smm; uint8_t pending; uint8_t smm_inside_nmi; uint8_t latched_init; } smi;
    struct { uint8_t pending; } triple_fault;
    uint8_t reserved[26];
    uint8_t exception_has_payload;
    uint64_t exception_payload;
};
struct kvm_debugregs { uint64_t db[4]; uint64_t dr6; uint64_t dr7; uint64_t flags; uint64_t reserved[9]; };
struct kvm_xsave { uint32_t region[1024]; };
struct kvm_xcr { uint32_t xcr; uint32_t reserved; uint64_t value; };
struct kvm_xcrs { uint32_t nr_xcrs; uint32_t flags; struct kvm_xcr xcrs[16]; uint64_t padding[16]; };
struct kvm_irqchip { uint32_t chip_id; uint32_t pad; union { char dummy[512]; } chip; };
struct kvm_pit_channel_state {
    uint32_t count; uint16_t latched_count; uint8_t count_latched; uint8_t status_latched; uint8_t status;
    uint8_t read_state; uint8_t write_state; uint8_t write_latch; uint8_t rw_mode; uint8_t mode; uint8_t bcd;
    uint8_t gate; int64_t count_load_time;
};
struct kvm_pit_state2 { struct kvm_pit_channel_state channels[3]; uint32_t flags; uint32_t reserved[9]; };
struct kvm_clock_data {
    uint64_t clock; uint32_t flags; uint32_t pad0; uint64_t realtime; uint64_t host_tsc; uint32_t pad[4];
};
struct kvm_dirty_log { uint32_t slot; uint32_t padding1; union { void *dirty_bitmap; uint64_t padding2; }; };
struct kvm_stats_header {
    uint32_t flags; uint32_t name_size; uint32_t num_desc; uint32_t id_offset; uint32_t desc_offset;
    uint32_t data_offset;
};
struct kvm_stats_desc {
    uint32_t flags; int16_t exponent; uint16_t size; uint32_t offset; uint32_t bucket_size; char name[];
};
"""

# powerpc64 structs (uapi asm/kvm.h and linux/kvm.h of powerpc, 6.1); only their bytes matter on x86, for the ioctl
# plan. kvm_sregs' union is 1224 bytes (Book3S u.s outgrows the 1020-byte pad), so the struct is 1232 bytes.
PPC_STRUCTS = """
struct ppc_kvm_regs {
    uint64_t pc, cr, ctr, lr, xer, msr, srr0, srr1, pid;
    uint64_t sprg0, sprg1, sprg2, sprg3, sprg4, sprg5, sprg6, sprg7;
    uint64_t gpr[32];
};
struct ppc_kvm_slb { uint64_t slbe; uint64_t slbv; };
struct ppc_kvm_sregs_s {
    uint64_t sdr1;
    struct { struct ppc_kvm_slb slb[64]; } ppc64;
    struct { uint32_t sr[16]; uint64_t ibat[8]; uint64_t dbat[8]; } ppc32;
};
struct ppc_kvm_sregs_fsl { uint32_t features; uint32_t svr; uint64_t mcar; uint32_t hid0; uint32_t pid1, pid2; };
struct ppc_kvm_sregs_e {
    union { struct ppc_kvm_sregs_fsl fsl; uint8_t pad[256]; } impl;
    uint32_t features; uint32_t impl_id; uint32_t update_special; uint32_t pir;
    uint64_t sprg8; uint64_t sprg9; uint64_t csrr0; uint64_t dsrr0; uint64_t mcsrr0;
    uint32_t csrr1; uint32_t dsrr1; uint32_t mcsrr1; uint32_t esr;
    uint64_t dear; uint64_t ivpr; uint64_t mcivpr; uint64_t mcsr;
    uint32_t tsr; uint32_t tcr; uint32_t decar; uint32_t dec;
    uint64_t tb;
    uint32_t dbsr; uint32_t dbcr[3]; uint32_t iac[4]; uint32_t dac[2]; uint32_t dvc[2];
    uint8_t num_iac; uint8_t num_dac; uint8_t num_dvc; uint8_t pad;
    uint32_t epr; uint32_t vrsave; uint32_t epcr;
    uint32_t mas0; uint32_t mas1; uint64_t mas2; uint64_t mas7_3; uint32_t mas4; uint32_t mas6;
    uint32_t ivor_low[16]; uint32_t ivor_high[18];
    uint32_t mmucfg; uint32_t eptcfg; uint32_t tlbcfg[4]; uint32_t tlbps[4];
    uint32_t eplc, epsc;
};
struct ppc_kvm_sregs {
    uint32_t pvr;
    union { struct ppc_kvm_sregs_s s; struct ppc_kvm_sregs_e e; uint8_t pad[1020]; } u;
};
struct kvm_ppc_pvinfo { uint32_t flags; uint32_t hcall[4]; uint8_t pad[108]; };
struct kvm_ppc_one_page_size { uint32_t page_shift; uint32_t pte_enc; };
struct kvm_ppc_one_seg_page_size { uint32_t page_shift; uint32_t slb_enc; struct kvm_ppc_one_page_size enc[8]; };
struct kvm_ppc_smmu_info {
    uint64_t flags; uint32_t slb_size; uint16_t data_keys; uint16_t instr_keys;
    struct kvm_ppc_one_seg_page_size sps[8];
};
struct kvm_ppc_mmuv3_cfg { uint64_t flags; uint64_t process_table; };
"""

# The runner's C side: fast vCPU loop and devices (fastloop.c) and the built-in payloads (payloads.S).
FASTLOOP_API = """
struct kp_vcpu_stats {
    uint64_t exits;
    uint64_t by_reason[64];
    uint64_t unhandled_pio;
    uint64_t unhandled_mmio;
    uint64_t console_bytes;
};
typedef struct kp_vm kp_vm;
kp_vm *kp_vm_new(int vm_fd, int console_fd, int irqchip, unsigned long req_kvm_run, unsigned long req_irq_line);
void kp_vm_free(kp_vm *vm);
int kp_vm_flush_console(kp_vm *vm);
int kp_vm_console_idle(kp_vm *vm, int wake_fd);
uint64_t kp_vm_first_console_ns(kp_vm *vm);
int kp_vm_console_input(kp_vm *vm, const uint8_t *data, size_t len);
int kp_run(kp_vm *vm, int vcpu_fd, struct kvm_run *run, struct kp_vcpu_stats *stats);
int kp_handle_pio(kp_vm *vm, struct kvm_run *run, struct kp_vcpu_stats *stats);
struct kp_dev_state {
    uint32_t version;
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr, thri_pending;
    uint32_t line_len, rx_len;
    uint64_t first_console_ns;
    uint8_t line[512];
    uint8_t rx[4096];
};
int kp_vm_save_devices(kp_vm *vm, struct kp_dev_state *out);
int kp_vm_load_devices(kp_vm *vm, const struct kp_dev_state *in);
size_t kp_pack_pages(const uint8_t *mem, uint64_t npages, const uint64_t *dirty, uint64_t *next, uint8_t *out,
                     size_t cap, uint64_t *counts);
int64_t kp_unpack_pages(uint8_t *mem, uint64_t npages, const uint8_t *in, size_t len);
uint64_t kp_count_bits(const uint64_t *bitmap, size_t words);
void kp_or_bits(uint64_t *into, const uint64_t *from, size_t words);
int kp_ioctl_ptr(int fd, unsigned long req, void *arg);
int kp_ioctl_val(int fd, unsigned long req, unsigned long arg);

#define KP_EXIT_EINTR ...
#define KP_EXIT_POWEROFF ...
#define KP_EXIT_RESET ...
#define KP_EXIT_SLOW ...
#define KP_POWEROFF_PORT ...
#define KP_NULL_PORT ...

extern const uint8_t kp_payload_blob[];
extern const uint32_t kp_payload_blob_size;
extern const uint32_t kp_entry_probe;
extern const uint32_t kp_entry_loop;
extern const uint32_t kp_entry_outloop;
extern const uint32_t kp_entry_echo;
extern const uint32_t kp_entry_dirty;
"""

CDEF = X86_STRUCTS + PPC_STRUCTS + FASTLOOP_API


def _asm_block(source: str) -> str:
    """payloads.S as one top-level C asm statement in .rodata (the payloads are data to the host)."""
    lines = [line.split("#", 1)[0].rstrip() for line in source.splitlines()]
    body = "".join('"' + line.replace("\\", "\\\\").replace('"', '\\"') + '\\n"\n' for line in lines if line.strip())
    return '\n__asm__(".pushsection .rodata\\n"\n' + body + '".code64\\n.popsection\\n");\n'


ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "kvmplat.agent.kvm._kvmc",
    "#include <stdint.h>\n#include <stddef.h>\n"
    + X86_STRUCTS
    + PPC_STRUCTS
    + (HERE / "fastloop.c").read_text()
    + (HERE / "pages.c").read_text()
    + _asm_block((HERE / "payloads.S").read_text()),
    extra_compile_args=["-O2", "-Wall", "-Wno-unused-function"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
