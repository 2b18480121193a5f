//! The part of libxml2 that libvirt's XML output depends on: the tree it reads from
//! text ([`Tree`]) and its node dump ([`Writer`]). virsh's `net-dumpxml --xpath` prints
//! nodes through it, and libvirt copies a network's `<metadata>` through it.

mod dump;
mod tree;

pub use dump::Writer;
pub use tree::{Kind, Name, Namespace, NodeData, NodeId, ParseError, Tree, XML_NAMESPACE};
