//! Running the VM as an unprivileged user (`--user USER[:GROUP]`), as libvirt runs QEMU
//! as `libvirt-qemu` and Firecracker's jailer drops to `--uid`/`--gid`.
//!
//! The VMM needs root only to build the VM: `/dev/kvm`, a tap it creates, kvnetd's
//! socket. Once every file, device and socket is open, [`RunAs::become_user`] moves the
//! whole process to the user: glibc changes the IDs of every thread, and a process
//! whose user IDs all leave 0 loses every capability in the kernel. A VMM turned
//! against its host by a guest then holds no more than that user does, even with the
//! syscall filter off.
//!
//! Names are looked up in `/etc/passwd` and `/etc/group` themselves: the binary is
//! static, and glibc's NSS cannot load its modules into it. A user that only LDAP or
//! sssd knows is given by number.

use nix::unistd::{Gid, Uid};
use std::path::{Path, PathBuf};

/// Errors resolving or becoming the user.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// The spec is empty or has an empty part.
    #[error("--user {spec:?}: expected USER or USER:GROUP")]
    Spec {
        /// What was given.
        spec: String,
    },
    /// No passwd entry for a user given by name.
    #[error("--user: no user named {name:?}")]
    NoUser {
        /// The name.
        name: String,
    },
    /// No group entry for a group given by name.
    #[error("--user: no group named {name:?}")]
    NoGroup {
        /// The name.
        name: String,
    },
    /// The user is root: nothing would be dropped.
    #[error("--user {spec:?} is root, which keeps every privilege: name an unprivileged user")]
    Root {
        /// What was given.
        spec: String,
    },
    /// A numeric user without a passwd entry has no primary group to take.
    #[error(
        "--user: user {uid} has no passwd entry to take its group from: give it as {uid}:GROUP"
    )]
    NoPrimaryGroup {
        /// The user ID.
        uid: u32,
    },
    /// `/etc/passwd` or `/etc/group` could not be read.
    #[error("--user: cannot read {path}")]
    Database {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A step of the change failed: nothing after it was done.
    #[error("cannot run as {user}: {step} failed")]
    Change {
        /// The user, as given.
        user: String,
        /// `setgroups`, `setresgid` or `setresuid`.
        step: &'static str,
        /// Why (EPERM: the VMM is not root).
        #[source]
        source: nix::Error,
    },
    /// A thread kept capabilities the change did not clear (the VMM was started with
    /// ambient capabilities, or with securebits that keep them across a user change).
    #[error(
        "cannot run as {user}: thread {thread} keeps capabilities ({sets}): start kvnet-vmm as root without ambient capabilities or securebits, or drop them first"
    )]
    CapabilitiesKept {
        /// The user, as given.
        user: String,
        /// The thread's id.
        thread: String,
        /// The non-empty sets, as /proc shows them.
        sets: String,
    },
    /// A thread's capabilities could not be read.
    #[error("cannot run as {user}: cannot read the capabilities in {path}")]
    CapabilitiesUnknown {
        /// The user, as given.
        user: String,
        /// The status file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The IDs read back are not the ones asked for.
    #[error("cannot run as {user}: still uid {uid}, gid {gid} after the change")]
    NotChanged {
        /// The user, as given.
        user: String,
        /// The real, effective and saved user IDs read back.
        uid: String,
        /// The real, effective and saved group IDs read back.
        gid: String,
    },
}

/// The user, group and supplementary groups to run the VM as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    /// The spec as given, for messages.
    spec: String,
    /// User ID.
    pub uid: Uid,
    /// Primary group ID.
    pub gid: Gid,
    /// Supplementary groups: the user's own, as `initgroups` would set them, or only
    /// `gid` for a numeric user without a passwd entry.
    pub groups: Vec<Gid>,
}

impl RunAs {
    /// Resolves `USER[:GROUP]`, each a name or a number, in `/etc/passwd` and
    /// `/etc/group`. A user with a passwd entry takes its group from it unless GROUP is
    /// given, and its supplementary groups from the group file, as QEMU's
    /// `-run-with user=` does through `initgroups`.
    pub fn resolve(spec: &str) -> Result<RunAs, PrivilegeError> {
        RunAs::resolve_in(
            spec,
            &read_database(Path::new(PASSWD))?,
            &read_database(Path::new(GROUP))?,
        )
    }

