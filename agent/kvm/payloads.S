# Built-in guest payloads, 16-bit real mode, one blob loaded at guest physical 0x1000 (CS=0).
# Every guest instruction is emulated on kvm_pvm (~1 us each), so the payloads are tiny and idle in hlt.
# Absolute addresses inside the blob are written as (label - kp_payload_blob + LOAD).
#
# Parameters (written by the loader, kvmplat.agent.guest.builtin): 0x500 u8 vCPU count, 0x508 u32 memory size.
# Scratch: 0x502 u8 whose turn it is to print (probe), 0x504 u16 timer ticks, 0x506 u16 seconds (loop),
# 0x510..0x51f the four CPUID result registers. Stacks: 0x7000 - 0x100 * vCPU index (bx at entry).
# Port 0x3f8 is COM1 (output), port 0xf4 the kvmplat exit port (any write powers the guest off).

.code16
.set LOAD, 0x1000
.set NVCPUS, 0x500
.set TURN, 0x502
.set TICKS, 0x504
.set SECONDS, 0x506
.set REGS, 0x510
.set MEMSIZE, 0x508

.globl kp_payload_blob
.globl kp_payload_blob_size
.globl kp_entry_probe
.globl kp_entry_loop
.globl kp_entry_outloop
.globl kp_entry_echo
.globl kp_entry_dirty

# The master 8259 in the usual way (ICW1 edge/cascade/ICW4, vectors from 0x08, slave on IR2, 8086 mode), then the
# interrupt mask: a payload unmasks only the lines it serves.
.macro MASTER_PIC_INIT mask
    movb $0x11, %al
    outb %al, $0x20
    movb $0x08, %al
    outb %al, $0x21
    movb $0x04, %al
    outb %al, $0x21
    movb $0x01, %al
    outb %al, $0x21
    movb $\mask, %al
    outb %al, $0x21
.endm

kp_payload_blob:

# Common start: flat real-mode segments and a private stack. bx holds this vCPU's index, put there by the runner
# (CPUID's initial APIC id is not a reliable identity on every host: kvm_pvm sometimes shows the host's).
p_setup:
    xorw %ax, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %bx, %ax
    shlw $8, %ax
    movw $0x7000, %sp
    subw %ax, %sp
    jmp *%di

# probe: each vCPU in turn prints "kvmplat-probe cpu N of M"; the first also prints CPUID leaves as
# "cpuid LLLLLLLL SSSSSSSS EAX EBX ECX EDX"; the last to print powers the guest off.
probe_start:
    cli
    movw $(probe_main - kp_payload_blob + LOAD), %di
    jmp p_setup
probe_main:
probe_wait:
    movb TURN, %al
    cmpb %bl, %al
    je probe_go
    pause
    jmp probe_wait
probe_go:
    movw $(s_probe - kp_payload_blob + LOAD), %si
    call p_puts
    movw %bx, %ax
    call p_dec
    movw $(s_of - kp_payload_blob + LOAD), %si
    call p_puts
    movzbw NVCPUS, %ax
    call p_dec
    movb $0x0a, %al
    call p_putc
    testw %bx, %bx
    jnz probe_done
    call p_cpuid_all
probe_done:
    incb TURN
    movb TURN, %al
    cmpb NVCPUS, %al
    jb p_park
    outb %al, $0xf4
p_park:
    cli
    hlt
    jmp p_park

# p_cpuid_all: prints a "cpuid ..." line for every leaf of t_leaves (keeps bx and si).
p_cpuid_all:
    pushw %si
    pushw %bx
    movw $(t_leaves - kp_payload_blob + LOAD), %si
p_cpuid_leaf:
    movl (%si), %eax
    cmpl $0xffffffff, %eax
    je p_cpuid_end
    movl 4(%si), %ecx
    pushw %si
    call p_cpuid_line
    popw %si
    addw $8, %si
    jmp p_cpuid_leaf
