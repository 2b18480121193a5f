//! The mini-guest virtio-net driver shared by the KVM and e2e tiers: guest RAM layout,
//! rings, and the assembly that finds the device, sets up its queues, posts RX buffers and
//! sends a frame. Each test writes its own interrupt handler around these.
#![allow(dead_code)]

use vmm::testing::asm::*;
use vmm::testing::{
    self, QueueRings, hex_subroutine, hex32_subroutine, poweroff, print, virtio_regs,
};

pub const VECTOR: u32 = 0x41;
pub const QUEUE_SIZE: u32 = 8;

// Guest RAM layout (all in the zeroed scratch area).
pub const RX_DESC: u64 = 0x21_0000;
pub const RX_AVAIL: u64 = 0x21_1000;
pub const RX_USED: u64 = 0x21_2000;
pub const TX_DESC: u64 = 0x22_0000;
pub const TX_AVAIL: u64 = 0x22_1000;
pub const TX_USED: u64 = 0x22_2000;
pub const RX_BUF: u64 = 0x23_0000;
pub const RX_BUF_LEN: u32 = 2048;
pub const TX_BUF: u64 = 0x24_0000;
pub const VNET_HDR_LEN: usize = 12;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub const RX_RINGS: QueueRings = QueueRings {
    desc: RX_DESC,
    avail: RX_AVAIL,
    used: RX_USED,
};
pub const TX_RINGS: QueueRings = QueueRings {
    desc: TX_DESC,
    avail: TX_AVAIL,
    used: TX_USED,
};
/// VERSION_1 (bit 32) and MAC (bit 5).
pub const FEATURES: u64 = (1 << 32) | (1 << 5);
/// `VRING_AVAIL_F_NO_INTERRUPT`.
pub const AVAIL_NO_INTERRUPT: u32 = 1;

/// Posts `count` device-writable RX buffers of [`RX_BUF_LEN`] (descriptor n at
/// `RX_BUF + n * 0x1000`). Clobbers rax, rdi.
pub fn post_rx_buffers(a: &mut CodeAssembler, count: u32) -> Result<(), IcedError> {
    for n in 0..count {
        a.mov(rdi, RX_DESC + u64::from(n) * 16)?;
        a.mov(rax, RX_BUF + u64::from(n) * 0x1000)?;
        a.mov(qword_ptr(rdi), rax)?;
        a.mov(dword_ptr(rdi + 8), RX_BUF_LEN)?;
        a.mov(word_ptr(rdi + 12), 2)?; // VIRTQ_DESC_F_WRITE
        a.mov(rdi, RX_AVAIL + 4 + u64::from(n) * 2)?;
        a.mov(word_ptr(rdi), n)?;
    }
    a.mov(rdi, RX_AVAIL)?;
    a.mov(word_ptr(rdi + 2), count)?;
    Ok(())
}

/// Writes `frame` after a zeroed virtio-net header into TX descriptor 0, with the source
/// MAC (bytes 6..12) read from the device configuration. Clobbers rax, rdi.
pub fn prepare_tx_frame(a: &mut CodeAssembler, frame: &[u8]) -> Result<(), IcedError> {
    a.mov(rdi, TX_BUF + VNET_HDR_LEN as u64)?;
    write_words(a, frame)?;
    a.mov(eax, dword_ptr(virtio_regs::DEVICE_CFG))?;
    a.mov(dword_ptr(rdi + 6), eax)?;
    a.mov(ax, word_ptr(virtio_regs::DEVICE_CFG + 4))?;
    a.mov(word_ptr(rdi + 10), ax)?;
    a.mov(rdi, TX_DESC)?;
    a.mov(rax, TX_BUF)?;
    a.mov(qword_ptr(rdi), rax)?;
    a.mov(dword_ptr(rdi + 8), (VNET_HDR_LEN + frame.len()) as u32)?;
    a.mov(word_ptr(rdi + 12), 0)?;
    Ok(())
}

/// Stores `bytes` at rdi, four at a time (the last group zero-padded).
fn write_words(a: &mut CodeAssembler, bytes: &[u8]) -> Result<(), IcedError> {
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        a.mov(dword_ptr(rdi + (i * 4) as i32), u32::from_le_bytes(word))?;
    }
    Ok(())
}

/// Rewrites the frame in TX descriptor 0 from `old` to `new` (same length), storing only
/// the words that differ (the header and the MACs stay). Clobbers rdi.
pub fn rewrite_tx_frame(a: &mut CodeAssembler, old: &[u8], new: &[u8]) -> Result<(), IcedError> {
    a.mov(rdi, TX_BUF + VNET_HDR_LEN as u64)?;
    for (i, (old, new)) in old.chunks(4).zip(new.chunks(4)).enumerate() {
        if old != new {
            let mut word = [0u8; 4];
            word[..new.len()].copy_from_slice(new);
            a.mov(dword_ptr(rdi + (i * 4) as i32), u32::from_le_bytes(word))?;
        }
    }
    Ok(())
}