    /// [`RunAs::resolve`] over the given passwd and group files' text.
    fn resolve_in(spec: &str, passwd: &str, group: &str) -> Result<RunAs, PrivilegeError> {
        let (user_part, group_part) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        if user_part.is_empty() || group_part.is_some_and(str::is_empty) {
            return Err(PrivilegeError::Spec {
                spec: spec.to_owned(),
            });
        }
        // A name made of digits is taken as a number, as chown(1) takes it.
        let number = user_part.parse::<u32>().ok();
        let entry = passwd_entries(passwd).find(|entry| match number {
            Some(uid) => entry.uid == uid,
            None => entry.name == user_part,
        });
        let uid = match (&entry, number) {
            (Some(entry), _) => entry.uid,
            (None, Some(uid)) => uid,
            (None, None) => {
                return Err(PrivilegeError::NoUser {
                    name: user_part.to_owned(),
                });
            }
        };
        if uid == 0 {
            return Err(PrivilegeError::Root {
                spec: spec.to_owned(),
            });
        }
        let gid = match (group_part, &entry) {
            (Some(name), _) => group_id(group, name)?,
            (None, Some(entry)) => entry.gid,
            (None, None) => return Err(PrivilegeError::NoPrimaryGroup { uid }),
        };
        let mut groups = vec![gid];
        if let Some(entry) = &entry {
            for member_of in group_entries(group).filter(|g| g.members.contains(&entry.name)) {
                if !groups.contains(&member_of.gid) {
                    groups.push(member_of.gid);
                }
            }
        }
        Ok(RunAs {
            spec: spec.to_owned(),
            uid: Uid::from_raw(uid),
            gid: Gid::from_raw(gid),
            groups: groups.into_iter().map(Gid::from_raw).collect(),
        })
    }

    /// Makes every thread of this process run as the user: supplementary groups, then
    /// group, then user (in that order: once the user is not root, the groups can no
    /// longer change). Read back and checked, so a VMM never runs a guest believing it
    /// dropped what it still holds.
    pub fn become_user(&self) -> Result<(), PrivilegeError> {
        let change = |step: &'static str| {
            let user = self.spec.clone();
            move |source| PrivilegeError::Change { user, step, source }
        };
        nix::unistd::setgroups(&self.groups).map_err(change("setgroups"))?;
        nix::unistd::setresgid(self.gid, self.gid, self.gid).map_err(change("setresgid"))?;
        nix::unistd::setresuid(self.uid, self.uid, self.uid).map_err(change("setresuid"))?;
        let uids = nix::unistd::getresuid().map_err(change("getresuid"))?;
        let gids = nix::unistd::getresgid().map_err(change("getresgid"))?;
        if [uids.real, uids.effective, uids.saved] != [self.uid; 3]
            || [gids.real, gids.effective, gids.saved] != [self.gid; 3]
        {
            return Err(PrivilegeError::NotChanged {
                user: self.spec.clone(),
                uid: format!("{}/{}/{}", uids.real, uids.effective, uids.saved),
                gid: format!("{}/{}/{}", gids.real, gids.effective, gids.saved),
            });
        }
        self.check_no_capabilities()
    }

    /// Every thread's permitted, effective and ambient capability sets are empty: the
    /// kernel clears them when a process's user IDs all leave 0, but not for a VMM started
    /// by a non-root user with ambient capabilities, or with SECBIT_NO_SETUID_FIXUP.
    /// Capabilities belong to each thread, and only the calling one could drop its own:
    /// a VMM that keeps some refuses to run the guest.
    fn check_no_capabilities(&self) -> Result<(), PrivilegeError> {
        let unknown = |path: PathBuf| {
            let user = self.spec.clone();
            move |source| PrivilegeError::CapabilitiesUnknown { user, path, source }
        };
        let tasks = PathBuf::from("/proc/self/task");
        for task in std::fs::read_dir(&tasks).map_err(unknown(tasks.clone()))? {
            let path = task.map_err(unknown(tasks.clone()))?.path().join("status");
            let status = std::fs::read_to_string(&path).map_err(unknown(path.clone()))?;
            let kept: Vec<String> = ["CapPrm:", "CapEff:", "CapAmb:"]
                .into_iter()
                .filter_map(|set| {
                    let value = status
                        .lines()
                        .find_map(|line| line.strip_prefix(set))?
                        .trim();
                    (u64::from_str_radix(value, 16) != Ok(0)).then(|| format!("{set} {value}"))
                })
                .collect();
            if !kept.is_empty() {
                return Err(PrivilegeError::CapabilitiesKept {
                    user: self.spec.clone(),
                    thread: path
                        .parent()
                        .and_then(|dir| dir.file_name())
                        .map(|id| id.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    sets: kept.join(", "),
                });
            }
        }
        Ok(())
    }
}