p_cpuid_end:
    popw %bx
    popw %si
    ret

# p_cpuid_line: eax = leaf, ecx = subleaf; prints one "cpuid ..." line.
p_cpuid_line:
    pushl %ecx
    pushl %eax
    cpuid
    movl %eax, REGS
    movl %ebx, REGS+4
    movl %ecx, REGS+8
    movl %edx, REGS+12
    movw $(s_cpuid - kp_payload_blob + LOAD), %si
    call p_puts
    popl %eax
    call p_hex32
    popl %eax
    call p_space_hex32
    movl REGS, %eax
    call p_space_hex32
    movl REGS+4, %eax
    call p_space_hex32
    movl REGS+8, %eax
    call p_space_hex32
    movl REGS+12, %eax
    call p_space_hex32
    movb $0x0a, %al
    jmp p_putc

# loop: the boot vCPU programs the PIT (channel 0, 18.2 Hz) and the PIC, then sleeps in hlt; each second
# of ticks it prints "kvmplat-loop tick N". Other vCPUs sleep with interrupts off.
loop_start:
    cli
    movw $(loop_main - kp_payload_blob + LOAD), %di
    jmp p_setup
loop_main:
    testw %bx, %bx
    jnz p_park
    movw $(loop_tick - kp_payload_blob + LOAD), 0x20
    movw $0, 0x22
    MASTER_PIC_INIT 0xfe
    movb $0x11, %al
    outb %al, $0xa0
    movb $0x70, %al
    outb %al, $0xa1
    movb $0x02, %al
    outb %al, $0xa1
    movb $0x01, %al
    outb %al, $0xa1
    movb $0xff, %al
    outb %al, $0xa1
    movb $0x34, %al
    outb %al, $0x43
    xorb %al, %al
    outb %al, $0x40
    outb %al, $0x40
    movw $(s_loop - kp_payload_blob + LOAD), %si
    call p_puts
    movzbw NVCPUS, %ax
    call p_dec
    movw $(s_vcpus - kp_payload_blob + LOAD), %si
    call p_puts
    sti
loop_idle:
    hlt
    jmp loop_idle
loop_tick:
    pushaw
    incw TICKS
    cmpw $18, TICKS
    jb loop_eoi
    movw $0, TICKS
    incw SECONDS
    movw $(s_tick - kp_payload_blob + LOAD), %si
    call p_puts
    movw SECONDS, %ax
    call p_dec
    movb $0x0a, %al
    call p_putc
loop_eoi:
    movb $0x20, %al
    outb %al, $0x20
    popaw
    iret

# outloop: port 0x80 writes as fast as the guest can; the exit-cost benchmark's guest.
outloop_start:
    movw $0x80, %dx
outloop_again:
    outb %al, %dx
    jmp outloop_again

# dirty: writes a counter into every page from 1 MiB to the end of memory, round after round, forever (the
# migration benchmark's busy guest). DS has a 4 GiB limit (the loader's "unreal mode"), so 32-bit addresses reach
# all of memory from real mode. Other vCPUs sleep with interrupts off.
dirty_start:
    cli
    testw %bx, %bx
    jnz dirty_idle
    movl MEMSIZE, %ebx
    xorl %ecx, %ecx
dirty_round:
    incl %ecx
    movl $0x100000, %edi
dirty_page:
    movl %ecx, (%edi)
    addl $4096, %edi
    cmpl %ebx, %edi
    jb dirty_page
    jmp dirty_round
dirty_idle:
    hlt
    jmp dirty_idle

# echo: the boot vCPU unmasks the UART's receive interrupt (IRQ 4, vector 0x0c) at the PIC and the UART, prints
# "kvmplat-echo: ready", then sleeps in hlt; what the console sends is written straight back, but for "?", answered
# with the probe's CPUID lines and "kvmplat-echo: cpuid done" (the guest's CPUID view, asked again at any time, e.g.
# after a migration). The idle loop drains
# the receiver with interrupts off before each sti;hlt, so input that arrived before IER was set is not stranded.
echo_start:
    cli
    movw $(echo_main - kp_payload_blob + LOAD), %di
    jmp p_setup
