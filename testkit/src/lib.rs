//! Test helpers shared by kvnet's crates.
//!
//! Every test that needs a privilege calls [`require`] first. A missing need prints
//! `SKIPPED <test>: <need>: <why>` and the test returns early, unless `KVNET_TEST_REQUIRE`
//! names that need (or `all`), in which case the test fails: CI sets it so a
//! mis-provisioned machine cannot go green on skips.
//!
//! Network tests work only inside namespaces made by [`Netns`], which removes them
//! on drop; nothing here touches the root network namespace.

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Something a test needs from the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0 (creating named namespaces, taps, bridges).
    Root,
    /// `ip netns add` works: named network namespaces can be created here.
    Netns,
    /// `/dev/net/tun` opens.
    Tun,
    /// The `nft` binary runs.
    Nft,
    /// `/dev/kvm` answers `KVM_GET_API_VERSION` with 12 and `KVM_CREATE_VM` succeeds.
    Kvm,
    /// A program on `PATH` (busybox, dhclient, dig, ...).
    Program(&'static str),
    /// `KVNET_GUEST_KERNEL` names a readable kernel image (opt-in real-kernel tier).
    GuestKernel,
    /// Something the test fetches or probes itself (e.g. `debian-kernel`); report it
    /// with [`missing`]. The name is also its `KVNET_TEST_REQUIRE` word.
    Resource(&'static str),
}

impl Need {
    /// The word `KVNET_TEST_REQUIRE` uses for this need.
    fn key(self) -> &'static str {
        match self {
            Need::Root => "root",
            Need::Netns => "netns",
            Need::Tun => "tun",
            Need::Nft => "nft",
            Need::Kvm => "kvm",
            Need::Program(_) => "programs",
            Need::GuestKernel => "guest-kernel",
            Need::Resource(name) => name,
        }
    }
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Program(name) => write!(f, "program {name}"),
            other => f.write_str(other.key()),
        }
    }
}

/// Checks every need; returns `true` when the test can run.
///
/// When a need is missing, prints `SKIPPED <test>: <need>: <why>` and returns `false`, or
/// panics when `KVNET_TEST_REQUIRE` makes that need mandatory. Use as
/// `if !require(&[Need::Root, Need::Netns]) { return; }`.
pub fn require(needs: &[Need]) -> bool {
    for &need in needs {
        if let Err(why) = probe(need) {
            missing(need, &why);
            return false;
        }
    }
    true
}

/// Checks needs a test cannot do without once it has chosen to run (an opted-in tier
/// whose opt-in was given): a missing one fails the test, naming it, instead of
/// skipping it.
pub fn demand(needs: &[Need]) {
    for &need in needs {
        if let Err(why) = probe(need) {
            panic!(
                "{} needs {need}: {why} (its tier was asked for, so it does not skip)",
                current_test_name()
            );
        }
    }
}

/// Reports a need the test found missing: prints `SKIPPED <test>: <need>: <why>`, or
/// panics when `KVNET_TEST_REQUIRE` makes the need mandatory. [`require`] uses it for
/// the needs it probes; tests use it directly for [`Need::Resource`]s they probe themselves.
pub fn missing(need: Need, why: &str) {
    let test = current_test_name();
    if is_strict(need) {
        panic!("required capability missing for {test}: {need}: {why} (KVNET_TEST_REQUIRE is set)");
    }
    eprintln!("SKIPPED {test}: {need}: {why}");
}

fn is_strict(need: Need) -> bool {
    strict_in(std::env::var("KVNET_TEST_REQUIRE").ok().as_deref(), need)
}

/// Whether a `KVNET_TEST_REQUIRE` value makes `need` mandatory. The guest-kernel
/// tier is opt-in by design, so `all` does not include it.
fn strict_in(list: Option<&str>, need: Need) -> bool {
    list.is_some_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|word| word == need.key() || (word == "all" && need != Need::GuestKernel))
    })
}

fn current_test_name() -> String {
    std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(str::to_owned)
        // nextest runs each test in its own process on the main thread.
        .or_else(|| std::env::var("NEXTEST_TEST_NAME").ok())
        .unwrap_or_else(|| "test".to_owned())
}

fn probe(need: Need) -> Result<(), String> {
    match need {
        Need::Root => {
            if nix::unistd::geteuid().is_root() {
                Ok(())
            } else {
                Err("not running as root".into())
            }
        }
        Need::Netns => {
            probe(Need::Root)?;
            probe(Need::Program("ip"))?;
            let ns = Netns::new("probe")
                .map_err(|e| format!("cannot create a network namespace: {e}"))?;
            drop(ns);
            Ok(())
        }
        Need::Tun => File::options()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map(drop)
            .map_err(|e| format!("cannot open /dev/net/tun: {e}")),
        Need::Nft => probe(Need::Program("nft")),
        Need::Kvm => probe_kvm(),
        Need::Program(name) => which(name).map(drop).ok_or_else(|| {
            format!("{name} is not on PATH (the README's test command installs it)")
        }),
        Need::Resource(name) => Err(format!(
            "{name} is probed by the test itself (testkit::missing)"
        )),
        Need::GuestKernel => match std::env::var_os("KVNET_GUEST_KERNEL") {
            None => Err(
                "KVNET_GUEST_KERNEL is not set (opt-in: needs a host with hardware virtualization)"
                    .into(),
            ),
            Some(path) if Path::new(&path).is_file() => Ok(()),
            Some(path) => Err(format!(
                "KVNET_GUEST_KERNEL={} is not a file",
                Path::new(&path).display()
            )),
        },
    }
}

