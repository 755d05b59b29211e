/* The runner's vCPU fast loop and the devices it serves without returning to Python.
 *
 * kp_run() calls KVM_RUN until an exit needs Python: a kick (EINTR), a guest poweroff or reset, or any exit the
 * fast path does not handle (returned as KP_EXIT_SLOW, with the details left in kvm_run). Port I/O to the devices
 * below, unknown ports and MMIO to nothing are handled here, because on hardware KVM an exit costs ~1 us and a trip
 * through Python would cost more than the exit itself.
 *
 * Devices (all ports on the PC I/O space):
 *   0x3f8-0x3ff  COM1, an 8250/16550A UART: output is line-buffered to console_fd (an idle reader is signalled
 *                at the next byte, kp_vm_console_idle, so it can sleep without polling), input is queued by Python
 *                (kp_vm_console_input) and raises IRQ 4; IER reads back, THRE interrupts are raised after THR writes;
 *                the wall-clock time of the first THR write is kept (kp_vm_first_console_ns, a VmStats milestone).
 *   0x70, 0x71   CMOS RTC (MC146818): the host's UTC time, BCD unless the guest sets binary mode, 24-hour, never
 *                "update in progress"; 128 bytes of CMOS RAM; writes to the time registers are dropped; no IRQ 8. With
 *                nothing there Linux's rtc_cmos reads 0xff (UIP set) and polls 1 s before giving up: 10,000 rounds of
 *                4 exits and udelay(100), seconds nested in the x86 lab; and a guest without kvmclock has no time.
 *                Not part of the saved device state (the time is the host's; index and RAM start afresh).
 *   0x60, 0x64   i8042 just enough for the reset line: 0xfe written to 0x64 resets the machine; no controller
 *                behind it (status: output full, input empty; data reads 0).
 *   0x80         POST code / Linux io delay port: ignored.
 *   0xf4         kvmplat exit port (as QEMU's isa-debug-exit): any write powers the guest off.
 * Other ports: reads return all ones, writes are dropped, and both are counted in stats->unhandled_pio.
 *
 * The struct layouts (kvm_run etc.) are those declared in cbuild.py; ioctl request numbers come from Python
 * (kvmplat.agent.kvm.ioctls), so this file holds no ABI constant of its own.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#define KP_EXIT_EINTR (-4)
#define KP_EXIT_POWEROFF 1000
#define KP_EXIT_RESET 1001
#define KP_EXIT_SLOW 1002
#define KP_POWEROFF_PORT 0xf4
#define KP_NULL_PORT 0x80

struct kp_vcpu_stats {
    uint64_t exits;
    uint64_t by_reason[64];
    uint64_t unhandled_pio;
    uint64_t unhandled_mmio;
    uint64_t console_bytes;
};

typedef struct kp_vm kp_vm;
int kp_handle_pio(kp_vm *vm, struct kvm_run *run, struct kp_vcpu_stats *st);

/* Defined by payloads.S (appended to this unit as a top-level asm block). */
extern const uint8_t kp_payload_blob[];
extern const uint32_t kp_payload_blob_size;
extern const uint32_t kp_entry_probe;
extern const uint32_t kp_entry_loop;
extern const uint32_t kp_entry_outloop;
extern const uint32_t kp_entry_echo;
extern const uint32_t kp_entry_dirty;

#define EXIT_IO 2
#define EXIT_MMIO 6
#define EXIT_INTR 10

#define COM1 0x3f8
#define UART_LINE_MAX 512
#define UART_RX_MAX 4096

/* 8250 register bits (include/uapi/linux/serial_reg.h) */
#define UART_IER_RDI 0x01
#define UART_IER_THRI 0x02
#define UART_IIR_NO_INT 0x01
#define UART_IIR_THRI 0x02
#define UART_IIR_RDI 0x04
#define UART_IIR_FIFO 0xc0
#define UART_LCR_DLAB 0x80
#define UART_LSR_DR 0x01
#define UART_LSR_THRE 0x20
#define UART_LSR_TEMT 0x40
#define UART_MCR_LOOP 0x10
#define UART_MSR_DCD_DSR_CTS 0xb0

struct kp_uart {
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr;
    int thri_pending;
    uint8_t line[UART_LINE_MAX];
    size_t line_len;
    uint8_t rx[UART_RX_MAX];
    size_t rx_head, rx_len;
};

#define KP_DEV_STATE_VERSION 1
struct kp_dev_state {
    uint32_t version;
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr, thri_pending;
    uint32_t line_len, rx_len;
    uint64_t first_console_ns;
    uint8_t line[UART_LINE_MAX];
    uint8_t rx[UART_RX_MAX];
};

