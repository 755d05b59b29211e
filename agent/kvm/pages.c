/* Guest memory and device state in bulk, for snapshots and live migration: no per-page work is left to Python.
 *
 * Packed pages: a sequence of records, each covering 64 pages from a multiple of 64:
 *   u64 first_page, u64 sent_mask (bit i: page first_page+i is in this record), u64 data_mask (bit i: its 4 KiB follow;
 *   a sent page without data is all zeros), then the data pages in order.
 * Zero pages cost no data; a page that was never dirty is not sent at all.
 */

#define KP_PAGE 4096
#define KP_REC_HDR 24

static int page_is_zero(const uint8_t *p)
{
    const uint64_t *w = (const uint64_t *)p;
    uint64_t acc = 0;
    for (int i = 0; i < KP_PAGE / 8; i++)
        acc |= w[i];
    return acc == 0;
}

/* Packs from page *next on (a multiple of 64) the pages whose bit is set in `dirty` (NULL: all) into `out`, until
 * the next record might not fit `cap` (at least KP_REC_HDR + 64 pages). Returns the bytes written, sets *next to
 * where to go on (npages when done) and adds the pages sent and the zero pages among them to counts[0], counts[1]. */
size_t kp_pack_pages(const uint8_t *mem, uint64_t npages, const uint64_t *dirty, uint64_t *next, uint8_t *out,
                     size_t cap, uint64_t *counts)
{
    size_t pos = 0;
    uint64_t first = *next;
    for (; first < npages; first += 64) {
        uint64_t sent = dirty ? dirty[first / 64] : ~0ULL;
        uint64_t left = npages - first;
        if (left < 64)
            sent &= (1ULL << left) - 1;
        if (!sent)
            continue;
        if (pos + KP_REC_HDR + (size_t)__builtin_popcountll(sent) * KP_PAGE > cap)
            break;
        uint64_t data = 0;
        uint8_t *hdr = out + pos;
        pos += KP_REC_HDR;
        for (int i = 0; i < 64; i++) {
            if (!(sent >> i & 1))
                continue;
            const uint8_t *page = mem + (first + (uint64_t)i) * KP_PAGE;
            if (page_is_zero(page)) {
                counts[1]++;
                continue;
            }
            data |= 1ULL << i;
            memcpy(out + pos, page, KP_PAGE);
            pos += KP_PAGE;
        }
        counts[0] += (uint64_t)__builtin_popcountll(sent);
        memcpy(hdr, &first, 8);
        memcpy(hdr + 8, &sent, 8);
        memcpy(hdr + 16, &data, 8);
    }
    *next = first < npages ? first : npages;
    return pos;
}

/* Writes packed records into `mem` (npages pages). Returns the pages written, or -1 if the records are malformed
 * (nothing beyond the bad record is written). */
int64_t kp_unpack_pages(uint8_t *mem, uint64_t npages, const uint8_t *in, size_t len)
{
    size_t pos = 0;
    int64_t written = 0;
    while (pos < len) {
        uint64_t first, sent, data;
        if (len - pos < KP_REC_HDR)
            return -1;
        memcpy(&first, in + pos, 8);
        memcpy(&sent, in + pos + 8, 8);
        memcpy(&data, in + pos + 16, 8);
        pos += KP_REC_HDR;
        if (first % 64 || first >= npages || (data & ~sent))
            return -1;
        if (npages - first < 64 && (sent >> (npages - first)))
            return -1;
        if ((size_t)__builtin_popcountll(data) * KP_PAGE > len - pos)
            return -1;
        for (int i = 0; i < 64; i++) {
            if (!(sent >> i & 1))
                continue;
            uint8_t *page = mem + (first + (uint64_t)i) * KP_PAGE;
            if (data >> i & 1) {
                memcpy(page, in + pos, KP_PAGE);
                pos += KP_PAGE;
            } else {
                memset(page, 0, KP_PAGE);
            }
            written++;
        }
    }
    return written;
}

/* The number of bits set in a bitmap of `words` 64-bit words. */
uint64_t kp_count_bits(const uint64_t *bitmap, size_t words)
{
    uint64_t n = 0;
    for (size_t i = 0; i < words; i++)
        n += (uint64_t)__builtin_popcountll(bitmap[i]);
    return n;
}

/* OR of two bitmaps into the first. */
void kp_or_bits(uint64_t *into, const uint64_t *from, size_t words)
{
    for (size_t i = 0; i < words; i++)
        into[i] |= from[i];
}

/* kvmplat's own devices (the UART and what the console owes) as one flat struct, for snapshots and migration. */
int kp_vm_save_devices(kp_vm *vm, struct kp_dev_state *out)
{
    struct kp_uart *u = &vm->uart;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&vm->lock);
    out->version = KP_DEV_STATE_VERSION;
    out->ier = u->ier, out->lcr = u->lcr, out->mcr = u->mcr, out->scr = u->scr;
    out->dll = u->dll, out->dlm = u->dlm, out->fcr = u->fcr, out->thri_pending = (uint8_t)u->thri_pending;
    out->line_len = (uint32_t)u->line_len;
    memcpy(out->line, u->line, u->line_len);
    out->rx_len = (uint32_t)u->rx_len;
    for (size_t i = 0; i < u->rx_len; i++)
        out->rx[i] = u->rx[(u->rx_head + i) % UART_RX_MAX];
    out->first_console_ns = vm->first_console_ns;
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

/* Loads a saved device state; -1 (nothing changed) when it is not one this build wrote. */
int kp_vm_load_devices(kp_vm *vm, const struct kp_dev_state *in)
{
    struct kp_uart *u = &vm->uart;
    if (in->version != KP_DEV_STATE_VERSION || in->line_len > UART_LINE_MAX || in->rx_len > UART_RX_MAX)
        return -1;
    pthread_mutex_lock(&vm->lock);
    u->ier = in->ier, u->lcr = in->lcr, u->mcr = in->mcr, u->scr = in->scr;
    u->dll = in->dll, u->dlm = in->dlm, u->fcr = in->fcr, u->thri_pending = in->thri_pending;
    u->line_len = in->line_len;
    memcpy(u->line, in->line, in->line_len);
    u->rx_head = 0;
    u->rx_len = in->rx_len;
    memcpy(u->rx, in->rx, in->rx_len);
    vm->first_console_ns = in->first_console_ns;
    pthread_mutex_unlock(&vm->lock);
    return 0;
}