fn probe_kvm() -> Result<(), String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(format!("KVM API version {version}, expected 12"));
    }
    kvm.create_vm()
        .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    Ok(())
}

/// Finds a program on `PATH` (plus the sbin directories root's PATH may lack).
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`) that is deleted on drop.
///
/// Names are `kvt-<pid>-<seq>-<tag>` cut to fit, so tests in parallel processes never
/// collide. Processes started with [`Netns::command`] live inside it; [`Netns::run`]
/// runs a closure on a thread that entered it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and sets its loopback up. The first one a process creates
    /// also removes those that killed test processes left (see [`remove_stale_netns`]).
    pub fn new(tag: &str) -> std::io::Result<Netns> {
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(remove_stale_netns);
        let seq = NETNS_SEQ.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("kvt-{}-{seq}-{tag}", std::process::id());
        name.truncate(40);
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        run_checked(ns.command("ip").args(["link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `setns` or `nsenter --net=`.
    pub fn path(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a shell snippet inside the namespace and returns its stdout; fails with
    /// the snippet and its stderr when it exits non-zero.
    pub fn sh(&self, script: &str) -> std::io::Result<String> {
        let out = run_checked(self.command("sh").args(["-c", script]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> std::io::Result<T> {
        let file = File::open(self.path())?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)?;
                    Ok(f())
                })
                .join()
                .map_err(|_| std::io::Error::other("closure inside the namespace panicked"))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_netns(&self.name);
    }
}

/// Kills anything still running inside namespace `name`, then deletes it (and with it
/// its bridges, taps and nft tables).
fn remove_netns(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|out| {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::SIGKILL,
                    );
                }
            }
        });
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// Removes the `kvt-<pid>-…` namespaces of test processes that are gone: a test killed
/// by nextest's timeout runs no `Drop`. Left alone, they would hold daemons' networks
/// and, once a later test process gets the same pid, make its namespaces' names clash.
/// This process's own pid counts as gone: it has created none yet.
fn remove_stale_netns() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("kvt-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = pid != me && Path::new("/proc").join(pid.to_string()).exists();
        if !alive {
            remove_netns(&name);
        }
    }
}

/// An upstream DNS server for tests: dnsmasq in a namespace, answering on one address
/// from the records given as dnsmasq options (`--address=/up.test/10.77.7.7`), and
/// REFUSED for everything else (it forwards nothing). Killed when dropped.
#[derive(Debug)]
pub struct Dnsmasq(std::process::Child);

impl Dnsmasq {
    /// Starts dnsmasq in `ns` on `listen`:53.
    pub fn start(ns: &Netns, listen: &str, records: &[&str]) -> std::io::Result<Dnsmasq> {
        ns.command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--pid-file",
                "--user=root",
                &format!("--listen-address={listen}"),
            ])
            .args(records)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(Dnsmasq)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child process killed and reaped when dropped, however the test ends (a failed
/// assertion included), so that no test leaves a VMM or a monitor running.
#[derive(Debug)]
pub struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: std::process::Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    /// The child, still running or not.
    pub fn child(&mut self) -> &mut std::process::Child {
        self.0
            .as_mut()
            .unwrap_or_else(|| panic!("the child was already released"))
    }

    /// The child, no longer killed when this is dropped: to wait for its own end.
    pub fn release(mut self) -> std::process::Child {
        self.0
            .take()
            .unwrap_or_else(|| panic!("the child was already released"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `class htb 1:1 ...` line of `dev` in `ns`, as `tc class show` prints it
/// (iproute2 6.1 has no JSON for HTB classes): kvnet's limit on what `dev` sends.
pub fn htb_class(ns: &Netns, dev: &str) -> String {
    let out = ns
        .sh(&format!("tc class show dev {dev}"))
        .unwrap_or_else(|e| panic!("tc class show dev {dev}: {e}"));
    out.lines()
        .find(|line| line.starts_with("class htb 1:1 "))
        .unwrap_or_else(|| panic!("no htb class 1:1 on {dev}: {out}"))
        .to_owned()
}

/// Runs a command and returns its output; a non-zero exit becomes an error that
/// names the command and carries its stderr.
pub fn run_checked(cmd: &mut Command) -> std::io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(std::io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictness_follows_the_variable() {
        assert!(!strict_in(None, Need::Kvm));
        assert!(strict_in(Some("all"), Need::Kvm));
        assert!(!strict_in(Some("all"), Need::GuestKernel));
        assert!(strict_in(Some("netns, kvm"), Need::Kvm));
        assert!(!strict_in(Some("netns"), Need::Kvm));
        assert!(strict_in(Some("programs"), Need::Program("busybox")));
    }
}