#define RTC_INDEX 0x70
#define RTC_DATA 0x71
#define RTC_REG_A 0x0a
#define RTC_REG_B 0x0b
#define RTC_REG_C 0x0c
#define RTC_REG_D 0x0d
#define RTC_CENTURY 0x32
#define RTC_A_UIP 0x80
#define RTC_B_DM_BINARY 0x04
#define RTC_B_24H 0x02
#define RTC_D_VRT 0x80

struct kp_rtc {
    uint8_t index;
    uint8_t ram[128];
};

struct kp_vm {
    pthread_mutex_t lock;
    int vm_fd, console_fd, irqchip;
    unsigned long req_kvm_run, req_irq_line;
    struct kp_uart uart;
    struct kp_rtc rtc;
    uint64_t first_console_ns; /* CLOCK_REALTIME of the guest's first THR write (0: none yet), a stats milestone */
    int reader_wake_fd;        /* the idle console reader's eventfd, signalled at the next THR write; -1: it is awake */
};

int kp_ioctl_ptr(int fd, unsigned long req, void *arg)
{
    int r = ioctl(fd, req, arg);
    return r < 0 ? -errno : r;
}

int kp_ioctl_val(int fd, unsigned long req, unsigned long arg)
{
    int r = ioctl(fd, req, arg);
    return r < 0 ? -errno : r;
}

kp_vm *kp_vm_new(int vm_fd, int console_fd, int irqchip, unsigned long req_kvm_run, unsigned long req_irq_line)
{
    kp_vm *vm = calloc(1, sizeof(*vm));
    if (!vm)
        return NULL;
    pthread_mutex_init(&vm->lock, NULL);
    vm->vm_fd = vm_fd;
    vm->console_fd = console_fd;
    vm->reader_wake_fd = -1;
    vm->irqchip = irqchip;
    vm->req_kvm_run = req_kvm_run;
    vm->req_irq_line = req_irq_line;
    vm->rtc.ram[RTC_REG_A] = 0x26; /* 32.768 kHz time base, 1024 Hz rate */
    vm->rtc.ram[RTC_REG_B] = RTC_B_24H;
    vm->rtc.ram[RTC_REG_D] = RTC_D_VRT;
    return vm;
}

void kp_vm_free(kp_vm *vm)
{
    if (!vm)
        return;
    pthread_mutex_destroy(&vm->lock);
    free(vm);
}

static void write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the reader is gone: console output is dropped, the guest keeps running */
        p += w;
        n -= (size_t)w;
    }
}

static void uart_flush_locked(kp_vm *vm)
{
    struct kp_uart *u = &vm->uart;
    if (u->line_len) {
        write_all(vm->console_fd, u->line, u->line_len);
        u->line_len = 0;
    }
}

uint64_t kp_vm_first_console_ns(kp_vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    uint64_t ns = vm->first_console_ns;
    pthread_mutex_unlock(&vm->lock);
    return ns;
}

/* The console reader goes idle: returns 1 (and flushes) if a partial line is buffered, else 0 after arranging that the
 * next THR write signals wake_fd, so the reader can block without polling for partial lines. */
int kp_vm_console_idle(kp_vm *vm, int wake_fd)
{
    pthread_mutex_lock(&vm->lock);
    int had = vm->uart.line_len > 0;
    if (had)
        uart_flush_locked(vm);
    else
        vm->reader_wake_fd = wake_fd;
    pthread_mutex_unlock(&vm->lock);
    return had;
}

/* Also ends an idle arrangement: the reader is awake, and a stopped reader's eventfd is never written again. */
int kp_vm_flush_console(kp_vm *vm)
{
    pthread_mutex_lock(&vm->lock);
    int had = vm->uart.line_len > 0;
    vm->reader_wake_fd = -1;
    uart_flush_locked(vm);
    pthread_mutex_unlock(&vm->lock);
    return had;
}

/* An edge on IRQ 4: the in-kernel PIC/IOAPIC latch it. */
static void uart_pulse_irq(kp_vm *vm)
{
    if (!vm->irqchip)
        return;
    struct kvm_irq_level lvl = {.irq = 4, .level = 1};
    ioctl(vm->vm_fd, vm->req_irq_line, &lvl);
    lvl.level = 0;
    ioctl(vm->vm_fd, vm->req_irq_line, &lvl);
}