echo_main:
    testw %bx, %bx
    jnz p_park
    movw $(echo_irq - kp_payload_blob + LOAD), 0x30
    movw $0, 0x32
    MASTER_PIC_INIT 0xef
    movw $0x3f9, %dx
    movb $0x01, %al
    outb %al, %dx
    movw $(s_echo - kp_payload_blob + LOAD), %si
    call p_puts
echo_idle:
    cli
    call echo_drain
    sti
    hlt
    jmp echo_idle
echo_irq:
    pushaw
    call echo_drain
    movb $0x20, %al
    outb %al, $0x20
    popaw
    iret
echo_drain:
    pushw %dx
echo_next:
    movw $0x3fd, %dx
    inb %dx, %al
    testb $0x01, %al
    jz echo_drained
    movw $0x3f8, %dx
    inb %dx, %al
    cmpb $0x3f, %al
    je echo_cpuid
    call p_putc
    jmp echo_next
echo_cpuid:
    pushal
    call p_cpuid_all
    movw $(s_cpuid_done - kp_payload_blob + LOAD), %si
    call p_puts
    popal
    jmp echo_next
echo_drained:
    popw %dx
    ret

# --- output helpers (clobber ax; keep every other register) ---
p_putc:
    pushw %dx
    movw $0x3f8, %dx
    outb %al, %dx
    popw %dx
    ret
p_puts:
    lodsb
    testb %al, %al
    jz p_puts_end
    call p_putc
    jmp p_puts
p_puts_end:
    ret
p_space_hex32:
    pushl %eax
    movb $0x20, %al
    call p_putc
    popl %eax
p_hex32:
    pushw %cx
    movw $8, %cx
p_hex32_digit:
    roll $4, %eax
    pushl %eax
    andb $0x0f, %al
    addb $0x30, %al
    cmpb $0x39, %al
    jbe p_hex32_put
    addb $0x27, %al
p_hex32_put:
    call p_putc
    popl %eax
    loop p_hex32_digit
    popw %cx
    ret
p_dec:
    pushw %bx
    pushw %cx
    pushw %dx
    movw $10, %bx
    xorw %cx, %cx
p_dec_div:
    xorw %dx, %dx
    divw %bx
    pushw %dx
    incw %cx
    testw %ax, %ax
    jnz p_dec_div
p_dec_put:
    popw %ax
    addb $0x30, %al
    call p_putc
    loop p_dec_put
    popw %dx
    popw %cx
    popw %bx
    ret

s_probe: .asciz "kvmplat-probe cpu "
s_of: .asciz " of "
s_cpuid: .asciz "cpuid "
s_loop: .asciz "kvmplat-loop: started, "
s_vcpus: .asciz " vCPUs, ticking once a second\n"
s_tick: .asciz "kvmplat-loop tick "
s_echo: .asciz "kvmplat-echo: ready\n"
s_cpuid_done: .asciz "kvmplat-echo: cpuid done\n"
.balign 4
t_leaves:
    .long 0x00000000, 0
    .long 0x00000001, 0
    .long 0x00000007, 0
    .long 0x0000000d, 0
    .long 0x80000000, 0
    .long 0x80000001, 0
    .long 0x40000000, 0
    .long 0x40000001, 0
    .long 0x40000100, 0
    .long 0xffffffff, 0
kp_payload_end:

.balign 4
kp_payload_blob_size: .long kp_payload_end - kp_payload_blob
kp_entry_probe: .long probe_start - kp_payload_blob
kp_entry_loop: .long loop_start - kp_payload_blob
kp_entry_outloop: .long outloop_start - kp_payload_blob
kp_entry_echo: .long echo_start - kp_payload_blob
kp_entry_dirty: .long dirty_start - kp_payload_blob
