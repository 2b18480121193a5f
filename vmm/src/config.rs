//! What to run: the VM configuration and the `kvnet-vmm` command line that produces it.

use std::path::PathBuf;
use std::str::FromStr;

use crate::devices::serial::SharedBuffer;
use crate::devices::virtio::net::{MacAddr, NetSpec, Owner, TapSource};

/// Kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Default guest RAM.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Smallest guest RAM we accept: room for the boot structures and a small kernel.
pub const MIN_MEMORY_MIB: u64 = 4;
/// Largest guest RAM we accept (1 TiB; KVM and the host decide below that).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// xAPIC ids are 8 bits and 0xff is the broadcast id.
pub const MAX_VCPUS: u32 = 254;

/// Where the guest's COM1 output goes.
#[derive(Clone, Debug, Default)]
pub enum SerialSink {
    /// The VMM's stdout.
    #[default]
    Stdio,
    /// Appended to a file (rotated: see [`crate::devices::console_log`]).
    File(PathBuf),
    /// Appended to a file by a writer process of its own
    /// ([`crate::devices::console_log::LogProcess`]): the `kvnet-vmm` binary's `file:`.
    /// It re-runs the current executable, which must be `kvnet-vmm`.
    LogProcess(PathBuf),
    /// Discarded.
    None,
    /// Kept in memory (for embedding and tests).
    Buffer(SharedBuffer),
}

impl FromStr for SerialSink {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(SerialSink::Stdio),
            "none" => Ok(SerialSink::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialSink::File(PathBuf::from(path))),
                _ => Err(ConfigError::Serial(s.to_owned())),
            },
        }
    }
}

/// Errors in the VM configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `--serial` value not understood.
    #[error("invalid --serial {0:?}: expected stdio, none or file:PATH")]
    Serial(String),
    /// The kernel file does not exist.
    #[error("kernel image {0} does not exist")]
    KernelMissing(PathBuf),
    /// The initrd file does not exist.
    #[error("initrd {0} does not exist")]
    InitrdMissing(PathBuf),
    /// A FIFO, device or directory given as the kernel or initrd.
    #[error("{what} {path} is not a regular file")]
    NotRegularFile {
        /// "kernel image" or "initrd".
        what: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// Memory out of range.
    #[error("--memory {mib} MiB is out of range ({MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB)")]
    Memory {
        /// Requested MiB.
        mib: u64,
    },
    /// No vCPUs.
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    /// More vCPUs than the machine model supports.
    #[error("--vcpus {0} is too many: kvnet-vmm supports at most {MAX_VCPUS} (8-bit xAPIC ids)")]
    TooManyVcpus(u32),
    /// A `--net` value that does not parse.
    #[error("invalid --net {spec:?}: {reason}")]
    Net {
        /// The value given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two NICs on one inherited tap fd.
    #[error("--net tap-fd={0} is given twice")]
    DuplicateTapFd(i32),
    /// Two NICs with one MAC address.
    #[error("MAC address {0} is given to two NICs: each needs its own")]
    DuplicateMac(MacAddr),
}

/// Everything needed to build and boot a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Kernel image: bzImage or ELF vmlinux (PVH entry used when present).
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// COM1 output.
    pub serial: SerialSink,
    /// virtio-net NICs, one virtio-net-pci device each, in bus order.
    pub net: Vec<NetSpec>,
    /// The VM's name and UUID: the owner kvnetd records for its network ports.
    pub owner: Owner,
}

impl VmConfig {
    /// Defaults: 128 MiB, one vCPU, [`DEFAULT_CMDLINE`], serial on stdout.
    pub fn new(kernel: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_owned(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            serial: SerialSink::Stdio,
            net: Vec::new(),
            owner: Owner::unnamed(),
        }
    }

    /// Checks what can be checked without KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        regular_file(&self.kernel, "kernel image", ConfigError::KernelMissing)?;
        if let Some(initrd) = &self.initrd {
            regular_file(initrd, "initrd", ConfigError::InitrdMissing)?;
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory {
                mib: self.memory_mib,
            });
        }
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > MAX_VCPUS {
            return Err(ConfigError::TooManyVcpus(self.vcpus));
        }
        let mut fds = std::collections::BTreeSet::new();
        for spec in &self.net {
            if let TapSource::Fd(fd) = spec.tap
                && !fds.insert(fd)
            {
                return Err(ConfigError::DuplicateTapFd(fd));
            }
        }
        // The MACs generated later are random, and differ.
        unique_macs(self.net.iter().filter_map(|spec| spec.mac))
    }

    /// Guest RAM in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