int kp_vm_console_input(kp_vm *vm, const uint8_t *data, size_t len)
{
    struct kp_uart *u = &vm->uart;
    size_t taken = 0;
    pthread_mutex_lock(&vm->lock);
    while (taken < len && u->rx_len < UART_RX_MAX) {
        u->rx[(u->rx_head + u->rx_len) % UART_RX_MAX] = data[taken++];
        u->rx_len++;
    }
    int irq = (u->ier & UART_IER_RDI) && taken > 0;
    pthread_mutex_unlock(&vm->lock);
    if (irq)
        uart_pulse_irq(vm);
    return (int)taken;
}

static void uart_out(kp_vm *vm, unsigned reg, uint8_t v, struct kp_vcpu_stats *st, int *irq)
{
    struct kp_uart *u = &vm->uart;
    int dlab = u->lcr & UART_LCR_DLAB;
    switch (reg) {
    case 0:
        if (dlab) {
            u->dll = v;
            break;
        }
        if (!vm->first_console_ns) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            vm->first_console_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        }
        u->line[u->line_len++] = v;
        st->console_bytes++;
        if (vm->reader_wake_fd >= 0) { /* the reader is idle: a partial line must reach it after its quiet time */
            uint64_t one = 1;
            if (write(vm->reader_wake_fd, &one, sizeof one) < 0) {
                /* EAGAIN: a wake is pending already */
            }
            vm->reader_wake_fd = -1;
        }
        if (v == '\n' || u->line_len == UART_LINE_MAX)
            uart_flush_locked(vm);
        if (u->ier & UART_IER_THRI) {
            u->thri_pending = 1;
            *irq = 1;
        }
        break;
    case 1:
        if (dlab) {
            u->dlm = v;
            break;
        }
        if ((v & UART_IER_THRI) && !(u->ier & UART_IER_THRI)) {
            u->thri_pending = 1;
            *irq = 1;
        }
        u->ier = v & 0x0f;
        break;
    case 2: u->fcr = v; break;
    case 3: u->lcr = v; break;
    case 4: u->mcr = v; break;
    case 7: u->scr = v; break;
    default: break;
    }
}

static uint8_t uart_in(kp_vm *vm, unsigned reg)
{
    struct kp_uart *u = &vm->uart;
    int dlab = u->lcr & UART_LCR_DLAB;
    uint8_t fifo = (u->fcr & 1) ? UART_IIR_FIFO : 0;
    switch (reg) {
    case 0:
        if (dlab)
            return u->dll;
        if (u->rx_len) {
            uint8_t c = u->rx[u->rx_head];
            u->rx_head = (u->rx_head + 1) % UART_RX_MAX;
            u->rx_len--;
            return c;
        }
        return 0;
    case 1: return dlab ? u->dlm : u->ier;
    case 2:
        if (u->rx_len && (u->ier & UART_IER_RDI))
            return fifo | UART_IIR_RDI;
        if (u->thri_pending && (u->ier & UART_IER_THRI)) {
            u->thri_pending = 0; /* reading IIR acknowledges a THRE interrupt */
            return fifo | UART_IIR_THRI;
        }
        return fifo | UART_IIR_NO_INT;
    case 3: return u->lcr;
    case 4: return u->mcr;
    case 5: return UART_LSR_THRE | UART_LSR_TEMT | (u->rx_len ? UART_LSR_DR : 0);
    case 6: return (u->mcr & UART_MCR_LOOP) ? 0 : UART_MSR_DCD_DSR_CTS;
    case 7: return u->scr;
    }
    return 0xff;
}

/* The clock register `reg` of `t` in *v; 0 when `reg` is not a clock register. */
static int rtc_clock(unsigned reg, const struct tm *t, int *v)
{
    switch (reg) {
    case 0x00: *v = t->tm_sec; break;
    case 0x02: *v = t->tm_min; break;
    case 0x04: *v = t->tm_hour; break;
    case 0x06: *v = t->tm_wday + 1; break;
    case 0x07: *v = t->tm_mday; break;
    case 0x08: *v = t->tm_mon + 1; break;
    case 0x09: *v = t->tm_year % 100; break;
    case RTC_CENTURY: *v = (1900 + t->tm_year) / 100; break;
    default: return 0;
    }
    return 1;
}

static uint8_t rtc_in(kp_vm *vm)
{
    struct kp_rtc *r = &vm->rtc;
    unsigned reg = r->index & 0x7f;
    time_t now = time(NULL);
    struct tm t;
    int v;
    if (gmtime_r(&now, &t) && rtc_clock(reg, &t, &v))
        return (r->ram[RTC_REG_B] & RTC_B_DM_BINARY) ? (uint8_t)v : (uint8_t)(((v / 10) << 4) | (v % 10));
    switch (reg) {
    case RTC_REG_A: return r->ram[reg] & (uint8_t)~RTC_A_UIP;
    case RTC_REG_C: return 0;
    case RTC_REG_D: return RTC_D_VRT;
    }
    return r->ram[reg];
}

