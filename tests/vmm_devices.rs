//! KVM tier: mini-guests that find the PCI host bridge through CF8/CFC and ECAM, take an
//! MSI-X interrupt in an IDT handler, and hit an exit the VMM cannot handle.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::Need;
use vmm::boot::layout;
use vmm::testing::asm::*;
use vmm::testing::{self, MsiTestDevice, poweroff, print};
use vmm::{Error, ExitReason, SerialSink, SharedBuffer, Vm, VmConfig};

const TIMEOUT: Duration = Duration::from_secs(30);

fn build(kernel: &std::path::Path) -> (Vm, SharedBuffer) {
    let serial = SharedBuffer::new();
    let mut config = VmConfig::new(kernel);
    config.serial = SerialSink::Buffer(serial.clone());
    (Vm::new(config).expect("build vm"), serial)
}

fn add_msi_device(vm: &Vm) {
    let device = MsiTestDevice::new(2, vm.irq_routing()).expect("msi test device");
    let addr = vm
        .pci_bus()
        .lock()
        .expect("pci bus")
        .add_device(Arc::new(Mutex::new(device)))
        .expect("add device");
    assert_eq!(addr.to_string(), "0000:00:01.0");
}

#[test]
fn guest_enumerates_pci_through_cf8_cfc_and_ecam() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "pci.elf", |a| {
        let hex = testing::begin_with_hex32(a)?;
        for dev in 0u32..3 {
            for reg in [0u32, 8] {
                print(a, &format!("CF8 {dev:02x}:{reg:02x} "))?;
                a.mov(eax, 0x8000_0000u32 | (dev << 11) | reg)?;
                a.mov(dx, layout::PCI_CONFIG_ADDRESS_PORT as u32)?;
                a.out(dx, eax)?;
                a.mov(dx, layout::PCI_CONFIG_ADDRESS_PORT as u32 + 4)?;
                a.in_(eax, dx)?;
                a.call(hex)?;
                print(a, "\n")?;
            }
        }
        a.mov(rdi, layout::PCI_ECAM_START)?;
        for dev in 0u32..3 {
            for reg in [0u32, 8] {
                print(a, &format!("ECAM {dev:02x}:{reg:02x} "))?;
                a.mov(eax, dword_ptr(rdi + ((dev << 15) | reg)))?;
                a.call(hex)?;
                print(a, "\n")?;
            }
        }
        poweroff(a)
    })
    .expect("assemble");
    let (vm, serial) = build(&kernel);
    add_msi_device(&vm);
    let reason = vm.run_with_timeout(Some(TIMEOUT)).expect("run");
    assert_eq!(reason, ExitReason::Poweroff, "serial: {}", serial.text());
    let (vendor, device) = MsiTestDevice::IDS;
    let expected_for = |mech: &str| {
        format!(
            "{mech} 00:00 00081b36\n{mech} 00:08 06000000\n\
             {mech} 01:00 {device:04x}{vendor:04x}\n{mech} 01:08 ff000000\n\
             {mech} 02:00 ffffffff\n{mech} 02:08 ffffffff\n"
        )
    };
    assert_eq!(serial.text(), expected_for("CF8") + &expected_for("ECAM"));
}

#[test]
fn msix_vector_reaches_the_guest_idt_handler() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    const VECTOR: u32 = 0x41;
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "msi.elf", |a| {
        let mut handler = a.create_label();
        let mut bar64 = a.create_label();
        let mut main = a.create_label();
        a.jmp(main)?;
        testing::bar64_subroutine(a, &mut bar64)?;
        a.set_label(&mut main)?;
        // Only the local APIC may interrupt, VECTOR goes to the handler.
        testing::install_interrupt_handler(a, VECTOR, handler)?;
        // Device 00:01.0 through ECAM: BAR0 (64-bit) into r15.
        a.mov(rbx, layout::PCI_ECAM_START + (1 << 15))?;
        a.xor(ecx, ecx)?;
        a.call(bar64)?;
        a.mov(r15, rdx)?;
        // MSI-X table entry 0: fixed delivery of VECTOR to APIC 0, unmasked.
        a.mov(dword_ptr(r15), 0xfee0_0000u32 as i32)?;
        a.mov(dword_ptr(r15 + 4), 0)?;
        a.mov(dword_ptr(r15 + 8), VECTOR)?;
        a.mov(dword_ptr(r15 + 12), 0)?;
        // Enable MSI-X in the capability the capability pointer leads to.
        a.movzx(ecx, byte_ptr(rbx + 0x34))?;
        a.mov(word_ptr(rbx + rcx + 2), 0x8000)?;
        print(a, "ringing\n")?;
        a.sti()?;
        a.mov(dword_ptr(r15 + MsiTestDevice::DOORBELL), 0)?;
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.hlt()?;
        a.jmp(wait)?;
        // The handler: report, EOI, power off.
        a.set_label(&mut handler)?;
        print(a, "MSI-X vector 0x41 handled\n")?;
        testing::lapic_eoi(a)?;
        poweroff(a)
    })
    .expect("assemble");
    let (vm, serial) = build(&kernel);
    add_msi_device(&vm);
    let reason = vm.run_with_timeout(Some(TIMEOUT)).expect("run");
    assert_eq!(serial.text(), "ringing\nMSI-X vector 0x41 handled\n");
    assert_eq!(reason, ExitReason::Poweroff);
}

