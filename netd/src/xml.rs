//! Libvirt network XML <-> the network model (issue 2). Filled by the xml work.