static void rtc_out(kp_vm *vm, uint16_t port, uint8_t v)
{
    struct kp_rtc *r = &vm->rtc;
    unsigned reg = r->index & 0x7f;
    int ignored;
    struct tm t = {0};
    if (port == RTC_INDEX)
        r->index = v; /* bit 7 (NMI disable) is kept and ignored */
    else if (reg == RTC_REG_B)
        r->ram[reg] = (v & RTC_B_DM_BINARY) | RTC_B_24H; /* no 12-hour mode, no interrupts */
    else if (!rtc_clock(reg, &t, &ignored))
        r->ram[reg] = v;
}

/* One port access of `size` bytes; returns 0, KP_EXIT_POWEROFF or KP_EXIT_RESET. */
static int pio_one(kp_vm *vm, int out, uint16_t port, uint8_t *data, unsigned size, struct kp_vcpu_stats *st,
                   int *irq)
{
    if (port >= COM1 && port < COM1 + 8) {
        if (out)
            uart_out(vm, port - COM1, data[0], st, irq);
        else
            memset(data, uart_in(vm, port - COM1), size);
        return 0;
    }
    if (port == RTC_INDEX || port == RTC_DATA) {
        if (out)
            rtc_out(vm, port, data[0]);
        else
            memset(data, port == RTC_DATA ? rtc_in(vm) : 0xff, size);
        return 0;
    }
    switch (port) {
    case KP_NULL_PORT:
        if (!out)
            memset(data, 0, size);
        return 0;
    case KP_POWEROFF_PORT:
        if (out)
            return KP_EXIT_POWEROFF;
        memset(data, 0, size);
        return 0;
    case 0x64:
        if (out && data[0] == 0xfe)
            return KP_EXIT_RESET;
        /* Status: output buffer full, input buffer empty (never busy, so a reboot's kb_wait ends at once). Linux's
         * i8042_flush() then gives up after 16 reads, "No controller found", instead of timing out a CTR read over
         * 10,000 polls (0.5 s of udelay on hardware, much longer where each poll is a costly exit). */
        if (!out) {
            memset(data, 0, size);
            data[0] = 0x01;
        }
        return 0;
    case 0x60:
        if (!out)
            memset(data, 0, size);
        return 0;
    }
    st->unhandled_pio++;
    if (!out)
        memset(data, 0xff, size);
    return 0;
}

int kp_handle_pio(kp_vm *vm, struct kvm_run *run, struct kp_vcpu_stats *st)
{
    uint8_t *data = (uint8_t *)run + run->io.data_offset;
    int out = run->io.direction == 1, irq = 0, r = 0;
    pthread_mutex_lock(&vm->lock);
    for (uint32_t i = 0; i < run->io.count && r == 0; i++, data += run->io.size)
        r = pio_one(vm, out, run->io.port, data, run->io.size, st, &irq);
    if (r)
        uart_flush_locked(vm);
    pthread_mutex_unlock(&vm->lock);
    if (irq)
        uart_pulse_irq(vm);
    return r;
}

int kp_run(kp_vm *vm, int vcpu_fd, struct kvm_run *run, struct kp_vcpu_stats *st)
{
    for (;;) {
        int r = ioctl(vcpu_fd, vm->req_kvm_run, 0);
        st->exits++;
        if (r < 0) {
            int e = errno;
            if (e == EINTR) {
                st->by_reason[EXIT_INTR]++;
                return KP_EXIT_EINTR;
            }
            /* EAGAIN: an AP that sat in wait-for-SIPI was woken (INIT/SIPI); hardware KVM returns to userspace
             * once and expects KVM_RUN again, as QEMU does (X86_LAB.md); kvm_pvm too (tests/kvm/test_sipi.py). */
            if (e == EAGAIN)
                continue;
            return -e;
        }
        uint32_t reason = run->exit_reason;
        st->by_reason[reason < 64 ? reason : 63]++;
        if (reason == EXIT_IO) {
            int h = kp_handle_pio(vm, run, st);
            if (h)
                return h;
            continue;
        }
        if (reason == EXIT_MMIO) {
            /* nothing is mapped there: reads see all ones, writes vanish */
            st->unhandled_mmio++;
            if (!run->mmio.is_write)
                memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
            continue;
        }
        return KP_EXIT_SLOW;
    }
}