/// Refuses a `path` that is missing or not a regular file (a FIFO would block the VMM,
/// `/dev/zero` pass for an empty file). Other errors are the loader's to report, with
/// their cause.
fn regular_file(
    path: &std::path::Path,
    what: &'static str,
    missing: fn(PathBuf) -> ConfigError,
) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(metadata) if !metadata.is_file() => Err(ConfigError::NotRegularFile {
            what,
            path: path.to_owned(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(missing(path.to_owned())),
        _ => Ok(()),
    }
}

/// Refuses a MAC address that two NICs share: both would answer for it.
pub fn unique_macs(macs: impl IntoIterator<Item = MacAddr>) -> Result<(), ConfigError> {
    let mut seen = std::collections::BTreeSet::new();
    for mac in macs {
        if !seen.insert(mac.0) {
            return Err(ConfigError::DuplicateMac(mac));
        }
    }
    Ok(())
}

/// `kvnet-vmm` command line.
#[derive(Debug, clap::Parser)]
#[command(
    name = "kvnet-vmm",
    version,
    about = "Boot a Linux kernel in a KVM virtual machine"
)]
pub struct Cli {
    /// Kernel image (bzImage, or ELF vmlinux; the PVH entry is used when present).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk, loaded at the top of low memory.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest RAM in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Where COM1 goes: stdio, none or file:PATH (rotated at 2 MiB to PATH.0, three
    /// kept, as libvirt's virtlogd rotates it). With stdio, stdin is the guest's
    /// input; on a terminal it goes to the guest as typed, Ctrl-C included: type
    /// Ctrl-A x to stop the VM, Ctrl-A Ctrl-A to send one Ctrl-A. A VMM in the
    /// terminal's background leaves its input alone.
    #[arg(long, value_name = "SINK", default_value = "stdio")]
    pub serial: String,
    /// A virtio-net NIC on a tap: tap-fd=N (an inherited, attached tap fd) or
    /// tap=NAME (a tap the VMM attaches to as its owner or with CAP_NET_ADMIN; if none
    /// has that name, the VMM creates it, as QEMU does: down, on no bridge, gone when
    /// the VMM ends), plus optional mac=52:54:00:xx:xx:xx and mtu=M. Repeatable. mtu= is
    /// offered to the guest: a tap the VMM creates is given it, and one larger than an
    /// existing tap's (or network's) MTU is refused.
    /// network=NAME[,socket=PATH] instead asks kvnetd for a new port on that network:
    /// a tap on its bridge, handed over kvnetd's socket ($KVNET_SOCKET, else
    /// /run/kvnet/kvnetd.sock), which lasts as long as the VM; group=NAME joins one of the
    /// network's portgroups, and inbound= / outbound=AVERAGE[:PEAK[:BURST]] (kB/s, KiB)
    /// limit the guest's traffic as libvirt's <bandwidth> does.
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,
    /// The VM's name, as kvnetd's port list shows it [default: kvnet-vmm-PID].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// The VM's UUID [default: a new random one].
    #[arg(long, value_name = "UUID")]
    pub uuid: Option<uuid::Uuid>,
    /// The syscall filter the VMM runs under once the VM is built: on (a syscall
    /// outside it kills the VMM, and the kernel logs its number), log (let through and
    /// logged) or off.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = crate::seccomp::Mode::On)]
    pub seccomp: crate::seccomp::Mode,
    /// Once the VM is built, run it as this user (a name or a number; not root) and its
    /// group, or GROUP, with the user's supplementary groups, as libvirt runs QEMU as
    /// libvirt-qemu: no capability is left (the VM does not start if one would be), and
    /// a compromised VMM holds only what that user and its open descriptors reach.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
}