#[test]
fn unhandled_guest_exit_ends_the_vm_with_exit_and_rip() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // `int3` with an empty IDT. Under PVM the emulator cannot run it
    // (KVM_EXIT_INTERNAL_ERROR); with hardware virtualization it escalates to a triple
    // fault (KVM_EXIT_SHUTDOWN), which the VMM treats as a reset.
    let prefix = testing::assemble(|a| print(a, "trap\n")).expect("assemble");
    let int3_rip = testing::GUEST_CODE_START + prefix.len() as u64;
    let kernel = testing::write_guest(dir.path(), "int3.elf", |a| {
        print(a, "trap\n")?;
        a.int3()?;
        poweroff(a)
    })
    .expect("assemble");
    let (vm, serial) = build(&kernel);
    match vm.run_with_timeout(Some(TIMEOUT)) {
        Err(Error::Vcpu(vmm::kvm::VcpuError::UnhandledExit { vcpu, exit, rip })) => {
            assert_eq!(vcpu, 0);
            assert_eq!(rip, int3_rip, "exit {exit}");
            assert!(exit.contains("KVM_EXIT_INTERNAL_ERROR"), "{exit}");
            let message =
                Error::Vcpu(vmm::kvm::VcpuError::UnhandledExit { vcpu, exit, rip }).to_string();
            assert!(
                message.contains(&format!("at rip {int3_rip:#x}")),
                "{message}"
            );
        }
        Ok(ExitReason::Reset) => eprintln!("int3 escalated to a triple fault (hardware KVM)"),
        other => panic!("expected an unhandled exit, got {other:?}"),
    }
    assert_eq!(serial.text(), "trap\n");
}

#[test]
fn bar_ioeventfd_counts_guest_notifies_without_exits() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    // Write the notify value 5 times and a non-matching value once, then power off.
    let kernel = testing::write_guest(dir.path(), "notify.elf", |a| {
        let mut bar64 = a.create_label();
        let mut main = a.create_label();
        a.jmp(main)?;
        testing::bar64_subroutine(a, &mut bar64)?;
        a.set_label(&mut main)?;
        a.mov(rbx, layout::PCI_ECAM_START + (1 << 15))?;
        a.xor(ecx, ecx)?;
        a.call(bar64)?;
        a.mov(r15, rdx)?;
        a.mov(ecx, 5)?;
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.mov(
            dword_ptr(r15 + MsiTestDevice::NOTIFY),
            MsiTestDevice::NOTIFY_VALUE,
        )?;
        a.dec(ecx)?;
        a.jnz(again)?;
        a.mov(
            dword_ptr(r15 + MsiTestDevice::NOTIFY),
            MsiTestDevice::NOTIFY_VALUE + 1,
        )?;
        print(a, "notified\n")?;
        poweroff(a)
    })
    .expect("assemble");
    let (vm, serial) = build(&kernel);
    let device = MsiTestDevice::new(1, vm.irq_routing()).expect("device");
    let notify = device.notify_fd().expect("notify fd");
    vm.pci_bus()
        .lock()
        .expect("pci bus")
        .add_device(Arc::new(Mutex::new(device)))
        .expect("add");
    let reason = vm.run_with_timeout(Some(TIMEOUT)).expect("run");
    assert_eq!(reason, ExitReason::Poweroff, "serial: {}", serial.text());
    assert_eq!(serial.text(), "notified\n");
    assert_eq!(notify.read().expect("eventfd signalled"), 5);
}

/// A string input (`rep insd`, `rep insb`) comes to the VMM as several elements in one
/// exit: each must be its own read, as on hardware. Read as one wide access, the PCI
/// config data port gave register 0 then register 4, and the UART dropped the input.
#[test]
fn string_port_input_reads_each_element_on_its_own() {
    if !testkit::require(&[Need::Kvm]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = testing::write_guest(dir.path(), "rep.elf", |a| {
        let hex = testing::begin_with_hex32(a)?;
        // Two dwords of 00:00.0 register 0, by `rep insd` from the config data port.
        a.mov(eax, 0x8000_0000u32)?;
        a.mov(dx, layout::PCI_CONFIG_ADDRESS_PORT as u32)?;
        a.out(dx, eax)?;
        a.mov(dx, layout::PCI_CONFIG_ADDRESS_PORT as u32 + 4)?;
        a.mov(rdi, testing::GUEST_SCRATCH)?;
        a.mov(ecx, 2u32)?;
        a.rep().insd()?;
        print(a, "CFC ")?;
        a.mov(rdi, testing::GUEST_SCRATCH)?;
        a.mov(eax, dword_ptr(rdi))?;
        a.call(hex)?;
        print(a, " ")?;
        a.mov(eax, dword_ptr(rdi + 4))?;
        a.call(hex)?;
        // Two bytes of the serial input, by `rep insb` from the receive buffer.
        a.mov(dx, layout::SERIAL_PORT as u32)?;
        a.mov(rdi, testing::GUEST_SCRATCH + 0x100)?;
        a.mov(ecx, 2u32)?;
        a.rep().insb()?;
        print(a, "\nRBR ")?;
        a.mov(rdi, testing::GUEST_SCRATCH + 0x100)?;
        a.movzx(eax, word_ptr(rdi))?;
        a.call(hex)?;
        print(a, "\n")?;
        poweroff(a)
    })
    .expect("assemble");
    let (vm, serial) = build(&kernel);
    assert_eq!(vm.serial_input().send(b"AB"), 2);
    let reason = vm.run_with_timeout(Some(TIMEOUT)).expect("run");
    assert_eq!(reason, ExitReason::Poweroff, "{}", serial.text());
    // The host bridge's ID dword twice; 'A' then 'B'.
    assert_eq!(serial.text(), "CFC 00081b36 00081b36\nRBR 00004241\n");
}
