//! The guest CPU model: KVM_GET_SUPPORTED_CPUID normalised per vCPU, and the boot MSRs.
//!
//! On hosts with hardware virtualization the table is what the guest's `cpuid` returns.
//! (On the PVM development host most leaves come from the host CPU instead; tests check
//! the table we build, never what such a guest sees.)

use kvm_bindings::{kvm_cpuid_entry2, kvm_msr_entry};

/// Leaf 1 ECX: the guest runs under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: TSC-deadline timer mode of the LAPIC (KVM emulates it).
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: Hyper-threading / multiple logical processors per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX: perfmon and debug capability MSR, which KVM does not emulate fully.
const LEAF1_ECX_PDCM: u32 = 1 << 15;
/// Leaf 1 EBX[15:8]: CLFLUSH line size in 8-byte units.
const CLFLUSH_LINE_SIZE: u32 = 8;

/// Leaf 0xB level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Leaf 0 vendor strings (EBX, EDX, ECX) whose topology leaves are AMD's.
const AMD_VENDORS: [&[u8; 12]; 2] = [b"AuthenticAMD", b"HygonGenuine"];

/// Normalises `entries` (from KVM_GET_SUPPORTED_CPUID) for vCPU `vcpu_id` of `vcpu_count`.
///
/// Topology: one socket, one thread per core, `vcpu_count` cores; APIC id = vCPU index.
/// Every leaf that describes it says so, leaf 0xB/0x1F levels KVM left out included,
/// and on AMD hosts the extended leaves too (KVM zeroes 0x8000001E rather than give
/// the host's topology; Linux reads the extended APIC ID there when TOPOEXT is set).
/// The cache leaves (4, and AMD's 0x8000001D) say a core's own caches are its own and
/// the last level is every vCPU's.
pub fn normalize(entries: &mut Vec<kvm_cpuid_entry2>, vcpu_id: u32, vcpu_count: u32) {
    add_missing_core_levels(entries);
    let apic_id = vcpu_id & 0xff;
    // Cores per package as a power-of-two shift for leaf 0xB.
    let core_shift = 32 - vcpu_count.max(1).saturating_sub(1).leading_zeros();
    let amd = is_amd(entries);
    for entry in entries.iter_mut() {
        match entry.function {
            1 => {
                entry.ebx = (apic_id << 24)
                    | ((vcpu_count.clamp(1, 255)) << 16)
                    | (CLFLUSH_LINE_SIZE << 8)
                    | (entry.ebx & 0xff);
                entry.ecx |= LEAF1_ECX_HYPERVISOR | LEAF1_ECX_TSC_DEADLINE;
                entry.ecx &= !LEAF1_ECX_PDCM;
                if vcpu_count > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            // Linux prefers 0x1F where it exists (recent Intel hosts): left with the
            // host's shifts, it would make vCPUs hyperthread siblings, against leaf 0xB
            // and the MADT.
            0xb | 0x1f => {
                entry.edx = vcpu_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = core_shift;
                        entry.ebx = vcpu_count;
                        entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            4 => {
                // Deterministic cache parameters: cores per package, and how many
                // threads share this cache (a core's own caches: one; the last level:
                // every vCPU), instead of the host's counts.
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { vcpu_count.max(1) - 1 } else { 0 };
                let cores = vcpu_count.clamp(1, 64) - 1;
                entry.eax = (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (cores << 26);
            }
            // Cores per package (NC) and the APIC ID bits that number them
            // (ApicIdCoreIdSize); reserved on Intel.
            0x8000_0008 if amd => {
                let cores = vcpu_count.clamp(1, 256) - 1;
                entry.ecx = (entry.ecx & !0xf0ff) | (core_shift.min(0xf) << 12) | cores;
            }
            // AMD's cache topology, as leaf 4's: how many vCPUs share each cache (a
            // core's own: one; the last level: all), not the host's count, which
            // split the guest's vCPUs into last-level-cache groups of the host's size.
            0x8000_001d if amd => {
                let level = (entry.eax >> 5) & 0x7;
                let sharing = if level >= 3 { vcpu_count.max(1) - 1 } else { 0 };
                entry.eax = (entry.eax & 0x3fff) | ((sharing & 0xfff) << 14);
            }
            // Extended APIC ID; compute unit (core) ID with one thread per unit; one
            // node, node 0.
            0x8000_001e if amd => {
                entry.eax = vcpu_id;
                entry.ebx = apic_id;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }
}

/// Whether leaf 0 names a vendor whose topology leaves are AMD's.
fn is_amd(entries: &[kvm_cpuid_entry2]) -> bool {
    entries
        .iter()
        .find(|entry| entry.function == 0)
        .is_some_and(|leaf0| {
            let mut vendor = [0u8; 12];
            vendor[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
            vendor[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
            vendor[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
            AMD_VENDORS.contains(&&vendor)
        })
}

/// Adds the Core level (subleaf 1) and the terminating subleaf 2 to leaves 0xB and
/// 0x1F where KVM gave only the SMT level: without a Core level, Linux takes every
/// vCPU for a package of its own, against leaf 1 and the MADT. [`normalize`] fills
/// them in.
fn add_missing_core_levels(entries: &mut Vec<kvm_cpuid_entry2>) {
    for function in [0xb, 0x1f] {
        let Some(smt) = entries
            .iter()
            .find(|entry| entry.function == function && entry.index == 0)
            .copied()
        else {
            continue;
        };
        for index in 1..=2 {
            if !entries
                .iter()
                .any(|entry| entry.function == function && entry.index == index)
            {
                entries.push(kvm_cpuid_entry2 {
                    index,
                    eax: 0,
                    ebx: 0,
                    ecx: 0,
                    edx: 0,
                    ..smt
                });
            }
        }
    }
}

/// MSR numbers the boot MSR list writes.
pub mod msr {
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// SYSCALL_MASK.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    /// IA32_TSC.
    pub const TSC: u32 = 0x10;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// AMD's hardware configuration register (MSR_K7_HWCR).
    pub const AMD_HWCR: u32 = 0xc001_0015;
}

/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default type write-back.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;
/// HWCR's TscFreqSel: the TSC counts at the P0 frequency, as on every AMD CPU since
/// family 10h. Left clear, Linux reports "[Firmware Bug]: TSC doesn't count with P0
/// frequency!" at boot.
const HWCR_TSC_FREQ_SEL: u64 = 1 << 24;

/// The MSRs every vCPU starts with (as Firecracker and Cloud Hypervisor set them); for
/// an AMD guest (`cpuid`'s vendor), HWCR last: KVM before 6.7 refuses its TscFreqSel
/// bit, and KVM_SET_MSRS stops at the first MSR it refuses.
pub fn boot_msrs(cpuid: &[kvm_cpuid_entry2]) -> Vec<kvm_msr_entry> {
    let amd = is_amd(cpuid).then_some((msr::AMD_HWCR, HWCR_TSC_FREQ_SEL));
    [
        (msr::SYSENTER_CS, 0),
        (msr::SYSENTER_ESP, 0),
        (msr::SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::CSTAR, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::LSTAR, 0),
        (msr::TSC, 0),
        (msr::MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (msr::MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .chain(amd)
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x00ff_00aa,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_hypervisor_bit_and_htt() {
        let mut table = vec![entry(1, 0)];
        normalize(&mut table, 3, 4);
        let e = table[0];
        assert_eq!(e.ebx >> 24, 3, "initial APIC id");
        assert_eq!((e.ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!((e.ebx >> 8) & 0xff, 8, "clflush");
        assert_eq!(e.ebx & 0xff, 0xaa, "brand index kept");
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(e.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);

        let mut single = vec![kvm_cpuid_entry2 {
            function: 1,
            edx: LEAF1_EDX_HTT,
            ..Default::default()
        }];
        normalize(&mut single, 0, 1);
        assert_eq!(single[0].edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn leaf_b_describes_cores() {
        let mut table = vec![entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        normalize(&mut table, 2, 3);
        assert_eq!(
            (table[0].eax, table[0].ebx, table[0].ecx, table[0].edx),
            (0, 1, 0x100, 2)
        );
        assert_eq!(
            (table[1].eax, table[1].ebx, table[1].ecx, table[1].edx),
            (2, 3, 0x201, 2)
        );
        assert_eq!((table[2].ebx, table[2].ecx >> 8), (0, 0));
    }

    #[test]
    fn leaf_1f_matches_leaf_b_and_caches_are_ours() {
        let host_like = |function, index, eax| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx: 0xdead,
            ecx: 0xbeef,
            ..Default::default()
        };
        let mut table = vec![
            host_like(0x1f, 0, 1),
            host_like(0x1f, 1, 7),
            host_like(0x1f, 2, 9),
            // L1 data cache (type 1, level 1) and L3 (type 3, level 3), with the host's
            // sharing and core counts in their high bits.
            host_like(4, 0, (0x3f << 26) | (1 << 14) | (1 << 5) | 1),
            host_like(4, 3, (0x3f << 26) | (0x7f << 14) | (3 << 5) | 3),
        ];
        normalize(&mut table, 1, 2);
        assert_eq!(
            (table[0].eax, table[0].ebx, table[0].ecx, table[0].edx),
            (0, 1, 0x100, 1)
        );
        assert_eq!(
            (table[1].eax, table[1].ebx, table[1].ecx, table[1].edx),
            (1, 2, 0x201, 1)
        );
        assert_eq!((table[2].ebx, table[2].ecx >> 8), (0, 0));
        assert_eq!(table[3].eax, (1 << 26) | (1 << 5) | 1);
        assert_eq!(table[4].eax, (1 << 26) | (1 << 14) | (3 << 5) | 3);
    }

    /// An AMD host's KVM gives only leaf 0xB's SMT level (seen on this project's EPYC
    /// development host): the Core level and the terminator are added.
    #[test]
    fn a_leaf_b_without_its_core_level_gets_one() {
        let smt_only = kvm_cpuid_entry2 {
            function: 0xb,
            index: 0,
            flags: 1,
            ecx: 0x100,
            ..Default::default()
        };
        let mut table = vec![entry(1, 0), smt_only];
        normalize(&mut table, 1, 3);
        let level = |index| {
            let e = table
                .iter()
                .find(|e| e.function == 0xb && e.index == index)
                .copied()
                .expect("subleaf present");
            (e.eax, e.ebx, e.ecx, e.edx, e.flags)
        };
        assert_eq!(level(0), (0, 1, 0x100, 1, 1));
        assert_eq!(level(1), (2, 3, 0x201, 1, 1));
        assert_eq!(level(2), (0, 0, 2, 1, 1));
        assert_eq!(table.len(), 4);
    }

    fn vendor(name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word =
            |at: usize| u32::from_le_bytes([name[at], name[at + 1], name[at + 2], name[at + 3]]);
        kvm_cpuid_entry2 {
            function: 0,
            eax: 0x10,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..Default::default()
        }
    }

    #[test]
    fn amd_extended_topology_leaves_follow_the_vcpus() {
        let host_like = |function| kvm_cpuid_entry2 {
            function,
            // 0x80000008: the host's 128 cores (ApicIdCoreIdSize 7, NC 127) and
            // PerfTscSize kept; 0x8000001E: whatever KVM left.
            ecx: (1 << 16) | (7 << 12) | 127,
            eax: 0x3030,
            ..Default::default()
        };
        let mut table = vec![
            vendor(b"AuthenticAMD"),
            host_like(0x8000_0008),
            host_like(0x8000_001e),
        ];
        normalize(&mut table, 2, 3);
        assert_eq!(table[1].ecx, (1 << 16) | (2 << 12) | 2);
        assert_eq!(table[1].eax, 0x3030, "address sizes kept");
        assert_eq!(
            (table[2].eax, table[2].ebx, table[2].ecx, table[2].edx),
            (2, 2, 0, 0)
        );

        // AMD's cache leaf: the L1 data cache a core's own, the L3 every vCPU's, where
        // the host said two threads share L1 and 16 share L3.
        let cache = |index: u32, level: u32, sharing: u32| kvm_cpuid_entry2 {
            function: 0x8000_001d,
            index,
            eax: (sharing << 14) | (level << 5) | 0x101,
            ebx: 0x01c0_003f,
            ..Default::default()
        };
        let mut caches = vec![vendor(b"AuthenticAMD"), cache(0, 1, 1), cache(3, 3, 15)];
        normalize(&mut caches, 0, 3);
        assert_eq!(caches[1].eax, (1 << 5) | 0x101);
        assert_eq!(caches[2].eax, (2 << 14) | (3 << 5) | 0x101);
        assert_eq!(caches[2].ebx, 0x01c0_003f, "the cache's geometry kept");

        let mut intel = vec![
            vendor(b"GenuineIntel"),
            host_like(0x8000_0008),
            host_like(0x8000_001e),
        ];
        let before = intel.clone();
        normalize(&mut intel, 2, 3);
        assert_eq!(intel[1].ecx, before[1].ecx, "reserved on Intel");
        assert_eq!(intel[2].eax, before[2].eax);
    }

    #[test]
    fn boot_msrs_enable_fast_strings_and_mtrrs_and_amds_p0_tsc_last() {
        let msrs = boot_msrs(&[vendor(b"GenuineIntel")]);
        let get = |index| msrs.iter().find(|m| m.index == index).map(|m| m.data);
        assert_eq!(get(msr::MISC_ENABLE), Some(1));
        assert_eq!(get(msr::MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(msr::LSTAR), Some(0));
        assert_eq!(get(msr::AMD_HWCR), None);
        let amd = boot_msrs(&[vendor(b"AuthenticAMD")]);
        assert_eq!(amd.len(), msrs.len() + 1);
        let last = amd.last().expect("msrs");
        assert_eq!((last.index, last.data), (0xc001_0015, 1 << 24));
    }
}
