//! kvnetd: named virtual networks managed over a Unix-socket API.
//!
//! Layers, each with one job: [`api`] (HTTP over a Unix socket), [`manager`] (the
//! registry and every change to it), [`events`] (the lifecycle events of those changes,
//! broadcast to subscribers), [`store`] (files), [`xml`] (libvirt's network XML),
//! [`link`] (the only netlink code), [`firewall`] (the only nftables code), and the
//! services on each bridge: [`dhcp`], [`dns`], [`ra`] (IPv6 router advertisements),
//! [`tftp`]. [`fdpass`] hands guests' taps to kvnet-vmm.

pub mod api;
mod daemon;
mod debug_log;
pub mod dhcp;
pub mod dhcp6;
pub mod dns;
pub mod errors;
pub mod events;
pub mod fdpass;
pub mod files;
pub mod firewall;
pub mod hooks;
pub mod libvirt_leases;
pub mod link;
pub mod manager;
pub mod owner;
pub mod ra;
mod service;
pub mod store;
mod systemd;
pub mod tftp;
pub mod virsh;
pub mod xml;

pub use daemon::main;
