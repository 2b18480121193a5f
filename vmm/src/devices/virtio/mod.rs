//! Virtio devices and transport.

pub mod net;