impl Cli {
    /// The descriptors `--net tap-fd=N` names (a spec that does not parse is reported by
    /// [`Cli::into_config`]).
    pub fn tap_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.net
            .iter()
            .filter_map(|spec| match spec.parse::<NetSpec>().ok()?.tap {
                TapSource::Fd(fd) => Some(fd),
                _ => None,
            })
            .collect()
    }

    /// Turns the parsed flags into a validated [`VmConfig`].
    pub fn into_config(self) -> Result<VmConfig, ConfigError> {
        let net = self
            .net
            .iter()
            .map(|spec| {
                spec.parse::<NetSpec>().map_err(|e| ConfigError::Net {
                    spec: spec.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let unnamed = Owner::unnamed();
        let config = VmConfig {
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            memory_mib: self.memory,
            vcpus: self.vcpus,
            serial: self.serial.parse()?,
            net,
            owner: Owner {
                name: self.name.unwrap_or(unnamed.name),
                uuid: self.uuid.unwrap_or(unnamed.uuid),
            },
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<VmConfig, ConfigError> {
        Cli::try_parse_from(std::iter::once("kvnet-vmm").chain(args.iter().copied()))
            .expect("clap accepts")
            .into_config()
    }

    #[test]
    fn serial_sinks_parse() {
        assert!(matches!("stdio".parse(), Ok(SerialSink::Stdio)));
        assert!(matches!("none".parse(), Ok(SerialSink::None)));
        assert!(
            matches!("file:/tmp/x".parse(), Ok(SerialSink::File(p)) if p == std::path::Path::new("/tmp/x"))
        );
        assert_eq!(
            "tcp:1".parse::<SerialSink>().err(),
            Some(ConfigError::Serial("tcp:1".into()))
        );
        assert!("file:".parse::<SerialSink>().is_err());
    }

    #[test]
    fn flags_map_to_config_with_defaults() {
        let kernel = tempfile::NamedTempFile::new().expect("tmp");
        let path = kernel.path().to_str().expect("utf8");
        let c = parse(&["--kernel", path]).expect("config");
        assert_eq!(
            (c.memory_mib, c.vcpus, c.cmdline.as_str()),
            (128, 1, DEFAULT_CMDLINE)
        );
        let c = parse(&[
            "--kernel",
            path,
            "--memory",
            "256",
            "--vcpus",
            "2",
            "--cmdline",
            "x=1",
            "--serial",
            "none",
        ])
        .expect("config");
        assert_eq!((c.memory_mib, c.vcpus, c.cmdline.as_str()), (256, 2, "x=1"));
        assert!(matches!(c.serial, SerialSink::None));
    }

    #[test]
    fn net_flags_become_specs_in_order() {
        let kernel = tempfile::NamedTempFile::new().expect("tmp");
        let path = kernel.path().to_str().expect("utf8");
        let c = parse(&[
            "--kernel",
            path,
            "--net",
            "tap-fd=7,mac=52:54:00:12:34:56,mtu=9000",
            "--net",
            "tap=vnet3",
        ])
        .expect("config");
        let expected: Vec<NetSpec> = ["tap-fd=7,mac=52:54:00:12:34:56,mtu=9000", "tap=vnet3"]
            .iter()
            .map(|s| s.parse().expect("spec"))
            .collect();
        assert_eq!(c.net, expected);
        assert_eq!(c.net[0].tap, TapSource::Fd(7));
        assert_eq!(c.net[1].tap, TapSource::Name("vnet3".into()));
    }

    #[test]
    fn invalid_values_are_named() {
        let kernel = tempfile::NamedTempFile::new().expect("tmp");
        let path = kernel.path().to_str().expect("utf8");
        assert_eq!(
            parse(&["--kernel", "/nonexistent/vmlinuz"]).err(),
            Some(ConfigError::KernelMissing("/nonexistent/vmlinuz".into()))
        );
        assert_eq!(
            parse(&["--kernel", "/dev/zero"]).err(),
            Some(ConfigError::NotRegularFile {
                what: "kernel image",
                path: "/dev/zero".into()
            })
        );
        assert_eq!(
            parse(&["--kernel", path, "--initrd", "/tmp"])
                .err()
                .map(|e| e.to_string()),
            Some("initrd /tmp is not a regular file".into())
        );
        assert_eq!(
            parse(&["--kernel", path, "--vcpus", "0"]).err(),
            Some(ConfigError::NoVcpus)
        );
        assert_eq!(
            parse(&["--kernel", path, "--vcpus", "300"]).err(),
            Some(ConfigError::TooManyVcpus(300))
        );
        assert_eq!(
            parse(&["--kernel", path, "--memory", "1"]).err(),
            Some(ConfigError::Memory { mib: 1 })
        );
        assert_eq!(
            parse(&["--kernel", path, "--net", "fd=3"]).err(),
            Some(ConfigError::Net {
                spec: "fd=3".into(),
                reason:
                    "unknown --net key \"fd\" (expected network, socket, group, inbound, outbound, tap-fd, tap, mac or mtu)"
                        .into()
            })
        );
        assert_eq!(
            parse(&[
                "--kernel",
                path,
                "--net",
                "tap-fd=5",
                "--net",
                "tap-fd=5,mtu=9000"
            ])
            .err(),
            Some(ConfigError::DuplicateTapFd(5))
        );
        let duplicate = parse(&[
            "--kernel",
            path,
            "--net",
            "tap=a,mac=52:54:00:12:34:56",
            "--net",
            "tap=b,mac=52:54:00:12:34:56",
        ])
        .err();
        assert_eq!(
            duplicate.map(|e| e.to_string()),
            Some("MAC address 52:54:00:12:34:56 is given to two NICs: each needs its own".into())
        );
        assert!(
            parse(&[
                "--kernel",
                path,
                "--net",
                "tap=a,mac=52:54:00:12:34:56",
                "--net",
                "tap=b,mac=52:54:00:12:34:57",
            ])
            .is_ok()
        );
        assert!(
            ConfigError::TooManyVcpus(300)
                .to_string()
                .contains("at most 254"),
            "message names the limit"
        );
    }
}