/// Offers TX descriptor 0 as the `nth` (1-based) available entry and kicks the TX queue
/// (notify address in rbp). Clobbers rdi.
pub fn send_tx_frame(a: &mut CodeAssembler, nth: u32) -> Result<(), IcedError> {
    a.mov(rdi, TX_AVAIL)?;
    a.mov(
        word_ptr(rdi + 4 + (nth as i32 - 1) % QUEUE_SIZE as i32 * 2),
        0,
    )?;
    a.mov(word_ptr(rdi + 2), nth)?;
    a.mov(word_ptr(rbp), 1)?;
    Ok(())
}

/// Common prologue: handler for [`VECTOR`], the device found and negotiated, RX queue 0
/// (notify in r8) on `rx_vector` and TX queue 1 (notify in rbp) without a vector.
pub fn driver_prologue(
    a: &mut CodeAssembler,
    handler: CodeLabel,
    rx_vector: u32,
) -> Result<(), IcedError> {
    testing::install_interrupt_handler(a, VECTOR, handler)?;
    testing::virtio_pci_find(a, 0x1af4, 0x1041)?;
    testing::virtio_negotiate(a, FEATURES)?;
    testing::virtio_setup_queue(a, 0, QUEUE_SIZE, rx_vector, RX_RINGS, r8)?;
    testing::virtio_setup_queue(a, 1, QUEUE_SIZE, 0xffff, TX_RINGS, rbp)?;
    Ok(())
}

/// `hlt` until an interrupt, forever (the handlers end the guest).
pub fn wait_for_interrupts(a: &mut CodeAssembler) -> Result<CodeLabel, IcedError> {
    let mut wait = a.create_label();
    a.set_label(&mut wait)?;
    a.sti()?;
    a.hlt()?;
    a.jmp(wait)?;
    Ok(wait)
}

/// Points MSI-X table entry `entry` at [`VECTOR`] on APIC 0, unmasked, and enables MSI-X.
pub fn enable_msix(a: &mut CodeAssembler, entry: i32) -> Result<(), IcedError> {
    let table = virtio_regs::MSIX_TABLE + entry * 16;
    a.mov(dword_ptr(table), 0xfee0_0000u32 as i32)?;
    a.mov(dword_ptr(table + 4), 0)?;
    a.mov(dword_ptr(table + 8), VECTOR)?;
    a.mov(dword_ptr(table + 12), 0)?;
    a.mov(
        word_ptr(virtio_regs::ECAM + virtio_regs::MSIX_CAP + 2),
        0x8000,
    )?;
    Ok(())
}

/// The MSI-X driver's main line: the device set up with RX on MSI-X entry 1 -> [`VECTOR`]
/// (handled at `handler`), one RX buffer posted, "kick" printed and `frame` sent; then
/// `hlt` until interrupts. Returns the label of that wait loop.
pub fn msix_send(
    a: &mut CodeAssembler,
    handler: CodeLabel,
    frame: &[u8],
) -> Result<CodeLabel, IcedError> {
    driver_prologue(a, handler, 1)?;
    enable_msix(a, 1)?;
    post_rx_buffers(a, 1)?;
    prepare_tx_frame(a, frame)?;
    testing::virtio_driver_ok(a)?;
    print(a, "kick\n")?;
    a.mov(word_ptr(r8), 0)?;
    send_tx_frame(a, 1)?;
    wait_for_interrupts(a)
}

/// Prints the first `ecx` bytes (at most [`RX_BUF_LEN`]) of RX buffer 0 in hex and a
/// newline (`hex8` prints `al`: [`hex_subroutine`] with 2 digits), EOIs and powers off.
pub fn print_rx_buffer_and_power_off(
    a: &mut CodeAssembler,
    hex8: CodeLabel,
) -> Result<(), IcedError> {
    let (mut clamped, mut byte, mut done) = (a.create_label(), a.create_label(), a.create_label());
    a.cmp(ecx, RX_BUF_LEN)?;
    a.jbe(clamped)?;
    a.mov(ecx, RX_BUF_LEN)?;
    a.set_label(&mut clamped)?;
    a.mov(rsi, RX_BUF)?;
    a.set_label(&mut byte)?;
    a.test(ecx, ecx)?;
    a.jz(done)?;
    a.mov(al, byte_ptr(rsi))?;
    a.call(hex8)?;
    a.inc(rsi)?;
    a.dec(ecx)?;
    a.jmp(byte)?;
    a.set_label(&mut done)?;
    print(a, "\n")?;
    testing::lapic_eoi(a)?;
    poweroff(a)
}

/// Emits the subroutines that print `eax` (8 hex digits) and `al` (2), jumped over, and
/// returns their labels for `call`.
pub fn hex_printers(a: &mut CodeAssembler) -> Result<(CodeLabel, CodeLabel), IcedError> {
    let (mut hex32, mut hex8, mut after) = (a.create_label(), a.create_label(), a.create_label());
    a.jmp(after)?;
    hex32_subroutine(a, &mut hex32)?;
    hex_subroutine(a, &mut hex8, 2)?;
    a.set_label(&mut after)?;
    Ok((hex32, hex8))
}
