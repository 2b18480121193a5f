//! virtio-net: a NIC backed by a tap file descriptor (issue 5).

pub mod tap;