/// A passwd or group file's text. Read as bytes: a name or comment in Latin-1 must not
/// make the whole file unreadable (a name that is not UTF-8 cannot be asked for anyway).
fn read_database(path: &Path) -> Result<String, PrivilegeError> {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|source| PrivilegeError::Database {
            path: path.to_owned(),
            source,
        })
}

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// One line of `/etc/passwd`: `name:password:uid:gid:gecos:home:shell`.
struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

/// One line of `/etc/group`: `name:password:gid:member,member`.
struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// A database line's name and its fields after the password; `None` for a comment or a
/// damaged line, which are skipped, as glibc's files backend skips them.
fn named_fields(line: &str) -> Option<(&str, std::str::Split<'_, char>)> {
    let mut fields = line.split(':');
    let name = fields
        .next()
        .filter(|n| !n.is_empty() && !n.starts_with('#'))?;
    let _password = fields.next()?;
    Some((name, fields))
}

/// The well-formed lines of a passwd file.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let (name, mut fields) = named_fields(line)?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

/// The well-formed lines of a group file.
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let (name, mut fields) = named_fields(line)?;
        let gid = fields.next()?.parse().ok()?;
        let members = fields
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|m| !m.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

/// The ID of `group`, a name or a number.
fn group_id(group_file: &str, group: &str) -> Result<u32, PrivilegeError> {
    if let Ok(number) = group.parse() {
        return Ok(number);
    }
    group_entries(group_file)
        .find(|entry| entry.name == group)
        .map(|entry| entry.gid)
        .ok_or_else(|| PrivilegeError::NoGroup {
            name: group.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD_FILE: &str = "root:x:0:0:root:/root:/bin/bash
# a comment
broken line
libvirt-qemu:x:64055:108:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
    const GROUP_FILE: &str = "root:x:0:
kvm:x:104:libvirt-qemu
libvirt-qemu:x:108:
disk:x:6:nobody,libvirt-qemu
nogroup:x:65534:
";

    fn resolve(spec: &str) -> Result<RunAs, PrivilegeError> {
        RunAs::resolve_in(spec, PASSWD_FILE, GROUP_FILE)
    }

    #[test]
    fn specs_resolve_names_and_numbers() {
        let qemu = resolve("libvirt-qemu").expect("by name");
        assert_eq!((qemu.uid.as_raw(), qemu.gid.as_raw()), (64055, 108));
        // Its own group first, then those listing it, as initgroups sets them.
        assert_eq!(qemu.groups, [108, 104, 6].map(Gid::from_raw));
        assert_eq!(
            resolve("64055").expect("by number"),
            RunAs {
                spec: "64055".into(),
                ..qemu.clone()
            }
        );

        let with_group = resolve("nobody:kvm").expect("a named group");
        assert_eq!(with_group.gid.as_raw(), 104);
        assert_eq!(with_group.groups, [104, 6].map(Gid::from_raw));
        let numbers = resolve("65534:65534").expect("numbers");
        assert_eq!(numbers.groups, [65534, 6].map(Gid::from_raw));

        // No passwd entry: the group must be given, and is the only one.
        let unknown = resolve("4000000:4000001").expect("numeric");
        assert_eq!(unknown.uid.as_raw(), 4_000_000);
        assert_eq!(unknown.groups, vec![Gid::from_raw(4_000_001)]);
    }

    #[test]
    fn bad_specs_name_what_is_wrong() {
        for (spec, message) in [
            ("", "expected USER or USER:GROUP"),
            (":root", "expected USER or USER:GROUP"),
            ("nobody:", "expected USER or USER:GROUP"),
            ("broken line", "no user named \"broken line\""),
            ("#", "no user named \"#\""),
            ("qemu", "no user named \"qemu\""),
            ("nobody:no-such-group", "no group named \"no-such-group\""),
            ("4000000", "user 4000000 has no passwd entry"),
            ("root", "is root, which keeps every privilege"),
            ("0:65534", "is root, which keeps every privilege"),
        ] {
            let error = resolve(spec).expect_err(spec).to_string();
            assert!(error.contains(message), "{spec:?}: {error}");
        }
    }

    #[test]
    fn this_hosts_files_are_read() {
        let nobody = RunAs::resolve("nobody").expect("nobody is in /etc/passwd");
        assert_eq!(nobody.uid.as_raw(), 65534);
    }

    #[test]
    fn a_file_that_is_not_utf8_is_read_all_the_same() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("passwd");
        std::fs::write(
            &path,
            b"caf\xe9:x:5000:5000:Jos\xe9:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n",
        )
        .expect("write");
        let text = read_database(&path).expect("read");
        let nobody = RunAs::resolve_in("nobody", &text, GROUP_FILE).expect("nobody");
        assert_eq!(nobody.uid.as_raw(), 65534);
    }
}
